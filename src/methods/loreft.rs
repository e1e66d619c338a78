//! LoReFT (Wu et al., 2024), as pyreft's LoreftIntervention: h + Rᵀ(Wh + b − Rh) on chosen
//! layers' outputs at chosen positions (model/reft.rs).

use super::{Method, MethodDef, Scope, Traits};

pub struct Loreft;

pub const METHOD: Method = Method(&Loreft);

impl MethodDef for Loreft {
    fn name(&self) -> &'static str {
        "loreft"
    }
    fn help(&self) -> &'static str {
        "LoReFT (Wu et al., 2024): low-rank edits of hidden states at --loreft-layers and --loreft-positions, as pyreft"
    }
    /// pyreft's GLUE runs (RoBERTa-base).
    fn default_lr(&self) -> f64 {
        6e-4
    }
    fn traits(&self) -> Traits {
        Traits::ADAPTER
    }
    /// Only its new tensors train (and the head): new parameters always do.
    fn chooses(&self, _name: &str, _scope: &Scope) -> bool {
        false
    }
}
