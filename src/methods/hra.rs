//! HRA (Yuan et al., 2024): r Householder reflections of each --hra-targets layer's input,
//! W becoming W·H, as PEFT's HRAConfig (model/hra.rs).

use anyhow::Result;

use super::lora::check_low_rank;
use super::settings::strings;
use super::{Method, MethodDef, Scope, Traits};
use crate::model::{AdapterConfig, AdapterKind};

pub struct Hra;

pub const METHOD: Method = Method(&Hra);

crate::method_settings! {
    context(m, f);
    used_by = m.has(METHOD);
    /// hra: reflections per layer (PEFT's r; even, so that the start is the base layer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hra_r => r: usize = default(8);
    /// hra: modules whose weight is reflected, as --lora-targets (PEFT's defaults: LoRA's).
    #[arg(value_delimiter = ',')]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hra_targets => targets: Vec<String> = default(strings(&["query", "value"]));
}

impl Settings {
    pub fn check(&self) -> Result<()> {
        check_low_rank("hra", self.r, 0.0, &self.targets)
    }

    /// The reflections these settings add.
    pub fn adapter(&self) -> AdapterConfig {
        AdapterConfig {
            kind: AdapterKind::Hra,
            r: self.r,
            alpha: 0.0,
            dropout: 0.0,
            targets: self.targets.clone(),
            rslora: false,
            init: None,
        }
    }
}

impl MethodDef for Hra {
    fn name(&self) -> &'static str {
        "hra"
    }
    fn help(&self) -> &'static str {
        "HRA (Yuan et al., 2024): Householder reflections of --hra-targets layers' inputs, as PEFT's HRAConfig"
    }
    /// The HRA paper's GLUE runs (DeBERTa-v3-base) use rates of this order.
    fn default_lr(&self) -> f64 {
        1e-3
    }
    fn traits(&self) -> Traits {
        Traits::ADAPTER
    }
    /// Only its new tensors train (and the head): new parameters always do.
    fn chooses(&self, _name: &str, _scope: &Scope) -> bool {
        false
    }
}
