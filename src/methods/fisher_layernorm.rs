//! The LayerNorm paper's Fisher subset: the top --fraction of LayerNorm elements by Fisher
//! information (per task, or a global Fisher file from `peft fisher --global`); the
//! others never move.

use anyhow::Result;

use super::subset::{self, Keep};
use super::{is_layernorm, MaskContext, Method, MethodDef, Scope, Traits};
use crate::optim::{Mask, MaskPlan};

pub struct FisherLayernorm;

pub const METHOD: Method = Method(&FisherLayernorm);

impl MethodDef for FisherLayernorm {
    fn name(&self) -> &'static str {
        "fisher-layernorm"
    }
    fn help(&self) -> &'static str {
        "the top --fraction of LayerNorm elements by Fisher information, estimated on the \
         training set or read from --fisher"
    }
    fn default_lr(&self) -> f64 {
        1e-3
    }
    fn traits(&self) -> Traits {
        Traits {
            fraction: true,
            fisher: true,
            ..Traits::default()
        }
    }
    fn chooses(&self, name: &str, _scope: &Scope) -> bool {
        is_layernorm(name)
    }
    fn masks(&self, cx: &MaskContext) -> Result<MaskPlan> {
        subset::masks(
            cx,
            self.name(),
            is_layernorm,
            cx.spec.fraction,
            Keep::Fisher,
            Mask::Fixed,
        )
    }
}
