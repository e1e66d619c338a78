//! Fine-tuning: the data path TSV → task → tokenizer → bucketed batches → model → loss →
//! masked AdamW, with evaluation on dev and a self-describing run directory.

pub mod fit;
mod prepare;
pub mod session;
pub mod trackers;
