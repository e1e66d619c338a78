//! The integration tests: one crate (one binary to link), a module per area, sharing
//! the helpers in `common`. Most run the real `peft` binary on tiny fixtures.

mod common;

mod adalora;
mod adapters;
mod architecture;
mod backprop;
mod bottleneck;
mod candle_transformers;
mod card;
mod cli;
mod custom;
mod errors;
mod fisher;
mod frozen;
mod fuzz;
mod grid;
mod hostile;
mod hra;
mod hub;
mod lora_init;
mod methods;
mod mlflow;
mod old_runs;
mod parity;
mod parsers_proptest;
mod peft_python;
mod precision;
mod prefix;
mod prompt;
mod recompute;
mod registry;
mod resume;
mod runs;
mod serve;
mod squad;
mod squad_reference;
mod tensorboard;
mod train;
mod transfer;
mod vera;
mod xlnet;
