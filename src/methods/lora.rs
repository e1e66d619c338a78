//! LoRA (Hu et al., 2021): low-rank adapters beside the --lora-targets linear layers, as
//! PEFT's LoraConfig (model/adapter.rs); rsLoRA with --lora-rslora; LoRA+ learning rates
//! with --lora-plus-ratio.

use anyhow::Result;

use super::settings::strings;
use super::{Method, MethodDef, MethodSpec, Scope, Traits};
use crate::optim::LrScale;
use crate::error::user;
use crate::model::adapter::TARGETS;
use crate::model::adapter::LoraInit;
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
    /// lora, dora: LoRA+ (Hayou et al., 2024), B's learning rate this many times A's, as
    /// PEFT's create_loraplus_optimizer (loraplus_lr_ratio) [default: none, plain LoRA].
    lora_plus_ratio => plus_ratio: f64 = optional();
    /// lora, dora: how A and B start, as PEFT's init_lora_weights: gaussian (A ~ N(0,
    /// 1/r²)), pissa (W's top singular vectors) or olora (W's QR); the last two take their
    /// part out of the frozen weight [default: none, A Kaiming-uniform and B zero].
    lora_init => init: LoraInit = optional();
}

impl Settings {
    pub fn check(&self) -> Result<()> {
        if let Some(r) = self.plus_ratio.filter(|r| !(r.is_finite() && *r > 0.0)) {
            return Err(user(format!(
                "lora_plus_ratio: {r} is not a positive number (B's learning rate over A's)"
            )));
        }
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
            init: self.init,
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
    fn lr_scale(&self, spec: &MethodSpec) -> Option<LrScale> {
        plus_scale(spec)
    }
}

/// LoRA+ as PEFT's `create_loraplus_optimizer` groups a model's trainable tensors: the B
/// matrices and every one-dimensional tensor (biases, LayerNorm gains, DoRA's magnitudes)
/// at `lora_plus_ratio` times the learning rate, the rest (A matrices, the head's weight)
/// at it. (Its group for embedding layers' adapters is empty here: no adapter wraps an
/// embedding.) None without a ratio.
pub(super) fn plus_scale(spec: &MethodSpec) -> Option<LrScale> {
    let ratio = spec.config.lora.as_ref()?.plus_ratio?;
    Some(Box::new(move |name: &str, dims: usize| {
        match name.contains("lora_B") || dims == 1 {
            true => ratio,
            false => 1.0,
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::{MethodFlags, Methods};

    /// PEFT's groups (tests/fixtures/loraplus/groups.json, made by
    /// scripts/loraplus_groups.py with PEFT's own create_loraplus_optimizer on a tiny BERT
    /// with LoRA and with DoRA): each trainable tensor's learning rate over the base rate.
    #[test]
    fn lora_plus_groups_tensors_as_peft() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/loraplus/groups.json");
        let groups: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let ratio = groups["ratio"].as_f64().unwrap();
        let mut checked = 0;
        for method in ["lora", "dora"] {
            let mut flags = MethodFlags::default();
            flags.lora.lora_plus_ratio = Some(ratio);
            let spec = flags
                .resolve(Methods::one(Method::named(method).unwrap()))
                .unwrap()
                .spec(0);
            let scale = plus_scale(&spec).unwrap();
            for (name, v) in groups[method].as_object().unwrap() {
                let dims = v["dims"].as_u64().unwrap() as usize;
                let want = v["lr_ratio"].as_f64().unwrap();
                assert_eq!(scale(name, dims), want, "{method} {name}");
                checked += 1;
            }
        }
        assert!(checked > 10, "{checked} tensors");
    }
}
