//! `peft predict`: label new text with a trained run.
//!
//! Input: one example per line, a TAB between the two texts of a pair task. Output: one
//! TSV line per input line, in order and without a header, so `paste input out` lines up:
//! the label's name and its softmax probability, or for regression the score. A SQuAD
//! run reads `question TAB context` lines and writes each answer (empty for none), for
//! squad_v2 with the null score difference its threshold was compared with.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;

use crate::cli::run_args::RunArgs;
use crate::data::dataset::Dataset;
use crate::data::input;
use crate::data::squad::{featurize, Featurized, QaExample};
use crate::data::tasks::{Problem, TaskSpec};
use crate::error::{user, PathContext};
use crate::eval::{logits, spans};
use crate::model::Model;
use crate::run::dir as run_dir;
use crate::tokenize::TextEncoder;
use candle_core::Device;

#[derive(Args, Debug)]
pub struct PredictArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Text file: one example per line; a TAB separates the two texts of pair tasks.
    #[arg(long)]
    pub input: PathBuf,
    /// Write the TSV here instead of stdout.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// cpu, cuda or cuda:N [default: the run's].
    #[arg(long)]
    pub device: Option<String>,
    /// Examples per forward pass [default: the run's eval batch size].
    #[arg(long)]
    pub batch_size: Option<usize>,
}

pub fn run(args: PredictArgs) -> Result<()> {
    if args.batch_size == Some(0) {
        crate::user_bail!("--batch-size must be at least 1");
    }
    // The task decides how many texts a line holds; every line is checked before a model
    // is loaded or anything is written. The input is then streamed in chunks (one pass to
    // check, one to predict): its length costs time, not memory.
    let info = run_dir::RunInfo::load(&args.run.checkpoint)?;
    let spec = info.train.task_spec(info.labels.as_deref())?;
    let examples = count_examples(&args.input, spec)?;

    let mut run = args.run.load()?;
    let device = crate::device::parse(
        args.device
            .as_deref()
            .unwrap_or(&run.info.train.model.device),
    )?;
    let model = run.model(1.0, &device)?;
    let encoder = crate::run::setup::encoder(&run.info.train, &run.model_dir, &run.config)?;
    let batch = args
        .batch_size
        .unwrap_or(run.info.train.output.eval_batch_size);
    let train = &run.info.train;
    let predict = |out: &mut dyn Write| {
        input::for_each_chunk(&args.input, examples, |first, chunk| {
            let lines = chunk
                .iter()
                .enumerate()
                .map(|(k, l)| parse_line(l, &args.input, first + k, spec))
                .collect::<Result<Vec<_>>>()?;
            let text = if spec.is_qa() {
                answers(train, &model, &encoder, &lines, first, batch, &device)?
            } else {
                labels(spec, &model, &encoder, &lines, batch, &device)?
            };
            out.write_all(text.as_bytes())
                .context("cannot write the predictions")
        })
    };
    match &args.output {
        Some(p) => {
            run_dir::replace_file(p, |file, tmp| {
                let mut out = BufWriter::new(file);
                predict(&mut out)?;
                out.flush().path_context("cannot write", tmp)
            })?;
            eprintln!("wrote {examples} predictions to {}", p.display());
        }
        None => {
            let mut out = BufWriter::new(std::io::stdout().lock());
            predict(&mut out)?;
            out.flush().context("cannot write the predictions")?;
        }
    }
    Ok(())
}

/// One `label<TAB>probability` (or score) line per input line.
fn labels(
    spec: &TaskSpec,
    model: &Model,
    encoder: &TextEncoder,
    lines: &[(&str, Option<&str>)],
    batch: usize,
    device: &Device,
) -> Result<String> {
    let inputs = lines
        .iter()
        .map(|(a, b)| encoder.encode(a, *b))
        .collect::<Result<Vec<_>>>()?;
    let rows = logits(model, &inputs, encoder.pad_id(), batch, device)?;
    let mut out = String::new();
    for row in &rows {
        out.push_str(&format_row(spec.problem, row)?);
        out.push('\n');
    }
    Ok(out)
}

/// One answer line per `question<TAB>context` line (`first` the number of the first):
/// the answer (tabs and line breaks as spaces, so lines stay aligned), and for squad_v2 a
/// TAB and the null score difference.
fn answers(
    train: &crate::settings::TrainConfig,
    model: &Model,
    encoder: &TextEncoder,
    lines: &[(&str, Option<&str>)],
    first: usize,
    batch: usize,
    device: &Device,
) -> Result<String> {
    let examples: Vec<QaExample> = lines
        .iter()
        .enumerate()
        .map(|(i, (q, c))| QaExample {
            id: (first + i).to_string(),
            question: q.to_string(),
            context: c.unwrap_or_default().to_string(),
            answers: Vec::new(),
        })
        .collect();
    let Featurized { qa, inputs, .. } = featurize(examples, &encoder.qa()?)?;
    let data = Dataset {
        split: "input".into(),
        ids: Vec::new(),
        labels: Vec::new(),
        inputs,
        qa: None,
    };
    let logits = spans::window_logits(model, &data, encoder.pad_id(), batch, device)?;
    let opts = train.span_options();
    let a = spans::answers(&qa, &logits, opts);
    let mut out = String::new();
    for (i, (_, text)) in a.text.iter().enumerate() {
        out.push_str(&text.replace(['\t', '\n', '\r'], " "));
        if let Some((_, diff)) = a.null_diff.get(i) {
            out.push_str(&format!("\t{diff:.6}"));
        }
        out.push('\n');
    }
    Ok(out)
}

