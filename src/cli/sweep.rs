//! `peft train --seeds 1,2,3`: the same settings once per seed, then a summary across them.
//!
//! The seeds' runs go to `OUTPUT_DIR/seed-<s>` and the summary to `OUTPUT_DIR/summary.json`
//! (OUTPUT_DIR defaults to `runs/<task>-<method>`), so one folder holds one sweep and
//! `peft report OUTPUT_DIR` lists it.
//!
//! Running the same command again continues a sweep: a seed whose directory holds a
//! finished run with exactly these settings is kept, an interrupted one is resumed from its
//! checkpoint. Anything else already there is refused unless --overwrite, which retrains
//! every seed.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::single::{catch_ctrl_c, train_one};
use crate::error::user;
use crate::report::runs::Run;
use crate::report::summary::SweepSummary;
use crate::run::checkpoint::RESUME;
use crate::run::dir::{self as run_dir, RunInfo};
use crate::settings::Overrides;
use crate::settings::TrainConfig;
use crate::train::fit::Interrupted;

pub const SUMMARY: &str = "summary.json";

/// What a seed's directory calls for.
#[derive(Debug, PartialEq)]
enum Plan {
    Train,
    Resume,
    Keep,
}

pub fn run(base: Overrides, overwrite: bool, seeds: &[u64]) -> Result<()> {
    for (i, s) in seeds.iter().enumerate() {
        if seeds[..i].contains(s) {
            crate::user_bail!("--seeds: seed {s} is listed twice");
        }
    }
    // A `seed` in the --config file gives way to --seeds, as to any flag.
    let first = base.clone().resolve()?;
    let sweep = base.output_dir.clone().unwrap_or_else(|| {
        PathBuf::from("runs").join(format!("{}-{}", first.data.task, first.method.name))
    });
    if sweep.join(run_dir::CONFIG).exists() {
        crate::user_bail!(
            "{} holds a single run; a sweep writes seed-<s> folders and {SUMMARY} into a \
             folder of its own: pass another --output-dir",
            sweep.display()
        );
    }
    let cfgs = seeds
        .iter()
        .map(|&s| {
            let mut o = base.clone();
            o.seed = Some(s);
            o.output_dir = Some(sweep.join(format!("seed-{s}")));
            o.resolve()
        })
        .collect::<Result<Vec<_>>>()?;
    // Before any training: a sweep should not stop at its third seed over a folder it
    // could have refused at once.
    let plans = cfgs
        .iter()
        .map(|c| plan(c, overwrite))
        .collect::<Result<Vec<_>>>()?;

    catch_ctrl_c();
    for (i, (cfg, plan)) in cfgs.iter().zip(&plans).enumerate() {
        println!(
            "# seed {} ({} of {}): {}",
            cfg.optimisation.seed,
            i + 1,
            cfgs.len(),
            cfg.output.output_dir.display()
        );
        let done = match plan {
            Plan::Keep => {
                println!("already finished with these settings: kept");
                Ok(())
            }
            Plan::Train => train_one(cfg, overwrite, false),
            Plan::Resume => train_one(cfg, false, true),
        };
        if let Err(e) = done {
            if e.downcast_ref::<Interrupted>().is_some() {
                eprintln!(
                    "the sweep stopped at seed {}: run the same command again to resume it \
                     and train the remaining seeds",
                    cfg.optimisation.seed
                );
            }
            return Err(e);
        }
    }

    let runs = cfgs
        .iter()
        .map(|c| Run::load(&c.output.output_dir))
        .collect::<Result<Vec<_>>>()?;
    let summary = SweepSummary::of(&runs);
    let path = sweep.join(SUMMARY);
    run_dir::write_atomic(&path, serde_json::to_string_pretty(&summary)?.as_bytes())?;
    print!("{}", summary.table());
    println!("summary saved to {}", path.display());
    Ok(())
}

fn plan(cfg: &TrainConfig, overwrite: bool) -> Result<Plan> {
    let dir = &cfg.output.output_dir;
    if overwrite || !dir.join(run_dir::CONFIG).exists() {
        return Ok(Plan::Train);
    }
    let saved = RunInfo::load(dir)?;
    let differ = differing_keys(&saved.train, &crate::run::setup::fit_like(cfg, &saved))?;
    if !differ.is_empty() {
        return Err(user(format!(
            "{} already holds a run with other settings ({} differ); pass --overwrite to \
             retrain every seed, or another --output-dir",
            dir.display(),
            differ.join(", ")
        )));
    }
    if dir.join(RESUME).exists() {
        Ok(Plan::Resume)
    } else if finished(dir) {
        Ok(Plan::Keep)
    } else {
        Err(user(format!(
            "{} holds an unfinished run without a checkpoint to resume; pass --overwrite \
             to retrain every seed",
            dir.display()
        )))
    }
}

fn finished(dir: &Path) -> bool {
    dir.join(run_dir::LAST).is_file() && dir.join(run_dir::METRICS).is_file()
}

fn differing_keys(a: &TrainConfig, b: &TrainConfig) -> Result<Vec<String>> {
    let (a, b) = (
        serde_json::to_value(a.flat())?,
        serde_json::to_value(b.flat())?,
    );
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return Ok(vec!["the config".into()]);
    };
    Ok(a.keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect())
}
