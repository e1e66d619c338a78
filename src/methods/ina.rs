//! InA (Kang et al., 2024): LoRA whose low-rank activations lose --ina-inhibition times
//! each token's largest channel before the activation (model/adapter.rs).

use super::{Method, MethodDef, Scope, Traits};

pub struct Ina;

pub const METHOD: Method = Method(&Ina);

impl MethodDef for Ina {
    fn name(&self) -> &'static str {
        "ina"
    }
    fn help(&self) -> &'static str {
        "InA inhibition adapters (Kang et al., 2024) on --ina-targets"
    }
    /// As LoRA; the InA authors' recipe (configs/ina.toml) uses 5e-5 with its own batch size.
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
