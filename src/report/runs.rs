//! Reading finished (or running) run directories for reports and sweep summaries.
//!
//! Only the few fields a report shows are read, and unknown ones are ignored, so that
//! runs written by older or newer versions of peft still report.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Deserialize;

use crate::error::{user, PathContext};
use crate::methods::MethodConfig;
use crate::run::checkpoint::RESUME;
use crate::run::dir as run_dir;
use crate::run::record::EvalRecord;

/// The settings a report reads, by their flat keys (`lr`, `lora_r`), whichever layout
/// config.json has: grouped by concern, or flat as earlier versions saved it.
#[derive(Debug, Clone, Deserialize)]
#[serde(from = "serde_json::Value")]
pub struct RunTrain {
    pub task: String,
    pub method: String,
    pub seed: u64,
    #[serde(default)]
    pub lr: f64,
    /// Every setting, as saved: what tells a grid's runs apart.
    pub settings: BTreeMap<String, serde_json::Value>,
}

impl From<serde_json::Value> for RunTrain {
    fn from(train: serde_json::Value) -> Self {
        let settings = flat_settings(train);
        let text = |k: &str| settings.get(k).and_then(|v| v.as_str()).unwrap_or_default();
        RunTrain {
            task: text("task").to_string(),
            method: text("method").to_string(),
            seed: settings
                .get("seed")
                .and_then(|v| v.as_u64())
                .unwrap_or_default(),
            lr: settings
                .get("lr")
                .and_then(|v| v.as_f64())
                .unwrap_or_default(),
            settings,
        }
    }
}

/// Grouped settings by their flat keys: each concern's keys as they are, the method as
/// `method`, and its own settings by their flags' names (`lora_r`), or, from a version that
/// names them otherwise, `group.key`.
fn flat_settings(train: serde_json::Value) -> BTreeMap<String, serde_json::Value> {
    use serde_json::Value;
    let Value::Object(map) = train else {
        return BTreeMap::new();
    };
    if !map.contains_key("optimisation") {
        return map.into_iter().collect();
    }
    let mut out = BTreeMap::new();
    for (key, value) in map {
        match (key.as_str(), value) {
            ("method", Value::Object(method)) => {
                let known = serde_json::from_value::<MethodConfig>(Value::Object(method.clone()))
                    .ok()
                    .and_then(|m| serde_json::to_value(m.flags()).ok());
                let read = known.is_some();
                if let Some(Value::Object(flags)) = known {
                    out.extend(flags.into_iter().filter(|(_, v)| !v.is_null()));
                }
                for (group, v) in method {
                    match v {
                        Value::Object(s) if !read => {
                            out.extend(s.into_iter().map(|(k, v)| (format!("{group}.{k}"), v)));
                        }
                        Value::Object(_) => {}
                        v if group == "name" => {
                            out.insert("method".to_string(), v);
                        }
                        v => {
                            out.insert(format!("method.{group}"), v);
                        }
                    }
                }
            }
            (_, Value::Object(section)) => out.extend(section),
            (_, v) => {
                out.insert(key, v);
            }
        }
    }
    out
}

#[derive(Debug, Clone, Deserialize)]
struct RunConfig {
    train: RunTrain,
    total_params: usize,
    trainable_params: usize,
}

/// One run directory as a report sees it.
#[derive(Debug, Clone)]
pub struct Run {
    pub dir: PathBuf,
    /// The directory's name, or `sweep/seed-1` for a seed of a sweep.
    pub name: String,
    pub train: RunTrain,
    pub total_params: usize,
    pub trainable_params: usize,
    /// Every evaluation, in order.
    pub records: Vec<EvalRecord>,
    /// `last.safetensors` is written and no resume checkpoint is left.
    pub finished: bool,
}

