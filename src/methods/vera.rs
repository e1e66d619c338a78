//! VeRA (Kopiczko et al., 2024): trained scaling vectors around frozen random projections
//! shared by every --vera-targets layer, as PEFT's VeraConfig (model/vera.rs).

use anyhow::Result;

use super::lora::check_low_rank;
use super::settings::strings;
use super::{Method, MethodDef, Scope, Traits};
use crate::error::user;
use crate::model::{AdapterConfig, AdapterKind};

pub struct Vera;

pub const METHOD: Method = Method(&Vera);

crate::method_settings! {
    context(m, f);
    used_by = m.has(METHOD);
    /// vera: the shared projections' rank (PEFT's r).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vera_r => r: usize = default(256);
    /// vera: modules wrapped, as --lora-targets (PEFT's defaults: query, value).
    #[arg(value_delimiter = ',')]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vera_targets => targets: Vec<String> = default(strings(&["query", "value"]));
    /// vera: the key the projections are drawn from (PEFT's projection_prng_key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vera_seed => seed: u64 = default(0);
    /// vera: dropout on the adapter's input (PEFT's vera_dropout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vera_dropout => dropout: f64 = default(0.0);
    /// vera: λ_d's start (PEFT's d_initial).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vera_d_initial => d_initial: f64 = default(0.1);
}

impl Settings {
    pub fn check(&self) -> Result<()> {
        if !self.d_initial.is_finite() {
            return Err(user(format!("vera_d_initial: {} is not a number", self.d_initial)));
        }
        // The projections are r × the largest layer: bound r as a LoRA rank is bounded.
        if self.r > 1 << 16 {
            return Err(user(format!("vera_r: {} is more than 65536", self.r)));
        }
        check_low_rank("vera", self.r, self.dropout, &self.targets)
    }

    /// The adapters these settings add (the projections' span is the model's).
    pub fn adapter(&self) -> AdapterConfig {
        AdapterConfig {
            kind: AdapterKind::Vera {
                key: self.seed,
                d_initial: self.d_initial,
                max: (0, 0),
            },
            r: self.r,
            alpha: 0.0,
            dropout: self.dropout,
            targets: self.targets.clone(),
            rslora: false,
            init: None,
        }
    }
}

impl MethodDef for Vera {
    fn name(&self) -> &'static str {
        "vera"
    }
    fn help(&self) -> &'static str {
        "VeRA (Kopiczko et al., 2024): scaling vectors around shared frozen random projections on --vera-targets, as PEFT's VeraConfig"
    }
    /// The VeRA paper's GLUE rates for the vectors (RoBERTa) lie between 4e-3 and 1e-2.
    fn default_lr(&self) -> f64 {
        4e-3
    }
    fn traits(&self) -> Traits {
        Traits::ADAPTER
    }
    /// Only its new tensors train (and the head): new parameters always do.
    fn chooses(&self, _name: &str, _scope: &Scope) -> bool {
        false
    }
}
