//! The command line: one file per subcommand, each with its clap `Args` and a `run`.

pub mod bench;
pub mod diff;
pub mod embed;
pub mod eval;
pub mod fisher;
pub mod grid;
pub mod merge;
pub mod predict;
pub mod report;
pub mod run_args;
pub mod serve;
mod single;
pub mod sweep;
pub mod train;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "peft",
    version,
    about = "Fine-tune BERT, RoBERTa, ELECTRA and DeBERTa on GLUE and SQuAD, all of the model or a chosen subset"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Fine-tune on a GLUE or SQuAD task (or your own data) and save a run directory.
    Train(Box<train::TrainArgs>),
    /// Re-score a saved run (or a classifier or PEFT adapter trained elsewhere) on a split,
    /// or write its GLUE test submission.
    Eval(eval::EvalArgs),
    /// Estimate the diagonal Fisher information of every parameter and rank components.
    Fisher(fisher::FisherArgs),
    /// Time training steps and inference at a fixed shape, per method.
    Bench(bench::BenchArgs),
    /// Rank components by how far fine-tuning moved them.
    Diff(diff::DiffArgs),
    /// Embed text with the encoder: one JSON line per input line.
    Embed(embed::EmbedArgs),
    /// Write a run as a plain Hugging Face model directory (LoRA folded in).
    Merge(merge::MergeArgs),
    /// Label new text with a run: one TSV line (label, probability or score) per input line.
    Predict(predict::PredictArgs),
    /// Table (and plots) of run directories: trainable share, dev metrics, speed.
    Report(report::ReportArgs),
    /// Serve a base model and many adapters over HTTP, batching requests across them.
    Serve(serve::ServeArgs),
    /// A plan of runs (tasks × methods × settings × seeds): list, run one cell or all, or
    /// write a Slurm or Kubernetes job for them.
    Grid(grid::GridArgs),
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Embed(args) => embed::run(args),
        Command::Diff(args) => diff::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Train(args) => train::run(*args),
        Command::Eval(args) => eval::run(args),
        Command::Fisher(args) => fisher::run(args),
        Command::Merge(args) => merge::run(args),
        Command::Predict(args) => predict::run(args),
        Command::Report(args) => report::run(args),
        Command::Grid(args) => grid::run(args),
        Command::Serve(args) => serve::run(args),
    }
}
