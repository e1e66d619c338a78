//! GLUE from the Hugging Face hub: the parquet files of the dataset repository
//! `nyu-mll/glue`, used when neither `--data-dir` nor `PEFT_GLUE_DIR` is given.
//!
//! Each task is a folder of the repository (`rte/`), each split one or more shards
//! named `<split>-NNNNN-of-MMMMM.parquet`; the dev splits are called `validation*`.
//! The shards of a split are found by listing the repository (or, offline or already
//! cached, the snapshot folder) and read in name order, so examples keep the
//! dataset's order. Rows become the same [`Example`]s the TSV reader makes.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::Result;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;

use super::tasks::{Example, Label, Problem, TaskSpec};
use crate::error::{user, PathContext};
use crate::hub::{self, HubRepo, Kind};

pub const GLUE_REPO: &str = "nyu-mll/glue";

/// How a task's rows look on the hub.
struct HubTask {
    /// The dataset config, which is also the repository folder.
    config: &'static str,
    text_a: &'static str,
    text_b: Option<&'static str>,
    /// The `label` ClassLabel names in id order, each with the registry label it is
    /// (binary GLUE files write `0`/`1` where the hub names the classes); empty for
    /// regression.
    labels: &'static [(&'static str, &'static str)],
}

const NLI2: &[(&str, &str)] = &[
    ("entailment", "entailment"),
    ("not_entailment", "not_entailment"),
];

static HUB_TASKS: &[HubTask] = &[
    HubTask {
        config: "cola",
        text_a: "sentence",
        text_b: None,
        labels: &[("unacceptable", "0"), ("acceptable", "1")],
    },
    HubTask {
        config: "sst2",
        text_a: "sentence",
        text_b: None,
        labels: &[("negative", "0"), ("positive", "1")],
    },
    HubTask {
        config: "mrpc",
        text_a: "sentence1",
        text_b: Some("sentence2"),
        labels: &[("not_equivalent", "0"), ("equivalent", "1")],
    },
    HubTask {
        config: "qqp",
        text_a: "question1",
        text_b: Some("question2"),
        labels: &[("not_duplicate", "0"), ("duplicate", "1")],
    },
    HubTask {
        config: "stsb",
        text_a: "sentence1",
        text_b: Some("sentence2"),
        labels: &[],
    },
    HubTask {
        config: "mnli",
        text_a: "premise",
        text_b: Some("hypothesis"),
        labels: &[
            ("entailment", "entailment"),
            ("neutral", "neutral"),
            ("contradiction", "contradiction"),
        ],
    },
    HubTask {
        config: "qnli",
        text_a: "question",
        text_b: Some("sentence"),
        labels: NLI2,
    },
    HubTask {
        config: "rte",
        text_a: "sentence1",
        text_b: Some("sentence2"),
        labels: NLI2,
    },
    HubTask {
        config: "wnli",
        text_a: "sentence1",
        text_b: Some("sentence2"),
        labels: &[("not_entailment", "0"), ("entailment", "1")],
    },
];

fn hub_task(spec: &TaskSpec) -> Result<&'static HubTask> {
    HUB_TASKS
        .iter()
        .find(|t| t.config == spec.name)
        .ok_or_else(|| user(format!("task {} is not in {GLUE_REPO}", spec.dir)))
}

/// The registry's class id for each hub label id.
fn class_ids(spec: &TaskSpec, task: &HubTask) -> Result<Vec<u32>> {
    let Problem::Classification { labels } = spec.problem else {
        return Ok(Vec::new());
    };
    task.labels
        .iter()
        .map(|(_, ours)| {
            labels
                .iter()
                .position(|l| l == ours)
                .map(|i| i as u32)
                .ok_or_else(|| anyhow::anyhow!("{}: no label `{ours}`", spec.name))
        })
        .collect()
}

/// `dev` is `validation` on the hub (`dev_matched` → `validation_matched`).
pub(super) fn hub_split(split: &str) -> String {
    match split.strip_prefix("dev") {
        Some(rest) => format!("validation{rest}"),
        None => split.to_string(),
    }
}

