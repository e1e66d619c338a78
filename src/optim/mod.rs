//! The one optimizer every method trains through, and its learning-rate schedule.

mod masked_adamw;
mod schedule;

pub use masked_adamw::squared_norm;
pub use masked_adamw::{
    AdamWConfig, Mask, MaskPlan, MaskedAdamW, NonFiniteGradient, OptimizerState, StepStats,
    UpdateRule,
};
pub use schedule::LinearSchedule;
