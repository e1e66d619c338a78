//! LoRA (Hu et al., 2021): low-rank adapters beside the --lora-targets linear layers, as
//! PEFT's LoraConfig (model/adapter.rs); rsLoRA with --lora-rslora.

use super::{Method, MethodDef, Scope, Traits};

pub struct Lora;

pub const METHOD: Method = Method(&Lora);

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