/// The shards of `config/split` among repository paths `files`, in order, or why they
/// are not all there: none at all (`Err(None)`), or some (`Err(Some(missing))`).
fn shards(files: &[String], config: &str, split: &str) -> Result<Vec<String>, Option<String>> {
    let prefix = format!("{config}/{split}-");
    let mut found: Vec<(usize, usize, &String)> = files
        .iter()
        .filter_map(|f| {
            let (i, n) = f
                .strip_prefix(&prefix)?
                .strip_suffix(".parquet")?
                .split_once("-of-")?;
            Some((i.parse().ok()?, n.parse().ok()?, f))
        })
        .collect();
    found.sort();
    found.dedup();
    let Some(&(_, total, _)) = found.first() else {
        return Err(None);
    };
    let present: Vec<usize> = found
        .iter()
        .filter(|(_, n, _)| *n == total)
        .map(|(i, ..)| *i)
        .collect();
    let absent: Vec<String> = (0..total)
        .filter(|i| !present.contains(i))
        .map(|i| format!("{prefix}{i:05}-of-{total:05}.parquet"))
        .collect();
    if !absent.is_empty() {
        return Err(Some(absent.join(", ")));
    }
    Ok(found
        .into_iter()
        .filter(|(_, n, _)| *n == total)
        .map(|(.., f)| f.clone())
        .collect())
}

/// Repository paths of the parquet files in `snapshot/config/`.
fn cached_files(snapshot: &Path, config: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(snapshot.join(config)) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .map(|name| format!("{config}/{name}"))
        .collect()
}

/// Local paths of the split's shards in dataset `repo_id`: from the cache, else downloaded.
pub(super) fn fetch(repo_id: &str, config: &str, split: &str) -> Result<Vec<PathBuf>> {
    let repo = HubRepo::new(repo_id, Kind::Dataset, None);
    let cache = hub::cache_dir()?;
    let pattern = format!("{config}/{split}-*.parquet");
    let snapshot = repo.cached_snapshot(&cache);
    let cached = match &snapshot {
        Some(dir) => shards(&cached_files(dir, config), config, split),
        None => Err(None),
    };
    match (cached, &snapshot) {
        (Ok(files), Some(dir)) => return Ok(files.iter().map(|f| dir.join(f)).collect()),
        (Err(missing), _) if hub::offline() => {
            return Err(repo.offline_error(&cache, &[missing.unwrap_or(pattern)]));
        }
        _ => {}
    }
    eprintln!(
        "fetching {pattern} of {} from the Hugging Face hub",
        repo.describe()
    );
    let (sha, files) = repo.list_remote()?;
    let wanted = shards(&files, config, split).map_err(|missing| {
        user(format!(
            "{}: the repository has no {}",
            repo.describe(),
            missing.unwrap_or(pattern)
        ))
    })?;
    let dir = repo.download(&sha, &wanted)?;
    Ok(wanted.iter().map(|f| dir.join(f)).collect())
}

/// The examples of `split` (registry name: `dev`, `dev_matched`, `test`, ...).
pub fn read_split(spec: &TaskSpec, split: &str) -> Result<Vec<Example>> {
    let task = hub_task(spec)?;
    if !spec.splits().any(|s| s == split) {
        let valid: Vec<&str> = spec.splits().collect();
        crate::user_bail!(
            "task {} has no split `{split}`; valid splits: {}",
            spec.dir,
            valid.join(", ")
        );
    }
    let labelled = !spec.test_splits.contains(&split);
    let mut examples = Vec::new();
    for path in fetch(GLUE_REPO, task.config, &hub_split(split))? {
        read_file(&path, spec, task, labelled, &mut examples)?;
    }
    Ok(examples)
}

