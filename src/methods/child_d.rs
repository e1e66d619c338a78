//! Child-Tuning D (Xu et al., 2021), as AliceMind's `ChildTuningAdamW` runs it: gradients
//! of encoder-layer elements outside the top --reserve by Fisher information at the
//! pre-trained weights are zeroed (a fixed gate on the gradient; moments and weight decay
//! still apply to every element); embeddings, pooler and head train fully.

use anyhow::Result;

use super::subset::{self, Keep};
use super::{is_encoder_layer, MaskContext, Method, MethodDef, Scope, Traits};
use crate::optim::{Mask, MaskPlan, UpdateRule};

pub struct ChildD;

pub const METHOD: Method = Method(&ChildD);

/// Child-Tuning D's reference estimates Fisher from batch-mean gradients of its training
/// batch size (16).
pub const CHILD_TUNING_FISHER_BATCH: usize = 16;

impl MethodDef for ChildD {
    fn name(&self) -> &'static str {
        "child-d"
    }
    fn help(&self) -> &'static str {
        "Child-Tuning D (Xu et al., 2021): encoder-layer gradients kept on the top --reserve \
         of elements by Fisher at the pre-trained weights"
    }
    fn default_lr(&self) -> f64 {
        2e-5
    }
    fn traits(&self) -> Traits {
        Traits {
            fisher: true,
            ..Traits::CHILD_TUNING
        }
    }
    fn chooses(&self, _name: &str, _scope: &Scope) -> bool {
        true
    }
    fn masks(&self, cx: &MaskContext) -> Result<MaskPlan> {
        subset::masks(
            cx,
            self.name(),
            is_encoder_layer,
            super::child_f::reserve(cx.spec),
            Keep::Fisher,
            Mask::Gradient,
        )
    }
    fn update_rule(&self) -> UpdateRule {
        UpdateRule::ChildTuning
    }
    fn ranks(&self, name: &str) -> bool {
        is_encoder_layer(name)
    }
}
