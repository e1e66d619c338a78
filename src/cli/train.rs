//! `peft train`: fine-tune and save a run directory.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::single::{catch_ctrl_c, train_one};
use crate::run::dir::RunInfo;
use crate::settings::Overrides;

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub settings: Overrides,
    /// TOML file with any of the settings above, or a built-in recipe's name.
    #[arg(long, long_help = crate::settings::CONFIG_HELP)]
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
        return super::sweep::run(args.overrides()?, args.overwrite, seeds);
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
            cfg.output.output_dir = dir.clone();
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
        crate::run::setup::with_init(self.settings.clone().over(file))
    }
}
