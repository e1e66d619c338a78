//! One training run as the command line shows it: the resolved config, the fit, the best
//! and last evaluations; and Ctrl-C, which asks the loop for a checkpoint.

use std::sync::atomic::Ordering;

use anyhow::Result;

use crate::run::record::describe;
use crate::settings::TrainConfig;
use crate::train::fit::{fit, INTERRUPTED};

/// Print the config, train, print the best and last evaluations.
pub fn train_one(cfg: &TrainConfig, overwrite: bool, resume: bool) -> Result<()> {
    // As it will train and be recorded: default adapter targets fitted to the model.
    let cfg = &crate::run::setup::fit_to_model(cfg)?;
    println!(
        "# resolved config (usable as --config)\n{}",
        toml::to_string(&cfg.flat())?.trim_end()
    );
    let summary = fit(cfg, overwrite, resume)?;
    let spec = cfg.task_spec(summary.info.labels.as_deref())?;
    println!("best: {}", describe(spec, &summary.best));
    println!("last: {}", describe(spec, &summary.last));
    println!("run saved to {}", cfg.output.output_dir.display());
    Ok(())
}

/// The first Ctrl-C, or SIGTERM (how Slurm and Kubernetes stop a job: pre-emption, time
/// limits, `scancel`, pod eviction) or SIGHUP, asks the loop to finish its step and save a
/// resumable checkpoint; a second one stops at once.
pub fn catch_ctrl_c() {
    let installed = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!(
            "\nstop requested (Ctrl-C or SIGTERM): finishing this step and saving a checkpoint \
             (Ctrl-C again to quit now)"
        );
    });
    if let Err(e) = installed {
        eprintln!("warning: Ctrl-C and SIGTERM will stop without a checkpoint: {e}");
    }
}
