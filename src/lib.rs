//! peft: fine-tune BERT and RoBERTa on GLUE, training the whole model or a chosen subset.

pub mod cli;
pub mod device;
pub mod error;
pub mod loss;
pub mod model;
pub mod tokenize;
