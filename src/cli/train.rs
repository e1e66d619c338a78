//! `peft train`: fine-tune and save a run directory.

use std::path::PathBuf;

use std::sync::atomic::Ordering;

use anyhow::Result;
use clap::Args;

use crate::data::run_task;
use crate::run_dir::RunInfo;
use crate::train::config::{Overrides, TrainConfig};
use crate::train::fit::{describe, fit, INTERRUPTED};

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub settings: Overrides,
    /// TOML file with any of the settings above, or a built-in recipe's name.
    #[arg(long, long_help = crate::train::config::CONFIG_HELP)]
    pub config: Option<PathBuf>,
    /// Replace a run already in the output directory.
    #[arg(long)]
    pub overwrite: bool,
    /// Continue an interrupted run from its resume.safetensors, with its own settings.
    #[arg(long, value_name = "RUN", conflicts_with_all = ["config", "overwrite"])]
    pub resume: Option<PathBuf>,
    /// Train once per seed, e.g. --seeds 1,2,3, into OUTPUT_DIR/seed-<s> [default
    /// OUTPUT_DIR: runs/<task>-<method>], and write OUTPUT_DIR/summary.json.
    #[arg(long, value_delimiter = ',', num_args = 1.., conflicts_with_all = ["seed", "resume"])]
    pub seeds: Option<Vec<u64>>,
}

pub fn run(args: TrainArgs) -> Result<()> {
    if let Some(seeds) = &args.seeds {
        return super::sweep::run(&args, seeds);
    }
    let cfg = match &args.resume {
        Some(dir) => {
            if !args.settings.is_empty() {
                crate::user_bail!(
                    "--resume continues {} with the settings in its config.json; drop the other flags",
                    dir.display()
                );
            }
            let mut cfg = RunInfo::load(dir)?.train;
            // The run may have been moved since it started.
            cfg.output_dir = dir.clone();
            cfg
        }
        None => args.overrides()?.resolve()?,
    };
    catch_ctrl_c();
    train_one(&cfg, args.overwrite, args.resume.is_some())
}

impl TrainArgs {
    /// Flags over the --config file.
    pub fn overrides(&self) -> Result<Overrides> {
        let file = match &self.config {
            Some(p) => Overrides::from_config(p)?,
            None => Overrides::default(),
        };
        Ok(self.settings.clone().over(file))
    }
}

/// Print the config, train, print the best and last evaluations.
pub fn train_one(cfg: &TrainConfig, overwrite: bool, resume: bool) -> Result<()> {
    println!(
        "# resolved config (usable as --config)\n{}",
        toml::to_string(cfg)?.trim_end()
    );
    let summary = fit(cfg, overwrite, resume)?;
    let spec = run_task(cfg, summary.info.labels.as_deref())?;
    println!("best: {}", describe(spec, &summary.best));
    println!("last: {}", describe(spec, &summary.last));
    println!("run saved to {}", cfg.output_dir.display());
    Ok(())
}

/// The first Ctrl-C asks the loop to finish its step and save a resumable checkpoint;
/// a second one stops at once.
pub fn catch_ctrl_c() {
    let installed = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!(
            "\ninterrupt: finishing this step and saving a checkpoint (Ctrl-C again to quit now)"
        );
    });
    if let Err(e) = installed {
        eprintln!("warning: Ctrl-C will stop without a checkpoint: {e}");
    }
}
