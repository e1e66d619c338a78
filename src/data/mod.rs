//! Task data: the GLUE task registry, the places GLUE is read from (the official TSV
//! files, or the hub's parquet files), and the user's own files (`--task custom`).

pub mod batches;
pub mod custom;
pub mod dataset;
pub mod hub;
pub mod labels;
pub mod tasks;
pub mod tsv;

use std::path::PathBuf;

use anyhow::Result;

pub use custom::{CustomData, CustomProblem, CUSTOM};
pub use tasks::{all, read_split, task, Example, Label, Layout, Metric, Problem, TaskSpec};

/// Where a task's examples come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// The official `glue_data/<TASK>/<split>.tsv` files under this folder.
    GlueDir(PathBuf),
    /// `nyu-mll/glue` on the Hugging Face hub, through the cache.
    GlueHub,
    Custom(CustomData),
}

impl Source {
    /// GLUE from `data_dir`, else `$PEFT_GLUE_DIR`, else the hub.
    pub fn glue(data_dir: Option<PathBuf>) -> Self {
        data_dir
            .or_else(|| std::env::var_os("PEFT_GLUE_DIR").map(PathBuf::from))
            .map_or(Source::GlueHub, Source::GlueDir)
    }

    /// The class labels a custom training file defines; None for GLUE and regression.
    pub fn labels(&self) -> Result<Option<Vec<String>>> {
        match self {
            Source::Custom(c) => c.labels(),
            _ => Ok(None),
        }
    }

    pub fn read(&self, spec: &TaskSpec, split: &str) -> Result<Vec<Example>> {
        match self {
            Source::GlueDir(dir) => tasks::read_split(spec, dir, split),
            Source::GlueHub => hub::read_split(spec, split),
            Source::Custom(c) => c.read_split(spec, split),
        }
    }

    /// Where the data is, for messages.
    pub fn describe(&self) -> String {
        match self {
            Source::GlueDir(dir) => dir.display().to_string(),
            Source::GlueHub => hub::GLUE_REPO.to_string(),
            Source::Custom(c) => c.train.display().to_string(),
        }
    }
}
