//! A run on disk: the run directory's schema and atomic files (`dir`), the resumable
//! checkpoint, the evaluation records, Hugging Face PEFT's adapter format, and a run's
//! weights rebuilt from its base model and trained tensors.

pub mod adapterhub;
pub mod card;
pub mod checkpoint;
pub mod dir;
pub mod lock;
pub mod mlflow;
pub mod peft_format;
mod peft_kinds;
pub mod record;
pub mod setup;
pub mod tensorboard;
pub mod weights;
