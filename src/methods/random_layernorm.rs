//! The control for fisher-layernorm: --fraction of LayerNorm elements chosen uniformly at
//! random (seeded); the others never move.

use anyhow::Result;

use super::subset::{self, Keep};
use super::{is_layernorm, MaskContext, Method, MethodDef, Scope, Traits};
use crate::optim::{Mask, MaskPlan};

pub struct RandomLayernorm;

pub const METHOD: Method = Method(&RandomLayernorm);

impl MethodDef for RandomLayernorm {
    fn name(&self) -> &'static str {
        "random-layernorm"
    }
    fn help(&self) -> &'static str {
        "--fraction of LayerNorm elements uniformly at random (seeded): fisher-layernorm's \
         control"
    }
    fn default_lr(&self) -> f64 {
        1e-3
    }
    fn traits(&self) -> Traits {
        Traits {
            fraction: true,
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
            subset::fraction(cx.spec),
            Keep::Random,
            Mask::Fixed,
        )
    }
}
