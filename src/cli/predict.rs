//! `peft predict`: label new text with a trained run.
//!
//! Input: one example per line, a TAB between the two texts of a pair task. Output: one
//! TSV line per input line, in order and without a header, so `paste input out` lines up:
//! the label's name and its softmax probability, or for regression the score. A SQuAD
//! run reads `question TAB context` lines and writes each answer (empty for none), for
//! squad_v2 with the null score difference its threshold was compared with.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;

use crate::cli::run_args::RunArgs;
use crate::data::dataset::Dataset;
use crate::data::squad::{featurize, Featurized, QaExample};
use crate::data::tasks::{Layout, Problem, TaskSpec};
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
    let text =
        std::fs::read_to_string(&args.input).path_context("cannot read input", &args.input)?;
    // The task decides how many texts a line holds; check them before loading a model.
    let info = run_dir::RunInfo::load(&args.run.checkpoint)?;
    let spec = info.train.task_spec(info.labels.as_deref())?;
    let lines = parse_lines(&text, &args.input, spec)?;

    let mut run = args.run.load()?;
    let device = crate::device::parse(args.device.as_deref().unwrap_or(&run.info.train.device))?;
    let model = run.model(1.0, &device)?;
    let encoder = run.info.train.encoder(&run.model_dir, &run.config)?;
    let batch = args.batch_size.unwrap_or(run.info.train.eval_batch_size);
    let out = if spec.is_qa() {
        answers(&run.info.train, &model, &encoder, &lines, batch, &device)?
    } else {
        labels(spec, &model, &encoder, &lines, batch, &device)?
    };
    match &args.output {
        Some(p) => {
            run_dir::write_atomic(p, out.as_bytes())?;
            eprintln!("wrote {} predictions to {}", lines.len(), p.display());
        }
        None => print!("{out}"),
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

/// One answer line per `question<TAB>context` line: the answer (tabs and line breaks as
/// spaces, so lines stay aligned), and for squad_v2 a TAB and the null score difference.
fn answers(
    train: &crate::settings::TrainConfig,
    model: &Model,
    encoder: &TextEncoder,
    lines: &[(&str, Option<&str>)],
    batch: usize,
    device: &Device,
) -> Result<String> {
    let examples: Vec<QaExample> = lines
        .iter()
        .enumerate()
        .map(|(i, (q, c))| QaExample {
            id: (i + 1).to_string(),
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

fn pair_task(spec: &TaskSpec) -> bool {
    match spec.labelled {
        Layout::Positional { text_b, .. } => text_b.is_some(),
        Layout::Named { text_b, .. } => text_b.is_some(),
    }
}

/// Each line's text (and second text), checked against the task.
fn parse_lines<'a>(
    text: &'a str,
    path: &Path,
    spec: &TaskSpec,
) -> Result<Vec<(&'a str, Option<&'a str>)>> {
    let pair = pair_task(spec);
    let want = if pair { 2 } else { 1 };
    let mut out = Vec::new();
    // Blank lines at the end are an editor's, not examples.
    let lines: Vec<&str> = text.lines().collect();
    let used = lines
        .iter()
        .rposition(|l| !l.trim().is_empty())
        .map_or(0, |i| i + 1);
    for (i, line) in lines[..used].iter().enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let at = || format!("{}:{}", path.display(), i + 1);
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
            crate::data::input::check_text(f, || format!("{}: text {}", at(), k + 1))?;
        }
        out.push((fields[0], fields.get(1).copied()));
    }
    if out.is_empty() {
        return Err(user(format!(
            "{}: no examples (the file is empty)",
            path.display()
        )));
    }
    Ok(out)
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

    #[test]
    fn lines_must_match_the_task() {
        let rte = task("rte").unwrap();
        let sst = task("sst2").unwrap();
        let p = Path::new("in.txt");
        assert_eq!(
            parse_lines("a\tb\nc\td\n", p, rte).unwrap(),
            vec![("a", Some("b")), ("c", Some("d"))]
        );
        let err = parse_lines("a\tb\nc\n", p, rte).unwrap_err().to_string();
        assert!(
            err.contains("in.txt:2") && err.contains("1 field,"),
            "{err}"
        );
        let err = parse_lines("fine\nx\ty\n", p, sst).unwrap_err().to_string();
        assert!(err.contains("in.txt:2"), "{err}");
        let err = parse_lines("", p, sst).unwrap_err().to_string();
        assert!(err.contains("in.txt") && err.contains("empty"), "{err}");
        assert_eq!(
            parse_lines("one\r\n\n", p, sst).unwrap(),
            vec![("one", None)]
        );
        let err = parse_lines("a\n\nb\n", p, sst).unwrap_err().to_string();
        assert!(err.contains("in.txt:2: empty line"), "{err}");
    }

    #[test]
    fn custom_tasks_take_as_many_texts_as_they_trained_on() {
        use crate::data::custom::{spec, CustomProblem};
        let p = Path::new("in.txt");
        let labels = ["neg".to_string(), "pos".to_string()];
        let columns = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let problem = CustomProblem::Classification;
        let pair = spec(problem, Some(&labels), &columns(&["a", "b"])).unwrap();
        assert_eq!(
            parse_lines("x\ty\n", p, pair).unwrap(),
            vec![("x", Some("y"))]
        );
        let err = parse_lines("x\n", p, pair).unwrap_err().to_string();
        assert!(
            err.contains("in.txt:1") && err.contains("two texts"),
            "{err}"
        );
        let single = spec(problem, Some(&labels), &columns(&["a"])).unwrap();
        assert_eq!(parse_lines("x\n", p, single).unwrap(), vec![("x", None)]);
        assert!(parse_lines("x\ty\n", p, single).is_err());
        let scores = spec(CustomProblem::Regression, None, &columns(&["a", "b"])).unwrap();
        assert!(parse_lines("x\ty\n", p, scores).is_ok());
    }
}
