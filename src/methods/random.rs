//! --fraction of all encoder elements (everything but the head) chosen uniformly at random
//! (seeded); the others never move.

use anyhow::Result;

use super::subset::{self, Keep};
use super::{is_head, MaskContext, Method, MethodDef, Scope, Traits};
use crate::optim::{Mask, MaskPlan};

pub struct Random;

pub const METHOD: Method = Method(&Random);

impl MethodDef for Random {
    fn name(&self) -> &'static str {
        "random"
    }
    fn help(&self) -> &'static str {
        "--fraction of all encoder elements uniformly at random (seeded)"
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
    fn chooses(&self, _name: &str, _scope: &Scope) -> bool {
        true
    }
    fn masks(&self, cx: &MaskContext) -> Result<MaskPlan> {
        subset::masks(
            cx,
            self.name(),
            |n| !is_head(n),
            subset::fraction(cx.spec),
            Keep::Random,
            Mask::Fixed,
        )
    }
}
