//! IA3 (Liu et al., 2022), as PEFT's IA3Config: learned vectors scaling key and value
//! outputs and the dense output layers' inputs (model/adapter.rs).

use super::{Method, MethodDef, Scope, Traits};

pub struct Ia3;

pub const METHOD: Method = Method(&Ia3);

impl MethodDef for Ia3 {
    fn name(&self) -> &'static str {
        "ia3"
    }
    fn help(&self) -> &'static str {
        "IA3 scaling vectors (Liu et al., 2022) on --ia3-targets, as PEFT's IA3"
    }
    /// T-Few's rate for IA3 (Liu et al., 2022).
    fn default_lr(&self) -> f64 {
        3e-3
    }
    fn traits(&self) -> Traits {
        Traits::ADAPTER
    }
    /// Only its new tensors train (and the head): new parameters always do.
    fn chooses(&self, _name: &str, _scope: &Scope) -> bool {
        false
    }
}
