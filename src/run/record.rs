//! What a run records at each evaluation (`metrics.jsonl`), how it is shown, and which
//! number picks the best one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::data::TaskSpec;

/// One evaluation: dev metrics per split, and where training stood.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalRecord {
    pub step: usize,
    pub epoch: f64,
    pub train_loss: f64,
    pub lr: f64,
    pub dev: BTreeMap<String, BTreeMap<String, f64>>,
    pub elapsed_s: f64,
    pub train_tokens_per_s: f64,
    pub train_examples_per_s: f64,
    pub best: bool,
}

/// The number that picks the best evaluation: the task's main metric on its first dev split.
pub fn main_score(spec: &TaskSpec, dev: &BTreeMap<String, BTreeMap<String, f64>>) -> f64 {
    dev.get(spec.dev_splits[0])
        .and_then(|m| m.get(spec.main_metric.key()))
        .copied()
        .unwrap_or(f64::NEG_INFINITY)
}

/// `epoch 1.00 step 78 | loss 0.6912 | dev accuracy 52.71 | 2150 tok/s | 42s`
pub fn describe(spec: &TaskSpec, r: &EvalRecord) -> String {
    let mut dev = String::new();
    for (split, metrics) in &r.dev {
        let shown: Vec<String> = spec
            .metrics
            .iter()
            .map(|m| format!("{} {:.2}", m.key(), 100.0 * metrics[m.key()]))
            .collect();
        let label = if r.dev.len() > 1 {
            format!("{split} ")
        } else {
            "dev ".into()
        };
        dev.push_str(&format!("{label}{} ", shown.join(" ")));
    }
    format!(
        "epoch {:.2} step {} | loss {:.4} | {}| {:.0} tok/s | {:.0}s{}",
        r.epoch,
        r.step,
        r.train_loss,
        dev,
        r.train_tokens_per_s,
        r.elapsed_s,
        if r.best { " *" } else { "" }
    )
}
