//! Task data: the task registry, the places GLUE and SQuAD are read from (the official
//! files, or the hub's parquet files), and the user's own files (`--task custom`, or
//! SQuAD-format `--train`/`--dev`).

pub mod batches;
pub mod custom;
pub mod dataset;
pub mod glue_files;
pub mod hub;
pub mod input;
pub mod labels;
pub mod squad;
pub mod squad_hub;
pub mod tasks;
pub mod tsv;

use std::path::PathBuf;

use anyhow::Result;

pub use custom::{CustomData, CustomProblem, CUSTOM};
pub use glue_files::read_split;
pub use tasks::{all, task, Example, Label, Layout, Metric, Problem, TaskSpec};

/// Where a task's examples come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// The official `glue_data/<TASK>/<split>.tsv` files under this folder, or SQuAD's
    /// `<split>-v1.1.json`/`<split>-v2.0.json`.
    GlueDir(PathBuf),
    /// The task's dataset on the Hugging Face hub (`nyu-mll/glue`, `rajpurkar/squad`,
    /// `rajpurkar/squad_v2`), through the cache.
    GlueHub,
    Custom(CustomData),
    /// SQuAD-format JSON files of the user's.
    QaFiles {
        train: PathBuf,
        dev: PathBuf,
    },
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
            Source::GlueDir(dir) => glue_files::read_split(spec, dir, split),
            Source::GlueHub => hub::read_split(spec, split),
            Source::Custom(c) => c.read_split(spec, split),
            Source::QaFiles { .. } => Err(anyhow::anyhow!(
                "{}: SQuAD files hold questions, read with read_qa",
                self.describe()
            )),
        }
    }

    /// The questions of a SQuAD split.
    pub fn read_qa(&self, spec: &TaskSpec, split: &str) -> Result<Vec<squad::QaExample>> {
        let Problem::Span { v2 } = spec.problem else {
            anyhow::bail!("{} is not a question-answering task", spec.name);
        };
        if !spec.splits().any(|s| s == split) {
            crate::user_bail!(
                "task {} has no split `{split}`; valid splits: train, dev",
                spec.name
            );
        }
        match self {
            Source::GlueDir(dir) => squad::read_json(&spec.split_path(dir, split), v2),
            Source::GlueHub => squad_hub::read_split(v2, split),
            Source::QaFiles { train, dev } => {
                squad::read_json(if split == "train" { train } else { dev }, v2)
            }
            Source::Custom(_) => Err(anyhow::anyhow!("custom data holds no questions")),
        }
    }

    /// Where the data is, for messages.
    pub fn describe(&self) -> String {
        match self {
            Source::GlueDir(dir) => dir.display().to_string(),
            Source::GlueHub => hub::GLUE_REPO.to_string(),
            Source::Custom(c) => c.train.display().to_string(),
            Source::QaFiles { train, .. } => train.display().to_string(),
        }
    }
}
