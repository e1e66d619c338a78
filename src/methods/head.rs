//! A linear probe: only the task head trains, the encoder stays as it is. Child-Tuning's
//! task-transfer experiment (Xu et al., 2021) freezes a fine-tuned encoder this way and
//! trains a new classifier on another task (`peft train --model MERGED --method head`).
//! The pooler, like the rest of the encoder, is frozen where the checkpoint has one.

use super::{Method, MethodDef, Scope};

pub struct Head;

pub const METHOD: Method = Method(&Head);

impl MethodDef for Head {
    fn name(&self) -> &'static str {
        "head"
    }
    fn help(&self) -> &'static str {
        "the task head alone: a linear probe of the frozen encoder"
    }
    /// A probe's classifier trains from scratch on fixed features: a subset's rate.
    fn default_lr(&self) -> f64 {
        1e-3
    }
    /// Nothing of the checkpoint: the head (and any tensor it lacks) trains regardless.
    fn chooses(&self, _name: &str, _scope: &Scope) -> bool {
        false
    }
}
