//! `--task custom`: the user's own CSV, TSV or JSON Lines files, with named text and
//! label columns.
//!
//! CSV honours quotes (RFC 4180); TSV, like GLUE's files, splits on tabs and nothing
//! else, so a stray `"` in a text stays a character. Class labels are the distinct
//! values of the training file's label column, as text, sorted (numerically when all
//! are integers, so `2` comes before `10`); the run directory keeps them so that
//! `peft eval` maps ids back to the same names.

use std::io::BufReader;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::input;
use super::tasks::{Example, Label, Layout, Metric, Problem, TaskSpec};
use crate::error::user;

/// The task name that selects this reader.
pub const CUSTOM: &str = "custom";

/// The most class labels a custom classification task may have: its head has one row per
/// label, so a training file of a million distinct values would build a million-row head
/// (and a softmax as wide). Text classification sets have at most a few thousand classes;
/// a column with more distinct values is an id or a score, not a class.
pub const MAX_LABELS: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CustomProblem {
    Classification,
    Regression,
}

/// The files and columns of a custom task.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomData {
    pub train: PathBuf,
    pub dev: PathBuf,
    /// One column (single texts) or two (pairs).
    pub text_columns: Vec<String>,
    pub label_column: String,
    pub problem: CustomProblem,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Csv,
    Tsv,
    Jsonl,
}

/// The format a file's extension names.
pub fn check_extension(path: &Path) -> Result<()> {
    format(path).map(|_| ())
}

fn format(path: &Path) -> Result<Format> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("csv") => Ok(Format::Csv),
        Some("tsv") => Ok(Format::Tsv),
        Some("jsonl") => Ok(Format::Jsonl),
        _ => Err(user(format!(
            "{}: unknown file type; custom data is .csv, .tsv or .jsonl (JSON Lines)",
            path.display()
        ))),
    }
}

/// One data row as read: where it was, its texts, its label as written.
struct Raw {
    line: usize,
    texts: Vec<String>,
    label: String,
}

impl CustomData {
    /// The class labels of the training file, in id order; None for regression.
    pub fn labels(&self) -> Result<Option<Vec<String>>> {
        if self.problem == CustomProblem::Regression {
            return Ok(None);
        }
        let mut labels: Vec<String> = self
            .read_raw(&self.train)?
            .into_iter()
            .map(|r| r.label)
            .collect();
        labels.sort();
        labels.dedup();
        let numbers: Option<Vec<i64>> = labels.iter().map(|l| l.parse().ok()).collect();
        if let Some(mut n) = numbers {
            n.sort();
            labels = n.iter().map(i64::to_string).collect();
        }
        if labels.len() > MAX_LABELS {
            crate::user_bail!(
                "{}: column `{}` holds {} distinct labels; a classification head has one row \
                 per label, and takes at most {MAX_LABELS} (text classification sets have at \
                 most a few thousand classes): is it a score? (pass --problem regression)",
                self.train.display(),
                self.label_column,
                labels.len()
            );
        }
        if labels.len() < 2 {
            crate::user_bail!(
                "{}: column `{}` holds only the label `{}`; classification needs two or more \
                 (or pass --problem regression)",
                self.train.display(),
                self.label_column,
                labels.join("")
            );
        }
        Ok(Some(labels))
    }

    /// The examples of `train` or `dev`, labels mapped through `spec`'s.
    pub fn read_split(&self, spec: &TaskSpec, split: &str) -> Result<Vec<Example>> {
        let path = match split {
            "train" => &self.train,
            "dev" => &self.dev,
            _ => crate::user_bail!("custom data has the splits train and dev, not `{split}`"),
        };
        let rows = self.read_raw(path)?;
        let mut out = Vec::with_capacity(rows.len());
        for (i, raw) in rows.into_iter().enumerate() {
            let at = |msg: String| user(format!("{}:{}: {msg}", path.display(), raw.line));
            let label = match spec.problem {
                Problem::Span { .. } => anyhow::bail!("custom data has no answers"),
                Problem::Classification { labels } => {
                    match labels.iter().position(|l| *l == raw.label) {
                        Some(id) => Label::Class(id as u32),
                        None => {
                            return Err(at(format!(
                                "label `{}` does not occur in the training file {} \
                                 (labels there: {})",
                                raw.label,
                                self.train.display(),
                                labels.join(", ")
                            )))
                        }
                    }
                }
                Problem::Regression { .. } => match raw.label.parse::<f32>() {
                    Ok(v) if v.is_finite() => Label::Score(v),
                    _ => {
                        return Err(at(format!(
                            "column `{}`: `{}` is not a number",
                            self.label_column, raw.label
                        )))
                    }
                },
            };
            let mut texts = raw.texts.into_iter();
            out.push(Example {
                id: i.to_string(),
                text_a: texts.next().unwrap_or_default(),
                text_b: texts.next(),
                label,
            });
        }
        Ok(out)
    }

