//! The flags that pick a run's weights, shared by the commands that rebuild a run.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::run::weights::{RunWeights, Which};

/// The flags that pick a run's weights, shared by every command that rebuilds a run.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// A run directory written by `peft train`.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Which saved state to use.
    #[arg(long, value_enum, default_value_t = Which::Best)]
    pub which: Which,
    /// Base model directory or hub id, if it moved since training [default: the run's].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Branch, tag or commit of a hub --model [default: main].
    #[arg(long, requires = "model")]
    pub revision: Option<String>,
}

impl RunArgs {
    pub fn load(&self) -> Result<RunWeights> {
        RunWeights::load(
            &self.checkpoint,
            self.which,
            self.model.as_deref(),
            self.revision.as_deref(),
        )
    }
}
