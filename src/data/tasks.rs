//! The nine GLUE tasks and SQuAD 1.1/2.0: where their files live, what their columns are,
//! how they are scored.
//!
//! Adding a task means adding one entry to [`TASKS`]. Label ids follow Hugging Face
//! `datasets` (`glue`), so that heads and predictions line up with models trained there.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::error::user;
use crate::model::HeadKind;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Problem {
    /// Label `i` is the i-th name, as written in the files.
    Classification {
        labels: &'static [&'static str],
    },
    Regression {
        min: f32,
        max: f32,
    },
    /// Extractive question answering: a start and an end token per window (SQuAD);
    /// `v2` when questions may have no answer.
    Span {
        v2: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Metric {
    Accuracy,
    F1,
    /// The mean over classes of one-against-the-rest F1 (custom classification).
    MacroF1,
    Mcc,
    Pearson,
    Spearman,
    /// SQuAD 1.1's `exact_match`.
    ExactMatch,
    /// SQuAD 2.0's `exact`.
    Exact,
    /// SQuAD's token F1 (either version).
    SpanF1,
}

impl Metric {
    /// The key under which the metric is reported (by `evaluate` in metrics.rs).
    pub fn key(self) -> &'static str {
        match self {
            Metric::Accuracy => "accuracy",
            Metric::F1 => "f1",
            Metric::MacroF1 => "macro_f1",
            Metric::Mcc => "mcc",
            Metric::Pearson => "pearson",
            Metric::Spearman => "spearman",
            Metric::ExactMatch => "exact_match",
            Metric::Exact => "exact",
            Metric::SpanF1 => "f1",
        }
    }
}

impl std::fmt::Display for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.key())
    }
}

/// Where the parts of an example are in a split's file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// No header line: columns by 0-based position. Examples are numbered by row.
    Positional {
        fields: usize,
        text_a: usize,
        text_b: Option<usize>,
        label: Option<usize>,
    },
    /// A header line: columns by name, so extra or reordered columns do not matter.
    Named {
        id: Option<&'static str>,
        text_a: &'static str,
        text_b: Option<&'static str>,
        label: Option<&'static str>,
    },
}

#[derive(Debug)]
pub struct TaskSpec {
    /// Canonical lowercase name, as typed on the command line.
    pub name: &'static str,
    /// Folder under the GLUE data directory.
    pub dir: &'static str,
    pub problem: Problem,
    /// The official GLUE dev metrics.
    pub metrics: &'static [Metric],
    /// Picks the best epoch.
    pub main_metric: Metric,
    pub dev_splits: &'static [&'static str],
    pub test_splits: &'static [&'static str],
    /// Layout of `train` and the dev splits.
    pub labelled: Layout,
    /// Layout of the test splits, which have no labels.
    pub test: Layout,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Label {
    Class(u32),
    Score(f32),
    /// The tokens where the answer starts and ends in a SQuAD window (0, 0: none).
    Span {
        start: u32,
        end: u32,
    },
    /// Test splits are unlabelled.
    None,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// The file's index/id column, or the 0-based row number if it has none.
    pub id: String,
    pub text_a: String,
    pub text_b: Option<String>,
    pub label: Label,
}

/// An expected row, for unit tests.
#[cfg(test)]
pub(crate) fn example(id: &str, a: &str, b: Option<&str>, label: Label) -> Example {
    Example {
        id: id.into(),
        text_a: a.into(),
        text_b: b.map(Into::into),
        label,
    }
}

const BINARY: Problem = Problem::Classification {
    labels: &["0", "1"],
};
const NLI2: Problem = Problem::Classification {
    labels: &["entailment", "not_entailment"],
};
const DEV: &[&str] = &["dev"];
const TEST: &[&str] = &["test"];

/// The common shape of the sentence-pair tasks: `index`, two texts, optional label.
const fn pair(a: &'static str, b: &'static str, label: Option<&'static str>) -> Layout {
    Layout::Named {
        id: Some("index"),
        text_a: a,
        text_b: Some(b),
        label,
    }
}

