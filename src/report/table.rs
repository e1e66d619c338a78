//! The table of runs `peft report` prints: text, Markdown or CSV.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::runs::{flat_metrics, main_metric, Run};
use crate::run::record::EvalRecord;
use crate::stats::thousands;

/// Column names as a table's header.
pub fn names(h: &[&str]) -> Vec<String> {
    h.iter().map(|s| s.to_string()).collect()
}

/// Rows of cells under a header; `numeric` columns align right.
pub struct Table {
    pub header: Vec<String>,
    pub numeric: Vec<bool>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn text(&self) -> String {
        let widths: Vec<usize> = (0..self.header.len())
            .map(|c| {
                self.rows
                    .iter()
                    .map(|r| r[c].chars().count())
                    .chain([self.header[c].chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: &[String]| {
            let padded: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(c, s)| {
                    if self.numeric[c] {
                        format!("{s:>w$}", w = widths[c])
                    } else {
                        format!("{s:<w$}", w = widths[c])
                    }
                })
                .collect();
            padded.join("  ").trim_end().to_string() + "\n"
        };
        let mut out = line(&self.header);
        for r in &self.rows {
            out.push_str(&line(r));
        }
        out
    }

    pub fn markdown(&self) -> String {
        let mut out = format!("| {} |\n|", self.header.join(" | "));
        for &n in &self.numeric {
            out.push_str(if n { "---:|" } else { "---|" });
        }
        out.push('\n');
        for r in &self.rows {
            let cells: Vec<String> = r.iter().map(|c| c.replace('|', "\\|")).collect();
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        }
        out
    }
}

/// Metrics of one evaluation, ×100, joined as the metric names are: `85.20/85.41`.
fn shown(r: Option<&EvalRecord>) -> (String, String) {
    match r {
        Some(r) => {
            let m = flat_metrics(&r.dev);
            let names: Vec<&str> = m.iter().map(|(k, _)| k.as_str()).collect();
            let values: Vec<String> = m.iter().map(|(_, v)| format!("{:.2}", 100.0 * v)).collect();
            (names.join("/"), values.join("/"))
        }
        None => ("-".into(), "-".into()),
    }
}

fn step(r: Option<&EvalRecord>) -> String {
    r.map_or_else(|| "-".into(), |r| r.step.to_string())
}

/// One row per run, for the text and Markdown formats.
pub fn runs_table(runs: &[Run]) -> Table {
    let header = names(&[
        "run",
        "task",
        "method",
        "seed",
        "trainable",
        "share",
        "metric",
        "best",
        "at step",
        "final",
        "at step",
        "epochs",
        "status",
        "train min",
        "train tok/s",
    ]);
    let numeric = vec![
        false, false, false, true, true, true, false, true, true, true, true, true, false, true,
        true,
    ];
    let rows = runs
        .iter()
        .map(|run| {
            let (names, best) = shown(run.best());
            let (_, last) = shown(run.last());
            let last_rec = run.last();
            vec![
                run.label(),
                run.train.task.clone(),
                run.train.method.clone(),
                run.train.seed.to_string(),
                thousands(run.trainable_params),
                format!("{:.2}%", 100.0 * run.share()),
                names,
                best,
                step(run.best()),
                last,
                step(last_rec),
                last_rec.map_or_else(|| "0".into(), |r| format!("{:.2}", r.epoch)),
                status(run).into(),
                last_rec.map_or_else(|| "-".into(), |r| format!("{:.1}", r.elapsed_s / 60.0)),
                last_rec.map_or_else(|| "-".into(), |r| format!("{:.0}", r.train_tokens_per_s)),
            ]
        })
        .collect();
    Table {
        header,
        numeric,
        rows,
    }
}

fn status(run: &Run) -> &'static str {
    if run.finished {
        "done"
    } else if run.records.is_empty() {
        "no eval yet"
    } else {
        "unfinished"
    }
}

/// Runs grouped by task and method: the median of the final main metric across seeds.
pub fn groups_table(runs: &[Run]) -> Table {
    let rows = medians(runs)
        .into_iter()
        .map(|((task, method), (metric, values))| {
            let s = crate::stats::Spread::of(&values);
            let seeds: Vec<String> = values.iter().map(|v| format!("{:.2}", 100.0 * v)).collect();
            vec![
                task,
                method,
                metric,
                values.len().to_string(),
                s.as_ref()
                    .map_or_else(|| "-".into(), |s| format!("{:.2}", 100.0 * s.median)),
                s.as_ref()
                    .and_then(|s| s.std)
                    .map_or_else(|| "-".into(), |v| format!("{:.2}", 100.0 * v)),
                seeds.join(", "),
            ]
        })
        .collect();
    Table {
        header: names(&[
            "task",
            "method",
            "metric",
            "finished runs",
            "median",
            "std",
            "final per run",
        ]),
        numeric: vec![false, false, false, true, true, true, false],
        rows,
    }
}

/// (task, method) → (main metric's name, its final value in each finished run). A run
/// still training (or stopped) has no final value yet; its last one would skew the median.
pub fn medians(runs: &[Run]) -> BTreeMap<(String, String), (String, Vec<f64>)> {
    let mut out: BTreeMap<(String, String), (String, Vec<f64>)> = BTreeMap::new();
    for run in runs.iter().filter(|r| r.finished) {
        if let Some((metric, v)) = run.last().and_then(|r| main_metric(&run.train, r)) {
            let e = out
                .entry((run.train.task.clone(), run.train.method.clone()))
                .or_insert_with(|| (metric, Vec::new()));
            e.1.push(v);
        }
    }
    out
}

/// CSV in long form, one row per run and metric, numbers as recorded (fractions, seconds):
/// for spreadsheets and pandas rather than for reading.
pub fn csv(runs: &[Run]) -> String {
    let mut out = String::from(
        "run,dir,task,method,seed,lr,trainable_params,total_params,trainable_share,metric,\
         best,best_step,final,final_step,epochs,finished,train_seconds,train_tokens_per_s\n",
    );
    let num = |v: Option<f64>| v.map_or_else(String::new, |v| v.to_string());
    for run in runs {
        let (best, last) = (run.best(), run.last());
        let keys: Vec<String> = last
            .map(|r| flat_metrics(&r.dev).into_iter().map(|(k, _)| k).collect())
            .unwrap_or_else(|| vec![String::new()]);
        for key in keys {
            let value = |r: Option<&EvalRecord>| {
                r.and_then(|r| flat_metrics(&r.dev).into_iter().find(|(k, _)| *k == key))
                    .map(|(_, v)| v)
            };
            let cells = [
                csv_field(&run.label()),
                csv_field(&run.dir.display().to_string()),
                csv_field(&run.train.task),
                csv_field(&run.train.method),
                run.train.seed.to_string(),
                run.train.lr.to_string(),
                run.trainable_params.to_string(),
                run.total_params.to_string(),
                run.share().to_string(),
                csv_field(&key),
                num(value(best)),
                best.map_or_else(String::new, |r| r.step.to_string()),
                num(value(last)),
                last.map_or_else(String::new, |r| r.step.to_string()),
                num(last.map(|r| r.epoch)),
                run.finished.to_string(),
                num(last.map(|r| r.elapsed_s)),
                num(last.map(|r| r.train_tokens_per_s)),
            ];
            let _ = writeln!(out, "{}", cells.join(","));
        }
    }
    out
}

/// RFC 4180: quote a field holding a comma, quote or line break; double its quotes.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_only_what_needs_it() {
        assert_eq!(csv_field("rte"), "rte");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }

    #[test]
    fn text_aligns_numbers_right_and_markdown_escapes_pipes() {
        let t = Table {
            header: names(&["name", "n"]),
            numeric: vec![false, true],
            rows: vec![
                vec!["a|b".into(), "5".into()],
                vec!["c".into(), "100".into()],
            ],
        };
        assert_eq!(t.text(), "name    n\na|b     5\nc     100\n");
        assert!(t.markdown().contains("| a\\|b | 5 |"), "{}", t.markdown());
        assert!(t.markdown().starts_with("| name | n |\n|---|---:|\n"));
    }
}