/// How many lines of `path` are examples, every one checked against the task: blank
/// lines at the end are an editor's, not examples; anywhere else they are refused.
fn count_examples(path: &Path, spec: &TaskSpec) -> Result<usize> {
    let (mut used, mut blank) = (0, None);
    input::for_each_line(path, |n, line| {
        if line.trim().is_empty() {
            blank.get_or_insert(n);
            return Ok(true);
        }
        if let Some(b) = blank {
            return Err(user(format!(
                "{}:{b}: empty line; every line is one example",
                path.display()
            )));
        }
        parse_line(line, path, n, spec)?;
        used = n;
        Ok(true)
    })?;
    if used == 0 {
        return Err(user(format!(
            "{}: no examples (the file is empty)",
            path.display()
        )));
    }
    Ok(used)
}

/// Line `n`'s text (and second text), checked against the task.
fn parse_line<'a>(
    line: &'a str,
    path: &Path,
    n: usize,
    spec: &TaskSpec,
) -> Result<(&'a str, Option<&'a str>)> {
    let pair = spec.takes_pairs();
    let want = if pair { 2 } else { 1 };
    let at = || format!("{}:{n}", path.display());
    if line.trim().is_empty() {
        return Err(user(format!(
            "{}: empty line; every line is one example",
            at()
        )));
    }
    let fields: Vec<&str> = line.split('\t').collect();
    if fields.len() != want {
        let shape = if pair {
            "two texts separated by one TAB"
        } else {
            "one text without TABs"
        };
        let n = fields.len();
        let fields = if n == 1 { "field" } else { "fields" };
        return Err(user(format!(
            "{}: {n} {fields}, but task {} takes {shape}",
            at(),
            spec.name
        )));
    }
    // As a data file's texts: a longer one is tokenized whole before truncation.
    for (k, f) in fields.iter().enumerate() {
        input::check_text(f, || format!("{}: text {}", at(), k + 1))?;
    }
    Ok((fields[0], fields.get(1).copied()))
}

/// `label<TAB>probability`, or the score for regression.
fn format_row(problem: Problem, logits: &[f32]) -> Result<String> {
    match problem {
        Problem::Span { .. } => anyhow::bail!("answers are not rows of logits"),
        Problem::Regression { .. } => {
            let s = logits
                .first()
                .ok_or_else(|| anyhow::anyhow!("the head gave no score"))?;
            Ok(format!("{s:.6}"))
        }
        Problem::Classification { labels } => {
            let (best, p) = crate::eval::softmax_top(logits)
                .ok_or_else(|| anyhow::anyhow!("the head gave no logits"))?;
            let name = labels
                .get(best)
                .ok_or_else(|| anyhow::anyhow!("the head has more outputs than labels"))?;
            Ok(format!("{name}\t{p:.6}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::tasks::task;

    /// The examples of an input file holding `text`, as `run` reads them: counted and
    /// checked, then parsed chunk by chunk.
    fn parse_lines(text: &str, spec: &TaskSpec) -> Result<Vec<(String, Option<String>)>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.txt");
        std::fs::write(&path, text).unwrap();
        let n = count_examples(&path, spec)?;
        let mut out = Vec::new();
        input::for_each_chunk(&path, n, |first, chunk| {
            for (k, l) in chunk.iter().enumerate() {
                let (a, b) = parse_line(l, &path, first + k, spec)?;
                out.push((a.to_string(), b.map(String::from)));
            }
            Ok(())
        })?;
        Ok(out)
    }

    fn owned(pairs: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.map(String::from)))
            .collect()
    }

    #[test]
    fn lines_must_match_the_task() {
        let rte = task("rte").unwrap();
        let sst = task("sst2").unwrap();
        assert_eq!(
            parse_lines("a\tb\nc\td\n", rte).unwrap(),
            owned(&[("a", Some("b")), ("c", Some("d"))])
        );
        let err = parse_lines("a\tb\nc\n", rte).unwrap_err().to_string();
        assert!(
            err.contains("in.txt:2") && err.contains("1 field,"),
            "{err}"
        );
        let err = parse_lines("fine\nx\ty\n", sst).unwrap_err().to_string();
        assert!(err.contains("in.txt:2"), "{err}");
        let err = parse_lines("", sst).unwrap_err().to_string();
        assert!(err.contains("in.txt") && err.contains("empty"), "{err}");
        assert_eq!(
            parse_lines("one\r\n\n", sst).unwrap(),
            owned(&[("one", None)])
        );
        let err = parse_lines("a\n\nb\n", sst).unwrap_err().to_string();
        assert!(err.contains("in.txt:2: empty line"), "{err}");
    }

    #[test]
    fn custom_tasks_take_as_many_texts_as_they_trained_on() {
        use crate::data::custom::{spec, CustomProblem};
        let labels = ["neg".to_string(), "pos".to_string()];
        let columns = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let problem = CustomProblem::Classification;
        let pair = spec(problem, Some(&labels), &columns(&["a", "b"])).unwrap();
        assert_eq!(
            parse_lines("x\ty\n", pair).unwrap(),
            owned(&[("x", Some("y"))])
        );
        let err = parse_lines("x\n", pair).unwrap_err().to_string();
        assert!(
            err.contains("in.txt:1") && err.contains("two texts"),
            "{err}"
        );
        let single = spec(problem, Some(&labels), &columns(&["a"])).unwrap();
        assert_eq!(parse_lines("x\n", single).unwrap(), owned(&[("x", None)]));
        assert!(parse_lines("x\ty\n", single).is_err());
        let scores = spec(CustomProblem::Regression, None, &columns(&["a", "b"])).unwrap();
        assert!(parse_lines("x\ty\n", scores).is_ok());
    }
}