static TASKS: &[TaskSpec] = &[
    TaskSpec {
        name: "cola",
        dir: "CoLA",
        problem: BINARY,
        metrics: &[Metric::Mcc],
        main_metric: Metric::Mcc,
        dev_splits: DEV,
        test_splits: TEST,
        // source, label, original annotation, sentence
        labelled: Layout::Positional {
            fields: 4,
            text_a: 3,
            text_b: None,
            label: Some(1),
        },
        test: Layout::Named {
            id: Some("index"),
            text_a: "sentence",
            text_b: None,
            label: None,
        },
    },
    TaskSpec {
        name: "sst2",
        dir: "SST-2",
        problem: BINARY,
        metrics: &[Metric::Accuracy],
        main_metric: Metric::Accuracy,
        dev_splits: DEV,
        test_splits: TEST,
        labelled: Layout::Named {
            id: None,
            text_a: "sentence",
            text_b: None,
            label: Some("label"),
        },
        test: Layout::Named {
            id: Some("index"),
            text_a: "sentence",
            text_b: None,
            label: None,
        },
    },
    TaskSpec {
        name: "mrpc",
        dir: "MRPC",
        problem: BINARY,
        metrics: &[Metric::Accuracy, Metric::F1],
        main_metric: Metric::F1,
        dev_splits: DEV,
        test_splits: TEST,
        labelled: Layout::Named {
            id: None,
            text_a: "#1 String",
            text_b: Some("#2 String"),
            label: Some("Quality"),
        },
        test: pair("#1 String", "#2 String", None),
    },
    TaskSpec {
        name: "stsb",
        dir: "STS-B",
        problem: Problem::Regression { min: 0.0, max: 5.0 },
        metrics: &[Metric::Pearson, Metric::Spearman],
        main_metric: Metric::Pearson,
        dev_splits: DEV,
        test_splits: TEST,
        labelled: pair("sentence1", "sentence2", Some("score")),
        test: pair("sentence1", "sentence2", None),
    },
    TaskSpec {
        name: "qqp",
        dir: "QQP",
        problem: BINARY,
        metrics: &[Metric::Accuracy, Metric::F1],
        main_metric: Metric::F1,
        dev_splits: DEV,
        test_splits: TEST,
        labelled: Layout::Named {
            id: Some("id"),
            text_a: "question1",
            text_b: Some("question2"),
            label: Some("is_duplicate"),
        },
        test: Layout::Named {
            id: Some("id"),
            text_a: "question1",
            text_b: Some("question2"),
            label: None,
        },
    },
    TaskSpec {
        name: "mnli",
        dir: "MNLI",
        problem: Problem::Classification {
            labels: &["entailment", "neutral", "contradiction"],
        },
        metrics: &[Metric::Accuracy],
        main_metric: Metric::Accuracy,
        dev_splits: &["dev_matched", "dev_mismatched"],
        test_splits: &["test_matched", "test_mismatched"],
        // train has 12 columns and dev 16 (five annotator labels); gold_label is in both
        labelled: pair("sentence1", "sentence2", Some("gold_label")),
        test: pair("sentence1", "sentence2", None),
    },
    TaskSpec {
        name: "qnli",
        dir: "QNLI",
        problem: NLI2,
        metrics: &[Metric::Accuracy],
        main_metric: Metric::Accuracy,
        dev_splits: DEV,
        test_splits: TEST,
        labelled: pair("question", "sentence", Some("label")),
        test: pair("question", "sentence", None),
    },
    TaskSpec {
        name: "rte",
        dir: "RTE",
        problem: NLI2,
        metrics: &[Metric::Accuracy],
        main_metric: Metric::Accuracy,
        dev_splits: DEV,
        test_splits: TEST,
        labelled: pair("sentence1", "sentence2", Some("label")),
        test: pair("sentence1", "sentence2", None),
    },
    TaskSpec {
        name: "wnli",
        dir: "WNLI",
        problem: BINARY,
        metrics: &[Metric::Accuracy],
        main_metric: Metric::Accuracy,
        dev_splits: DEV,
        test_splits: TEST,
        labelled: pair("sentence1", "sentence2", Some("label")),
        test: pair("sentence1", "sentence2", None),
    },
    squad("squad", false),
    squad("squad_v2", true),
];