impl Run {
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(run_dir::CONFIG);
        let text = std::fs::read_to_string(&path)
            .path_context("not a run directory: cannot read", &path)?;
        let cfg: RunConfig = serde_json::from_str(&text)
            .map_err(|e| user(format!("{}: not a run's config.json: {e}", path.display())))?;
        let records = read_records(&dir.join(run_dir::METRICS))?;
        let finished = dir.join(run_dir::LAST).is_file() && !dir.join(RESUME).exists();
        Ok(Self {
            dir: dir.to_path_buf(),
            name: name_of(dir),
            train: cfg.train,
            total_params: cfg.total_params,
            trainable_params: cfg.trainable_params,
            records,
            finished,
        })
    }

    /// The run's name, and for a run started from another (`--init`) that run's:
    /// `cola-head-42 <- mrpc-full-42`.
    pub fn label(&self) -> String {
        match self.train.settings.get("init").and_then(|v| v.as_str()) {
            Some(init) => format!("{} <- {}", self.name, name_of(Path::new(init))),
            None => self.name.clone(),
        }
    }

    /// The evaluation that was best when it was made (the state `trainable.safetensors`
    /// holds): the last one marked best.
    pub fn best(&self) -> Option<&EvalRecord> {
        self.records.iter().rev().find(|r| r.best)
    }

    pub fn last(&self) -> Option<&EvalRecord> {
        self.records.last()
    }

    pub fn share(&self) -> f64 {
        self.trainable_params as f64 / self.total_params.max(1) as f64
    }
}

/// A run's directory name; a seed of a sweep (`runs/rte-layernorm/seed-1`) keeps its
/// sweep's name too, since `seed-1` alone says nothing.
fn name_of(dir: &Path) -> String {
    let base = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| p.display().to_string())
    };
    let own = base(dir);
    match dir.parent() {
        Some(parent) if own.starts_with("seed-") && parent.file_name().is_some() => {
            format!("{}/{own}", base(parent))
        }
        _ => own,
    }
}

/// metrics.jsonl, one record a line; a missing file is a run that has not evaluated yet.
pub fn read_records(path: &Path) -> Result<Vec<EvalRecord>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(user(format!("cannot read {}: {e}", path.display()))),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| user(format!("{}:{}: {e}", path.display(), i + 1)))
        })
        .collect()
}

/// Run directories named on the command line: each path is a run, or a folder whose
/// subfolders (one level down) include runs. Sorted by name within a folder.
pub fn collect(paths: &[PathBuf]) -> Result<Vec<Run>> {
    let mut runs = Vec::new();
    for path in paths {
        if path.join(run_dir::CONFIG).is_file() {
            runs.push(Run::load(path)?);
            continue;
        }
        if !path.is_dir() {
            return Err(user(format!(
                "{}: not a run directory (no such directory)",
                path.display()
            )));
        }
        let mut children: Vec<PathBuf> = std::fs::read_dir(path)
            .path_context("cannot list", path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join(run_dir::CONFIG).is_file())
            .collect();
        if children.is_empty() {
            return Err(user(format!(
                "{}: not a run directory (no config.json), and no run directory in it",
                path.display()
            )));
        }
        children.sort();
        for c in children {
            runs.push(Run::load(&c)?);
        }
    }
    Ok(runs)
}

/// Dev metrics flattened to `metric` (one dev split) or `split/metric` (MNLI's two),
/// alphabetically, which is also the order GLUE lists them in.
pub fn flat_metrics(dev: &BTreeMap<String, BTreeMap<String, f64>>) -> Vec<(String, f64)> {
    let one = dev.len() == 1;
    let mut out = Vec::new();
    for (split, metrics) in dev {
        for (key, v) in metrics {
            let name = if one {
                key.clone()
            } else {
                format!("{split}/{key}")
            };
            out.push((name, *v));
        }
    }
    out
}

/// The number that ranks a run: its task's main metric on the first dev split.
/// A task this version does not know falls back to the first metric recorded.
pub fn main_metric(train: &RunTrain, r: &EvalRecord) -> Option<(String, f64)> {
    match crate::data::tasks::task(&train.task) {
        Ok(spec) => {
            let v = crate::run::record::main_score(spec, &r.dev);
            v.is_finite()
                .then(|| (spec.main_metric.key().to_string(), v))
        }
        Err(_) => flat_metrics(&r.dev).into_iter().next(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_of_a_sweep_keep_the_sweep_name() {
        assert_eq!(name_of(Path::new("runs/rte-ln/seed-3")), "rte-ln/seed-3");
        assert_eq!(
            name_of(Path::new("runs/rte-layernorm-42")),
            "rte-layernorm-42"
        );
    }

    #[test]
    fn one_split_is_bare_two_are_prefixed() {
        let mut dev = BTreeMap::new();
        dev.insert("dev".to_string(), BTreeMap::from([("f1".to_string(), 0.5)]));
        assert_eq!(flat_metrics(&dev), vec![("f1".to_string(), 0.5)]);
        dev.insert(
            "dev_x".to_string(),
            BTreeMap::from([("f1".to_string(), 0.25)]),
        );
        assert_eq!(flat_metrics(&dev)[1], ("dev_x/f1".to_string(), 0.25));
    }
}
