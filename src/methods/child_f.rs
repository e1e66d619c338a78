//! Child-Tuning F (Xu et al., 2021), as AliceMind's `ChildTuningAdamW` runs it: each step,
//! every gradient element of every parameter survives with probability --reserve and the
//! survivors are scaled by 1/reserve; moments and weight decay apply to every element.

use anyhow::Result;

use super::{MaskContext, Method, MethodDef, Scope, Traits};
use crate::optim::{Mask, MaskPlan, UpdateRule};

pub struct ChildF;

pub const METHOD: Method = Method(&ChildF);

crate::method_settings! {
    context(m, f);
    used_by = m.takes_reserve();
    /// child-f, child-d: Child-Tuning's reserve_p.
    reserve => reserve: f64 = default(0.3);
}

impl Settings {
    pub fn check(&self) -> Result<()> {
        super::subset::check_share("reserve", self.reserve)
    }
}

/// Child-Tuning's reserve_p for a run of F or D.
pub fn reserve(spec: &super::MethodSpec) -> f64 {
    spec.config.child_tuning.as_ref().map_or(1.0, |s| s.reserve)
}

impl MethodDef for ChildF {
    fn name(&self) -> &'static str {
        "child-f"
    }
    fn help(&self) -> &'static str {
        "Child-Tuning F (Xu et al., 2021): each step every gradient element survives with \
         probability --reserve, scaled by 1/reserve"
    }
    /// Child-Tuning updates many weights: BERT's range, as full fine-tuning.
    fn default_lr(&self) -> f64 {
        2e-5
    }
    fn traits(&self) -> Traits {
        Traits::CHILD_TUNING
    }
    fn chooses(&self, _name: &str, _scope: &Scope) -> bool {
        true
    }
    /// Every tensor the optimizer holds, the head and pooler included.
    fn masks(&self, cx: &MaskContext) -> Result<MaskPlan> {
        Ok(MaskPlan {
            rest: Mask::Bernoulli { p: reserve(cx.spec) },
            ..MaskPlan::default()
        })
    }
    fn update_rule(&self) -> UpdateRule {
        UpdateRule::ChildTuning
    }
}