/// SQuAD: the official JSON files, `<split>-v1.1.json` or `<split>-v2.0.json` (see
/// [`super::squad`]); the layout names the hub's columns.
const fn squad(name: &'static str, v2: bool) -> TaskSpec {
    TaskSpec {
        name,
        dir: if v2 { "SQuAD-v2" } else { "SQuAD" },
        problem: Problem::Span { v2 },
        metrics: if v2 {
            &[Metric::Exact, Metric::SpanF1]
        } else {
            &[Metric::ExactMatch, Metric::SpanF1]
        },
        main_metric: Metric::SpanF1,
        dev_splits: DEV,
        test_splits: &[],
        labelled: Layout::Named {
            id: Some("id"),
            text_a: "question",
            text_b: Some("context"),
            label: Some("answers"),
        },
        test: Layout::Named {
            id: Some("id"),
            text_a: "question",
            text_b: Some("context"),
            label: None,
        },
    }
}

pub fn all() -> &'static [TaskSpec] {
    TASKS
}

/// Looks a task up ignoring case, `-` and `_`: `RTE`, `sts-b`, `SST_2` all work.
pub fn task(name: &str) -> Result<&'static TaskSpec> {
    let key = normalize(name);
    TASKS
        .iter()
        .find(|t| normalize(t.name) == key)
        .ok_or_else(|| {
            let names: Vec<&str> = TASKS.iter().map(|t| t.name).collect();
            user(format!(
            "unknown task `{name}`; valid tasks: {}, or custom (your own files: --train, --dev)",
            names.join(", ")
        ))
        })
}

fn normalize(name: &str) -> String {
    name.chars()
        .filter(|c| !matches!(c, '-' | '_'))
        .flat_map(char::to_lowercase)
        .collect()
}

impl TaskSpec {
    /// Whether an example is a pair of texts (RTE, MRPC) rather than one (SST-2, CoLA).
    pub fn takes_pairs(&self) -> bool {
        match self.labelled {
            Layout::Positional { text_b, .. } => text_b.is_some(),
            Layout::Named { text_b, .. } => text_b.is_some(),
        }
    }

