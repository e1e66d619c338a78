//! peft: fine-tune BERT, RoBERTa, ELECTRA and DeBERTa on GLUE and SQuAD, training the whole
//! model or a chosen subset.

// Every unsafe operation sits in its own block with a `// SAFETY:` comment saying why it
// is sound, even inside an `unsafe fn`.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod bench;
pub mod cli;
pub mod components;
pub mod data;
pub mod device;
pub mod embed;
pub mod error;
pub mod eval;
pub mod fisher;
pub mod grid;
pub mod hub;
pub mod kernels;
pub mod loss;
pub mod methods;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod report;
pub mod run;
pub mod serve;
pub mod settings;
pub mod stats;
pub mod tokenize;
pub mod train;