    fn read_raw(&self, path: &Path) -> Result<Vec<Raw>> {
        let rows = match format(path)? {
            Format::Csv => self.read_delimited(path, b',', true)?,
            Format::Tsv => self.read_delimited(path, b'\t', false)?,
            Format::Jsonl => self.read_jsonl(path)?,
        };
        if let Some(r) = rows.iter().find(|r| r.label.is_empty()) {
            crate::user_bail!(
                "{}:{}: column `{}` is empty",
                path.display(),
                r.line,
                self.label_column
            );
        }
        Ok(rows)
    }

    fn wanted(&self) -> Vec<&str> {
        self.text_columns
            .iter()
            .map(String::as_str)
            .chain(std::iter::once(self.label_column.as_str()))
            .collect()
    }

    fn read_delimited(&self, path: &Path, delimiter: u8, quoting: bool) -> Result<Vec<Raw>> {
        let file = input::open(path)?;
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .quoting(quoting)
            .has_headers(true)
            .from_reader(file);
        let csv_error = |e: csv::Error| {
            let line = e
                .position()
                .map(|p| format!(":{}", p.line()))
                .unwrap_or_default();
            let why = match e.kind() {
                csv::ErrorKind::UnequalLengths {
                    expected_len, len, ..
                } => {
                    format!("expected {expected_len} fields as in the header, found {len}")
                }
                csv::ErrorKind::Utf8 { err, .. } => format!(
                    "not valid UTF-8 in field {} at byte {}",
                    err.field() + 1,
                    err.valid_up_to() + 1
                ),
                _ => e.to_string(),
            };
            user(format!("{}{line}: {why}", path.display()))
        };
        let header: Vec<String> = reader
            .headers()
            .map_err(csv_error)?
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let h = if i == 0 {
                    h.trim_start_matches('\u{feff}')
                } else {
                    h
                };
                h.trim().to_string()
            })
            .collect();
        if header.iter().all(String::is_empty) {
            crate::user_bail!("{}: file is empty", path.display());
        }
        let wanted = self.wanted();
        let absent: Vec<String> = wanted
            .iter()
            .filter(|w| !header.iter().any(|h| h == *w))
            .map(|w| format!("`{w}`"))
            .collect();
        if !absent.is_empty() {
            crate::user_bail!(
                "{}:1: no column(s) {}; columns present: {}",
                path.display(),
                absent.join(", "),
                header.join(", ")
            );
        }
        let cols: Vec<usize> = wanted
            .iter()
            .filter_map(|w| header.iter().position(|h| h == *w))
            .collect();
        let Some((&label_col, text_cols)) = cols.split_last() else {
            return Ok(Vec::new());
        };
        let mut rows = Vec::new();
        for record in reader.records() {
            let record = record.map_err(csv_error)?;
            let line = record.position().map_or(0, |p| p.line() as usize);
            let field = |i: usize| record.get(i).unwrap_or_default().to_string();
            for (&i, name) in text_cols.iter().zip(&self.text_columns) {
                input::check_text(record.get(i).unwrap_or_default(), || {
                    format!("{}:{line}: column `{name}`", path.display())
                })?;
            }
            rows.push(Raw {
                line,
                texts: text_cols.iter().map(|&i| field(i)).collect(),
                label: field(label_col).trim().to_string(),
            });
        }
        if rows.is_empty() {
            crate::user_bail!("{}: file has a header but no data rows", path.display());
        }
        Ok(rows)
    }

    fn read_jsonl(&self, path: &Path) -> Result<Vec<Raw>> {
        let mut reader = BufReader::new(input::open(path)?);
        let mut buf = Vec::new();
        let mut rows = Vec::new();
        let wanted = self.wanted();
        for line in 1.. {
            let n = input::read_line(&mut reader, &mut buf, path, line)?;
            if n == 0 {
                break;
            }
            let at = |msg: String| user(format!("{}:{line}: {msg}", path.display()));
            let text = std::str::from_utf8(&buf).map_err(|e| {
                at(format!(
                    "not valid UTF-8 at byte {} of the line",
                    e.valid_up_to() + 1
                ))
            })?;
            let text = text.trim_start_matches('\u{feff}').trim();
            if text.is_empty() {
                continue;
            }
            let value: serde_json::Value =
                serde_json::from_str(text).map_err(|e| at(format!("not valid JSON: {e}")))?;
            let Some(obj) = value.as_object() else {
                return Err(at("expected a JSON object".into()));
            };
            let absent: Vec<String> = wanted
                .iter()
                .filter(|w| !obj.contains_key(**w))
                .map(|w| format!("`{w}`"))
                .collect();
            if !absent.is_empty() {
                let present: Vec<&str> = obj.keys().map(String::as_str).collect();
                return Err(at(format!(
                    "no key(s) {}; keys present: {}",
                    absent.join(", "),
                    present.join(", ")
                )));
            }
            let mut texts = Vec::new();
            for col in &self.text_columns {
                match &obj[col.as_str()] {
                    serde_json::Value::String(s) => {
                        input::check_text(s, || format!("{}:{line}: key `{col}`", path.display()))?;
                        texts.push(s.clone())
                    }
                    other => {
                        return Err(at(format!("key `{col}`: expected a string, found {other}")))
                    }
                }
            }
            let label = match &obj[self.label_column.as_str()] {
                serde_json::Value::String(s) => s.trim().to_string(),
                v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_)) => v.to_string(),
                other => {
                    return Err(at(format!(
                        "key `{}`: expected a string or a number, found {other}",
                        self.label_column
                    )))
                }
            };
            rows.push(Raw { line, texts, label });
        }
        if rows.is_empty() {
            crate::user_bail!("{}: file is empty", path.display());
        }
        Ok(rows)
    }
}

