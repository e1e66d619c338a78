//! peft: fine-tune BERT and RoBERTa on GLUE, training the whole model or a chosen subset.

pub mod bench;
pub mod cli;
pub mod components;
pub mod data;
pub mod device;
pub mod error;
pub mod fisher;
pub mod hub;
pub mod loss;
pub mod methods;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod peft_format;
pub mod report;
pub mod run_dir;
pub mod stats;
pub mod tokenize;
pub mod train;
