//! `peft train`: fine-tune and save a run directory.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::data::tasks::task;
use crate::train::config::Overrides;
use crate::train::fit::{describe, fit};

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub settings: Overrides,
    /// TOML file with any of the settings above (snake_case keys); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Replace a run already in the output directory.
    #[arg(long)]
    pub overwrite: bool,
}

pub fn run(args: TrainArgs) -> Result<()> {
    let file = match &args.config {
        Some(p) => Overrides::from_toml_file(p)?,
        None => Overrides::default(),
    };
    let cfg = args.settings.over(file).resolve()?;
    println!(
        "# resolved config (usable as --config)\n{}",
        toml::to_string(&cfg)?.trim_end()
    );
    let summary = fit(&cfg, args.overwrite)?;
    let spec = task(&cfg.task)?;
    println!("best: {}", describe(spec, &summary.best));
    println!("last: {}", describe(spec, &summary.last));
    println!("run saved to {}", cfg.output_dir.display());
    Ok(())
}