fn read_file(
    path: &Path,
    spec: &TaskSpec,
    task: &HubTask,
    labelled: bool,
    out: &mut Vec<Example>,
) -> Result<()> {
    let file = File::open(path).path_context("cannot open", path)?;
    let bad =
        |e: parquet::errors::ParquetError| user(format!("cannot read {}: {e}", path.display()));
    let reader = SerializedFileReader::new(file).map_err(bad)?;
    let meta = reader.metadata().file_metadata();
    check_label_names(path, spec, task, meta.key_value_metadata())?;
    let columns: Vec<&str> = meta
        .schema()
        .get_fields()
        .iter()
        .map(|f| f.name())
        .collect();
    let label_col = labelled.then_some("label");
    let wanted: Vec<&str> = [Some(task.text_a), task.text_b, label_col]
        .into_iter()
        .flatten()
        .collect();
    let absent: Vec<String> = wanted
        .iter()
        .filter(|w| !columns.contains(w))
        .map(|w| format!("`{w}`"))
        .collect();
    if !absent.is_empty() {
        crate::user_bail!(
            "{}: no column(s) {}; columns present: {}",
            path.display(),
            absent.join(", "),
            columns.join(", ")
        );
    }
    let ids = class_ids(spec, task)?;
    for (n, row) in reader.get_row_iter(None).map_err(bad)?.enumerate() {
        let row = row.map_err(bad)?;
        let at = |msg: String| user(format!("{}: row {}: {msg}", path.display(), n + 1));
        let (mut a, mut b, mut label, mut idx) = (None, None, None, None);
        for (name, field) in row.get_column_iter() {
            let name = name.as_str();
            if name == task.text_a {
                a = Some(field);
            } else if Some(name) == task.text_b {
                b = Some(field);
            } else if name == "label" {
                label = Some(field);
            } else if name == "idx" {
                idx = Some(field);
            }
        }
        let text = |col: &str, f: Option<&Field>| match f {
            Some(Field::Str(s)) => {
                super::input::check_text(s, || {
                    format!("{}: row {}: column `{col}`", path.display(), n + 1)
                })?;
                Ok(s.clone())
            }
            other => Err(at(format!(
                "column `{col}`: expected text, found {other:?}"
            ))),
        };
        let text_a = text(task.text_a, a)?;
        let text_b = match task.text_b {
            Some(col) => Some(text(col, b)?),
            None => None,
        };
        let label = if labelled {
            to_label(spec, &ids, label).map_err(|m| at(format!("column `label`: {m}")))?
        } else {
            Label::None
        };
        let id = match idx {
            Some(Field::Int(i)) => i.to_string(),
            Some(Field::Long(i)) => i.to_string(),
            _ => out.len().to_string(),
        };
        out.push(Example {
            id,
            text_a,
            text_b,
            label,
        });
    }
    Ok(())
}

fn to_label(spec: &TaskSpec, ids: &[u32], field: Option<&Field>) -> Result<Label, String> {
    let number = match field {
        Some(Field::Byte(v)) => f64::from(*v),
        Some(Field::Short(v)) => f64::from(*v),
        Some(Field::Int(v)) => f64::from(*v),
        Some(Field::Long(v)) => *v as f64,
        Some(Field::Float(v)) => f64::from(*v),
        Some(Field::Double(v)) => *v,
        other => return Err(format!("expected a number, found {other:?}")),
    };
    match spec.problem {
        Problem::Span { .. } => Err(format!("{} has answers, not labels", spec.dir)),
        Problem::Classification { .. } => {
            let known = number.fract() == 0.0 && number >= 0.0 && (number as usize) < ids.len();
            if !known {
                return Err(format!(
                    "{number} is not a label id of {} (0 to {})",
                    spec.dir,
                    ids.len().saturating_sub(1)
                ));
            }
            Ok(Label::Class(ids[number as usize]))
        }
        Problem::Regression { min, max } => {
            let v = number as f32;
            if !(min..=max).contains(&v) {
                return Err(format!(
                    "{} score {number} is outside [{min}, {max}]",
                    spec.dir
                ));
            }
            Ok(Label::Score(v))
        }
    }
}