    /// A classification task's labels, in id order; none for the others.
    pub fn label_names(&self) -> &'static [&'static str] {
        match self.problem {
            Problem::Classification { labels } => labels,
            _ => &[],
        }
    }

    /// Width of the model's head: 1 for regression.
    pub fn num_labels(&self) -> usize {
        match self.problem {
            Problem::Classification { labels } => labels.len(),
            Problem::Regression { .. } => 1,
            // transformers' question-answering heads: start and end logits per token.
            Problem::Span { .. } => 2,
        }
    }

    /// The head a model needs for this task.
    pub fn head(&self) -> HeadKind {
        match self.problem {
            Problem::Span { .. } => HeadKind::Span,
            _ => HeadKind::Classes(self.num_labels()),
        }
    }

    /// SQuAD's tasks, scored by answers rather than labels.
    pub fn is_qa(&self) -> bool {
        matches!(self.problem, Problem::Span { .. })
    }

    /// `train`, then the dev splits, then the test splits.
    pub fn splits(&self) -> impl Iterator<Item = &'static str> {
        std::iter::once("train")
            .chain(self.dev_splits.iter().copied())
            .chain(self.test_splits.iter().copied())
    }

    pub fn split_path(&self, data_dir: &Path, split: &str) -> PathBuf {
        match self.problem {
            Problem::Span { v2 } => {
                data_dir.join(format!("{split}-{}.json", if v2 { "v2.0" } else { "v1.1" }))
            }
            _ => data_dir.join(self.dir).join(format!("{split}.tsv")),
        }
    }

    /// File name the GLUE leaderboard expects for predictions on `split`: `RTE.tsv`,
    /// `MNLI-m.tsv`, `MNLI-mm.tsv`. Other splits get `<dir>-<split>.tsv`.
    pub fn submission_name(&self, split: &str) -> String {
        let dir = self.dir;
        match split.strip_prefix("test") {
            Some("") => format!("{dir}.tsv"),
            Some("_matched") => format!("{dir}-m.tsv"),
            Some("_mismatched") => format!("{dir}-mm.tsv"),
            _ => format!("{dir}-{split}.tsv"),
        }
    }

    pub(super) fn layout(&self, split: &str) -> Result<Layout> {
        if split == "train" || self.dev_splits.contains(&split) {
            return Ok(self.labelled);
        }
        if self.test_splits.contains(&split) {
            return Ok(self.test);
        }
        let valid: Vec<&str> = self.splits().collect();
        Err(user(format!(
            "task {} has no split `{split}`; valid splits: {}",
            self.dir,
            valid.join(", ")
        )))
    }

    /// Parses a label field; the error message lacks the location, which the caller adds.
    pub(super) fn parse_label(&self, field: &str) -> std::result::Result<Label, String> {
        let value = field.trim();
        match self.problem {
            Problem::Classification { labels } => match labels.iter().position(|l| *l == value) {
                Some(i) => Ok(Label::Class(i as u32)),
                None => Err(format!(
                    "unknown label `{value}` for {} (expected one of: {})",
                    self.dir,
                    labels.join(", ")
                )),
            },
            Problem::Regression { min, max } => match value.parse::<f32>() {
                Ok(v) if (min..=max).contains(&v) => Ok(Label::Score(v)),
                Ok(_) => Err(format!(
                    "{} score `{value}` is outside [{min}, {max}]",
                    self.dir
                )),
                Err(_) => Err(format!("{} score `{value}` is not a number", self.dir)),
            },
            Problem::Span { .. } => Err(format!("{} has answers, not labels", self.dir)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::is_user_error;

    #[test]
    fn lookup_ignores_case_dashes_and_underscores() {
        for (query, name) in [
            ("rte", "rte"),
            ("RTE", "rte"),
            ("sts-b", "stsb"),
            ("STS-B", "stsb"),
            ("stsb", "stsb"),
            ("sst-2", "sst2"),
            ("SST_2", "sst2"),
            ("MNLI", "mnli"),
            ("CoLA", "cola"),
        ] {
            assert_eq!(task(query).unwrap().name, name, "{query}");
        }
        assert_eq!(task("SQuAD-v2").unwrap().name, "squad_v2");
        let err = task("squad3").unwrap_err();
        assert!(is_user_error(&err));
        assert_eq!(
            err.to_string(),
            "unknown task `squad3`; valid tasks: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli, \
             squad, squad_v2, or custom (your own files: --train, --dev)"
        );
    }

    #[test]
    fn registry_is_consistent() {
        assert_eq!(all().len(), 11);
        for t in all() {
            assert_eq!(normalize(t.name), t.name.replace('_', ""));
            assert_eq!(
                normalize(t.dir),
                normalize(t.name),
                "dir and name must look each other up"
            );
            assert!(t.metrics.contains(&t.main_metric), "{}", t.name);
            for layout in [t.labelled, t.test] {
                if let Layout::Positional {
                    fields,
                    text_a,
                    text_b,
                    label,
                } = layout
                {
                    let last = [Some(text_a), text_b, label].into_iter().flatten().max();
                    assert!(last < Some(fields), "{}", t.name);
                }
            }
            let has_label = |l: Layout| match l {
                Layout::Positional { label, .. } => label.is_some(),
                Layout::Named { label, .. } => label.is_some(),
            };
            assert!(has_label(t.labelled) && !has_label(t.test), "{}", t.name);
        }
        let main = |n| task(n).unwrap().main_metric;
        assert_eq!(main("cola"), Metric::Mcc);
        assert_eq!(main("mrpc"), Metric::F1);
        assert_eq!(main("qqp"), Metric::F1);
        assert_eq!(main("stsb"), Metric::Pearson);
        assert_eq!(main("rte"), Metric::Accuracy);
        assert_eq!(task("mnli").unwrap().num_labels(), 3);
        assert_eq!(task("qnli").unwrap().num_labels(), 2);
        assert_eq!(task("stsb").unwrap().num_labels(), 1);
        assert_eq!(task("squad").unwrap().num_labels(), 2);
        assert!(task("squad_v2").unwrap().is_qa() && !task("qnli").unwrap().is_qa());
    }

    #[test]
    fn submission_names() {
        let names: Vec<String> = all()
            .iter()
            .flat_map(|t| t.test_splits.iter().map(|s| t.submission_name(s)))
            .collect();
        assert_eq!(
            names,
            [
                "CoLA.tsv",
                "SST-2.tsv",
                "MRPC.tsv",
                "STS-B.tsv",
                "QQP.tsv",
                "MNLI-m.tsv",
                "MNLI-mm.tsv",
                "QNLI.tsv",
                "RTE.tsv",
                "WNLI.tsv"
            ]
        );
        assert_eq!(task("rte").unwrap().submission_name("dev"), "RTE-dev.tsv");
    }
}
