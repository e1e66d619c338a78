//! The one optimizer every method trains through, and its learning-rate schedule.

mod masked_adamw;
mod masks;
mod schedule;
mod update;

pub use masked_adamw::{squared_norm, squared_norms};
pub use masked_adamw::{
    AdamWConfig, MaskedAdamW, NonFiniteGradient, OptimizerState, StepStats, UpdateRule,
};
pub use masks::{Mask, MaskPlan};
pub use schedule::LinearSchedule;

/// A tensor's learning rate as a multiple of the schedule's, from its name and number of
/// dimensions (LoRA+: PEFT's `create_loraplus_optimizer` groups tensors by both).
pub type LrScale = Box<dyn Fn(&str, usize) -> f64 + Send + Sync>;

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

/// Add the gradients `grads` holds for `vars` into `acc`, by name: micro-batches of one
/// step, and the stages of a layer-by-layer backward (`Model::backward_by_layer`), sum
/// into one gradient per parameter.
pub fn accumulate(
    acc: &mut BTreeMap<String, Tensor>,
    vars: &BTreeMap<String, Var>,
    grads: &GradStore,
) -> anyhow::Result<()> {
    for (name, var) in vars {
        if let Some(g) = grads.get(var.as_tensor()) {
            let sum = match acc.remove(name) {
                Some(a) => (a + g)?,
                None => g.clone(),
            };
            acc.insert(name.clone(), sum);
        }
    }
    Ok(())
}
