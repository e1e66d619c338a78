//! GLUE data: the task registry and the TSV files the tasks are read from.

pub mod tasks;
pub mod tsv;

pub use tasks::{all, read_split, task, Example, Label, Layout, Metric, Problem, TaskSpec};