/// `datasets` writes the features into the file's metadata; when its ClassLabel names
/// differ from the ones the id mapping was made for, the ids would silently mean other
/// classes, so refuse.
fn check_label_names(
    path: &Path,
    spec: &TaskSpec,
    task: &HubTask,
    meta: Option<&Vec<parquet::file::metadata::KeyValue>>,
) -> Result<()> {
    let Some(json) = meta
        .into_iter()
        .flatten()
        .find(|kv| kv.key == "huggingface")
        .and_then(|kv| kv.value.as_deref())
    else {
        return Ok(());
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        return Ok(());
    };
    let Some(names) = v["info"]["features"]["label"]["names"].as_array() else {
        return Ok(());
    };
    let names: Vec<&str> = names.iter().filter_map(|n| n.as_str()).collect();
    let expected: Vec<&str> = task.labels.iter().map(|(hub, _)| *hub).collect();
    if names != expected {
        crate::user_bail!(
            "{}: {} labels are [{}] in this file, expected [{}]; the dataset changed",
            path.display(),
            spec.dir,
            names.join(", "),
            expected.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::tasks::{all, task};

    #[test]
    fn every_glue_task_is_on_the_hub_with_its_labels_mapped() {
        for spec in all().iter().filter(|s| !s.is_qa()) {
            let t = hub_task(spec).unwrap();
            let ids = class_ids(spec, t).unwrap();
            assert_eq!(ids.len(), t.labels.len(), "{}", spec.name);
            if let Problem::Classification { labels } = spec.problem {
                assert_eq!(labels.len(), ids.len(), "{}", spec.name);
            }
        }
        // The hub's ids are the ids of the registry (which follows `datasets`), task by
        // task: the mapping is the identity, checked here so a change to either shows.
        let id_of = |task_name: &str, hub_name: &str| {
            let spec = task(task_name).unwrap();
            let t = hub_task(spec).unwrap();
            let i = t.labels.iter().position(|(h, _)| *h == hub_name).unwrap();
            class_ids(spec, t).unwrap()[i]
        };
        assert_eq!(id_of("rte", "entailment"), 0);
        assert_eq!(id_of("rte", "not_entailment"), 1);
        assert_eq!(id_of("qnli", "entailment"), 0);
        assert_eq!(id_of("qnli", "not_entailment"), 1);
        assert_eq!(id_of("mnli", "entailment"), 0);
        assert_eq!(id_of("mnli", "neutral"), 1);
        assert_eq!(id_of("mnli", "contradiction"), 2);
        assert_eq!(id_of("cola", "acceptable"), 1);
        assert_eq!(id_of("sst2", "positive"), 1);
        assert_eq!(id_of("mrpc", "equivalent"), 1);
        assert_eq!(id_of("qqp", "duplicate"), 1);
        assert_eq!(id_of("wnli", "entailment"), 1);
    }

    #[test]
    fn labels_from_numbers() {
        let rte = task("rte").unwrap();
        let ids = class_ids(rte, hub_task(rte).unwrap()).unwrap();
        assert_eq!(
            to_label(rte, &ids, Some(&Field::Long(1))),
            Ok(Label::Class(1))
        );
        let err = to_label(rte, &ids, Some(&Field::Long(-1))).unwrap_err();
        assert_eq!(err, "-1 is not a label id of RTE (0 to 1)");
        assert!(to_label(rte, &ids, Some(&Field::Str("x".into()))).is_err());
        let stsb = task("stsb").unwrap();
        assert_eq!(
            to_label(stsb, &[], Some(&Field::Float(3.5))),
            Ok(Label::Score(3.5))
        );
        assert!(to_label(stsb, &[], Some(&Field::Float(-1.0))).is_err());
    }

    #[test]
    fn split_names_and_shards() {
        assert_eq!(hub_split("dev"), "validation");
        assert_eq!(hub_split("dev_mismatched"), "validation_mismatched");
        assert_eq!(hub_split("test_matched"), "test_matched");
        let files: Vec<String> = [
            "rte/train-00000-of-00001.parquet",
            "rte/validation-00000-of-00001.parquet",
            "mnli/validation_matched-00000-of-00001.parquet",
            "qqp/train-00001-of-00002.parquet",
            "qqp/train-00000-of-00002.parquet",
            "mnli/train-00000-of-00002.parquet",
            "README.md",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            shards(&files, "rte", "validation"),
            Ok(vec!["rte/validation-00000-of-00001.parquet".to_string()])
        );
        assert_eq!(
            shards(&files, "qqp", "train"),
            Ok(vec![
                "qqp/train-00000-of-00002.parquet".to_string(),
                "qqp/train-00001-of-00002.parquet".to_string()
            ])
        );
        assert_eq!(shards(&files, "mnli", "validation"), Err(None));
        assert_eq!(
            shards(&files, "mnli", "train"),
            Err(Some("mnli/train-00001-of-00002.parquet".to_string()))
        );
    }
}