/// The task of a custom run, with its text columns (one, or two for pairs). The
/// registry's tasks are `'static`; a custom task is built once per command from its
/// labels and columns, so it is leaked to live as long, which keeps every consumer of
/// [`TaskSpec`] unchanged.
pub fn spec(
    problem: CustomProblem,
    labels: Option<&[String]>,
    text_columns: &[String],
) -> Result<&'static TaskSpec> {
    let (problem, metrics, main_metric): (Problem, &'static [Metric], Metric) = match problem {
        CustomProblem::Classification => {
            let Some(labels) = labels else {
                crate::user_bail!("the run does not record its class labels");
            };
            // What the training file gave (`labels` refuses more): a run's config.json
            // that records more would build as many head rows.
            if labels.len() > MAX_LABELS {
                crate::user_bail!(
                    "`labels`: {} class labels; a classification head takes at most \
                     {MAX_LABELS}",
                    labels.len()
                );
            }
            let names: Vec<&'static str> = labels
                .iter()
                .map(|l| &*Box::leak(l.clone().into_boxed_str()))
                .collect();
            (
                Problem::Classification {
                    labels: Box::leak(names.into_boxed_slice()),
                },
                &[Metric::Accuracy, Metric::MacroF1],
                Metric::Accuracy,
            )
        }
        CustomProblem::Regression => (
            Problem::Regression {
                min: f32::NEG_INFINITY,
                max: f32::INFINITY,
            },
            &[Metric::Pearson, Metric::Spearman],
            Metric::Pearson,
        ),
    };
    // The reader takes its columns from the config; the layout records them so that
    // what asks whether the task is one of pairs (`peft predict`) gets the answer.
    let leak = |s: &String| &*Box::leak(s.clone().into_boxed_str());
    let columns = Layout::Named {
        id: None,
        text_a: text_columns.first().map_or("", leak),
        text_b: text_columns.get(1).map(leak),
        label: None,
    };
    Ok(Box::leak(Box::new(TaskSpec {
        name: CUSTOM,
        dir: CUSTOM,
        problem,
        metrics,
        main_metric,
        dev_splits: &["dev"],
        test_splits: &[],
        labelled: columns,
        test: columns,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::is_user_error;

    struct Files(tempfile::TempDir);

    impl Files {
        fn new() -> Self {
            Files(tempfile::tempdir().unwrap())
        }

        fn write(&self, name: &str, text: impl AsRef<[u8]>) -> PathBuf {
            let p = self.0.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        }

        fn data(
            &self,
            train: &str,
            dev: &str,
            texts: &[&str],
            problem: CustomProblem,
        ) -> CustomData {
            CustomData {
                train: self.0.path().join(train),
                dev: self.0.path().join(dev),
                text_columns: texts.iter().map(|s| s.to_string()).collect(),
                label_column: "y".into(),
                problem,
            }
        }

        /// The error message with the temp dir removed.
        fn error(&self, r: Result<impl std::fmt::Debug>) -> String {
            let err = r.unwrap_err();
            assert!(is_user_error(&err), "{err}");
            err.to_string()
                .replace(&format!("{}/", self.0.path().display()), "")
        }
    }

    use crate::data::tasks::example as ex;

    use CustomProblem::{Classification, Regression};

    #[test]
    fn csv_tsv_and_jsonl_give_the_same_examples() {
        let f = Files::new();
        f.write(
            "t.csv",
            "\u{feff}a,b,y\n\"x, \"\"q\"\"\",second,pos\nplain,\"two\nlines\",neg\n",
        );
        f.write(
            "t.tsv",
            "a\tb\ty\nx, \"q\"\tsecond\tpos\nplain\ttwo\\nlines\tneg\n",
        );
        f.write(
            "t.jsonl",
            "{\"a\": \"x, \\\"q\\\"\", \"b\": \"second\", \"y\": \"pos\", \"extra\": 1}\n\n\
             {\"a\": \"plain\", \"b\": \"two\\nlines\", \"y\": \"neg\"}\n",
        );
        for name in ["t.csv", "t.tsv", "t.jsonl"] {
            let d = f.data(name, name, &["a", "b"], Classification);
            let labels = d.labels().unwrap().unwrap();
            assert_eq!(labels, ["neg", "pos"]);
            let spec = spec(Classification, Some(&labels), &d.text_columns).unwrap();
            let got = d.read_split(spec, "dev").unwrap();
            let second = if name == "t.tsv" {
                "two\\nlines"
            } else {
                "two\nlines"
            };
            assert_eq!(
                got,
                [
                    ex("0", "x, \"q\"", Some("second"), Label::Class(1)),
                    ex("1", "plain", Some(second), Label::Class(0)),
                ],
                "{name}"
            );
        }
    }

    #[test]
    fn labels_sort_numerically_when_all_are_integers() {
        let f = Files::new();
        f.write("n.csv", "a,y\nx,10\nx,2\nx,2\nx,1\n");
        f.write(
            "j.jsonl",
            "{\"a\":\"x\",\"y\":10}\n{\"a\":\"x\",\"y\":\"2\"}\n",
        );
        let d = f.data("n.csv", "n.csv", &["a"], Classification);
        assert_eq!(d.labels().unwrap().unwrap(), ["1", "2", "10"]);
        let d = f.data("j.jsonl", "j.jsonl", &["a"], Classification);
        assert_eq!(d.labels().unwrap().unwrap(), ["2", "10"]);
    }

    #[test]
    fn at_most_ten_thousand_labels() {
        let f = Files::new();
        let rows = |n: usize| -> String {
            let body: String = (0..n).map(|i| format!("x\tc{i}\n")).collect();
            format!("a\ty\n{body}")
        };
        f.write("ok.tsv", rows(MAX_LABELS));
        f.write("many.tsv", rows(MAX_LABELS + 1));
        let d = f.data("ok.tsv", "ok.tsv", &["a"], Classification);
        let labels = d.labels().unwrap().unwrap();
        assert_eq!(labels.len(), MAX_LABELS);
        assert!(spec(Classification, Some(&labels), &d.text_columns).is_ok());
        let d = f.data("many.tsv", "ok.tsv", &["a"], Classification);
        assert_eq!(
            f.error(d.labels()),
            "many.tsv: column `y` holds 10001 distinct labels; a classification head has one \
             row per label, and takes at most 10000 (text classification sets have at most a \
             few thousand classes): is it a score? (pass --problem regression)"
        );
        let many: Vec<String> = (0..=MAX_LABELS).map(|i| i.to_string()).collect();
        let err = spec(Classification, Some(&many), &d.text_columns).unwrap_err();
        assert!(err.to_string().contains("10001 class labels"), "{err}");
    }

    #[test]
    fn regression_scores() {
        let f = Files::new();
        f.write("r.tsv", "a\ty\nx\t0.5\ny\t-2\n");
        f.write("bad.tsv", "a\ty\nx\t0.5\ny\tlots\n");
        let d = f.data("r.tsv", "r.tsv", &["a"], Regression);
        assert_eq!(d.labels().unwrap(), None);
        let spec = spec(Regression, None, &d.text_columns).unwrap();
        let got = d.read_split(spec, "train").unwrap();
        assert_eq!(got[1], ex("1", "y", None, Label::Score(-2.0)));
        let d = f.data("r.tsv", "bad.tsv", &["a"], Regression);
        assert_eq!(
            f.error(d.read_split(spec, "dev")),
            "bad.tsv:3: column `y`: `lots` is not a number"
        );
    }

    #[test]
    fn bad_input_names_file_line_and_column() {
        let f = Files::new();
        f.write("train.csv", "text,y\na,pos\nb,neg\n");
        f.write("dev.csv", "text,y\na,pos\nb,maybe\n");
        f.write("cols.csv", "sentence,label\na,pos\n");
        f.write("ragged.csv", "text,y\na,pos\nb,neg,extra\n");
        f.write("empty.csv", "");
        f.write("header.csv", "text,y\n");
        f.write("one.csv", "text,y\na,pos\nb,pos\n");
        f.write("blank.tsv", "text\ty\na\t\n");
        f.write("utf8.tsv", b"text\ty\na\xff\tpos\n");
        f.write(
            "bad.jsonl",
            "{\"text\": \"a\", \"y\": \"pos\"}\n{\"text\": \"a\"\n",
        );
        f.write("keys.jsonl", "{\"text\": \"a\", \"label\": \"pos\"}\n");
        f.write("kind.jsonl", "{\"text\": 3, \"y\": \"pos\"}\n");
        f.write("data.txt", "text,y\n");
        let labels = vec!["neg".to_string(), "pos".to_string()];
        let spec = spec(Classification, Some(&labels), &["text".to_string()]).unwrap();
        let read = |train: &str, dev: &str| {
            let d = f.data(train, dev, &["text"], Classification);
            d.labels().and_then(|_| d.read_split(spec, "dev"))
        };
        assert_eq!(
            f.error(read("train.csv", "dev.csv")),
            "dev.csv:3: label `maybe` does not occur in the training file train.csv \
             (labels there: neg, pos)"
        );
        assert_eq!(
            f.error(read("cols.csv", "dev.csv")),
            "cols.csv:1: no column(s) `text`, `y`; columns present: sentence, label"
        );
        assert_eq!(
            f.error(read("ragged.csv", "dev.csv")),
            "ragged.csv:3: expected 2 fields as in the header, found 3"
        );
        assert_eq!(
            f.error(read("empty.csv", "dev.csv")),
            "empty.csv: file is empty"
        );
        assert_eq!(
            f.error(read("header.csv", "dev.csv")),
            "header.csv: file has a header but no data rows"
        );
        assert_eq!(
            f.error(read("one.csv", "dev.csv")),
            "one.csv: column `y` holds only the label `pos`; classification needs two or \
             more (or pass --problem regression)"
        );
        assert_eq!(
            f.error(read("blank.tsv", "dev.csv")),
            "blank.tsv:2: column `y` is empty"
        );
        assert_eq!(
            f.error(read("utf8.tsv", "dev.csv")),
            "utf8.tsv:2: not valid UTF-8 in field 1 at byte 2"
        );
        let json = f.error(read("bad.jsonl", "dev.csv"));
        assert!(json.starts_with("bad.jsonl:2: not valid JSON: "), "{json}");
        assert_eq!(
            f.error(read("keys.jsonl", "dev.csv")),
            "keys.jsonl:1: no key(s) `y`; keys present: label, text"
        );
        assert_eq!(
            f.error(read("kind.jsonl", "dev.csv")),
            "kind.jsonl:1: key `text`: expected a string, found 3"
        );
        assert_eq!(
            f.error(read("data.txt", "dev.csv")),
            "data.txt: unknown file type; custom data is .csv, .tsv or .jsonl (JSON Lines)"
        );
        let missing = f.error(read("gone.csv", "dev.csv"));
        assert!(missing.starts_with("cannot open gone.csv: "), "{missing}");
    }
}
