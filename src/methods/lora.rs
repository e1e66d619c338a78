//! LoRA (Hu et al., 2021): low-rank adapters beside the --lora-targets linear layers, as
//! PEFT's LoraConfig (model/adapter.rs); rsLoRA with --lora-rslora.

use anyhow::Result;

use super::settings::strings;
use super::{Method, MethodDef, Scope, Traits};
use crate::error::user;
use crate::model::adapter::TARGETS;
use crate::model::{AdapterConfig, AdapterKind};

pub struct Lora;

pub const METHOD: Method = Method(&Lora);

crate::method_settings! {
    context(m, f);
    used_by = m.lora();
    /// lora, dora: adapter rank.
    lora_r => r: usize = default(8);
    /// lora, dora: scaling numerator; updates are scaled by alpha/r.
    lora_alpha => alpha: f64 = default(16.0);
    /// lora, dora: dropout on the adapter's input.
    lora_dropout => dropout: f64 = default(0.1);
    /// lora, dora: rsLoRA, scaling updates by alpha/√r rather than alpha/r (PEFT's use_rslora).
    #[arg(num_args = 0..=1, default_missing_value = "true")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lora_rslora => rslora: bool = default(false);
    /// lora, dora: modules to wrap, from query, key, value, attention.output.dense,
    /// intermediate.dense, output.dense (PEFT's defaults for BERT).
    #[arg(value_delimiter = ',')]
    lora_targets => targets: Vec<String> = default(strings(&["query", "value"]));
}

impl Settings {
    pub fn check(&self) -> Result<()> {
        check_low_rank("lora", self.r, self.dropout, &self.targets)
    }

    /// The adapter these settings add: LoRA's, or with `dora` DoRA's.
    pub fn adapter(&self, dora: bool) -> AdapterConfig {
        AdapterConfig {
            kind: if dora { AdapterKind::Dora } else { AdapterKind::Lora },
            r: self.r,
            alpha: self.alpha,
            dropout: self.dropout,
            targets: self.targets.clone(),
            rslora: self.rslora,
        }
    }
}

/// LoRA's and InA's shared checks: a rank, a dropout below 1, modules that exist.
pub(super) fn check_low_rank(prefix: &str, r: usize, dropout: f64, targets: &[String]) -> Result<()> {
    if r == 0 {
        return Err(user(format!("{prefix}_r: the rank must be at least 1")));
    }
    if !(0.0..1.0).contains(&dropout) {
        return Err(user(format!("{prefix}_dropout: {dropout} is outside [0, 1)")));
    }
    if targets.is_empty() {
        return Err(user(format!("{prefix}_targets: name at least one module")));
    }
    if let Some(t) = targets.iter().find(|t| !TARGETS.contains(&t.as_str())) {
        return Err(user(format!(
            "{prefix}_targets: unknown module `{t}` (expected one of {})",
            TARGETS.join(", ")
        )));
    }
    Ok(())
}

impl MethodDef for Lora {
    fn name(&self) -> &'static str {
        "lora"
    }
    fn help(&self) -> &'static str {
        "LoRA adapters (Hu et al., 2021) on --lora-targets, as PEFT builds them"
    }
    /// The LoRA paper's GLUE rates are of this order (RoBERTa-base, 4e-4 to 5e-4).
    fn default_lr(&self) -> f64 {
        5e-4
    }
    fn traits(&self) -> Traits {
        Traits::ADAPTER
    }
    /// Only its new tensors train (and the head): new parameters always do.
    fn chooses(&self, _name: &str, _scope: &Scope) -> bool {
        false
    }
}
