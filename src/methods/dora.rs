//! DoRA (Liu et al., 2024), as PEFT's use_dora: LoRA's direction (the --lora-* settings)
//! plus a learned magnitude per output row (model/adapter.rs).

use super::{Method, MethodDef, MethodSpec, Scope, Traits};
use crate::optim::LrScale;

pub struct Dora;

pub const METHOD: Method = Method(&Dora);

impl MethodDef for Dora {
    fn name(&self) -> &'static str {
        "dora"
    }
    fn help(&self) -> &'static str {
        "DoRA (Liu et al., 2024) as PEFT's use_dora: LoRA's direction plus a learned magnitude per output row"
    }
    /// As LoRA.
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
    /// LoRA+ too (--lora-plus-ratio), as PEFT groups a DoRA model.
    fn lr_scale(&self, spec: &MethodSpec) -> Option<LrScale> {
        super::lora::plus_scale(spec)
    }
}
