//! The one optimizer every method trains through, and its learning-rate schedule.

mod masked_adamw;
mod schedule;

pub use masked_adamw::{AdamWConfig, Mask, MaskedAdamW, StepStats};
pub use schedule::LinearSchedule;
