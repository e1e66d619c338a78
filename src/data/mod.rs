//! Task data: the GLUE task registry, the places GLUE is read from (the official TSV
//! files, or the hub's parquet files), and the user's own files (`--task custom`).

pub mod custom;
pub mod hub;
pub mod labels;
pub mod tasks;
pub mod tsv;

use std::path::PathBuf;

use anyhow::Result;

pub use custom::{CustomData, CustomProblem, CUSTOM};
pub use tasks::{all, read_split, task, Example, Label, Layout, Metric, Problem, TaskSpec};

use crate::train::config::TrainConfig;

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

    /// The data a resolved training config names.
    pub fn of(cfg: &TrainConfig) -> Result<Self> {
        if cfg.task != CUSTOM {
            return Ok(cfg
                .data_dir
                .clone()
                .map_or(Source::GlueHub, Source::GlueDir));
        }
        let need = |v: Option<&PathBuf>, flag: &str| {
            v.cloned()
                .ok_or_else(|| crate::error::user(format!("--task custom needs --{flag} FILE")))
        };
        Ok(Source::Custom(CustomData {
            train: need(cfg.train_file.as_ref(), "train")?,
            dev: need(cfg.dev_file.as_ref(), "dev")?,
            text_columns: cfg.text_columns.clone().unwrap_or_default(),
            label_column: cfg.label_column.clone().unwrap_or_default(),
            problem: cfg.problem.unwrap_or(CustomProblem::Classification),
        }))
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

/// The task of a run: a GLUE task from the registry, or custom data with the class
/// labels the run found in its training file (`RunInfo::labels`).
pub fn run_task(cfg: &TrainConfig, labels: Option<&[String]>) -> Result<&'static TaskSpec> {
    if cfg.task == CUSTOM {
        custom::spec(
            cfg.problem.unwrap_or(CustomProblem::Classification),
            labels,
            cfg.text_columns.as_deref().unwrap_or_default(),
        )
    } else {
        task(&cfg.task)
    }
}
