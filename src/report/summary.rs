//! A sweep's summary: each dev metric of the best and the final evaluation, across seeds.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;

use super::runs::{flat_metrics, Run};
use crate::stats::Spread;

#[derive(Debug, Serialize)]
pub struct SeedRun {
    pub seed: u64,
    pub dir: PathBuf,
    pub best_step: Option<usize>,
    pub final_step: Option<usize>,
    pub best: BTreeMap<String, f64>,
    #[serde(rename = "final")]
    pub last: BTreeMap<String, f64>,
}

/// What `summary.json` holds. Metrics are fractions, as in metrics.jsonl.
#[derive(Debug, Serialize)]
pub struct SweepSummary {
    pub task: String,
    pub method: String,
    pub seeds: Vec<u64>,
    pub runs: Vec<SeedRun>,
    /// Per metric, over the seeds' best evaluations.
    pub best: BTreeMap<String, Spread>,
    /// Per metric, over the seeds' final evaluations.
    #[serde(rename = "final")]
    pub last: BTreeMap<String, Spread>,
}

impl SweepSummary {
    pub fn of(runs: &[Run]) -> Self {
        let per_run: Vec<SeedRun> = runs
            .iter()
            .map(|r| SeedRun {
                seed: r.train.seed,
                dir: r.dir.clone(),
                best_step: r.best().map(|b| b.step),
                final_step: r.last().map(|b| b.step),
                best: r
                    .best()
                    .map(|b| flat_metrics(&b.dev).into_iter().collect())
                    .unwrap_or_default(),
                last: r
                    .last()
                    .map(|b| flat_metrics(&b.dev).into_iter().collect())
                    .unwrap_or_default(),
            })
            .collect();
        let spread = |pick: fn(&SeedRun) -> &BTreeMap<String, f64>| {
            let mut values: BTreeMap<String, Vec<f64>> = BTreeMap::new();
            for r in &per_run {
                for (k, v) in pick(r) {
                    values.entry(k.clone()).or_default().push(*v);
                }
            }
            values
                .into_iter()
                .filter_map(|(k, v)| Some((k, Spread::of(&v)?)))
                .collect::<BTreeMap<_, _>>()
        };
        let first = runs.first();
        Self {
            task: first.map(|r| r.train.task.clone()).unwrap_or_default(),
            method: first.map(|r| r.train.method.clone()).unwrap_or_default(),
            seeds: runs.iter().map(|r| r.train.seed).collect(),
            best: spread(|r| &r.best),
            last: spread(|r| &r.last),
            runs: per_run,
        }
    }

    /// A table for the terminal, metrics ×100 like the rest of peft's output.
    pub fn table(&self) -> String {
        let seeds: Vec<String> = self.seeds.iter().map(u64::to_string).collect();
        let mut out = format!(
            "{} {} over seeds {} (dev metrics x100; std is the sample standard deviation)\n",
            self.task,
            self.method,
            seeds.join(", ")
        );
        let _ = writeln!(
            out,
            "{:<24} {:<5} {:>7} {:>7} {:>6} {:>7} {:>7}  per seed",
            "metric", "eval", "median", "mean", "std", "min", "max"
        );
        let best: fn(&SeedRun) -> &BTreeMap<String, f64> = |r| &r.best;
        let last: fn(&SeedRun) -> &BTreeMap<String, f64> = |r| &r.last;
        for (which, spreads, pick) in [("best", &self.best, best), ("final", &self.last, last)] {
            for (k, s) in spreads {
                let per_seed: Vec<String> = self
                    .runs
                    .iter()
                    .map(|r| {
                        pick(r)
                            .get(k)
                            .map_or_else(|| "-".into(), |v| format!("{:.2}", 100.0 * v))
                    })
                    .collect();
                let _ = writeln!(
                    out,
                    "{k:<24} {which:<5} {:>7.2} {:>7.2} {:>6} {:>7.2} {:>7.2}  {}",
                    100.0 * s.median,
                    100.0 * s.mean,
                    s.std
                        .map_or_else(|| "-".into(), |v| format!("{:.2}", 100.0 * v)),
                    100.0 * s.min,
                    100.0 * s.max,
                    per_seed.join(", ")
                );
            }
        }
        out
    }
}
