//! `peft eval`: rebuild a run's model from its base weights plus the trained tensors and
//! score it on a split; for a test split, write the GLUE submission file.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};

use crate::data::tasks::{task, Problem};
use crate::error::user;
use crate::metrics::{evaluate, Predictions};
use crate::model::{drop_mismatched_head, load, read_checkpoint, Model, ParamStore};
use crate::run_dir::{self, RunInfo};
use crate::tokenize::TextEncoder;
use crate::train::dataset::{predict, Dataset};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Which {
    /// The tensors of the best evaluation (trainable.safetensors).
    Best,
    /// The tensors at the end of training (last.safetensors).
    Last,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A run directory written by `peft train`.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// dev, test, train, or a split's own name (dev_matched, test_mismatched, ...).
    #[arg(long, default_value = "dev")]
    pub split: String,
    /// Which saved state to score.
    #[arg(long, value_enum, default_value_t = Which::Best)]
    pub which: Which,
    /// Base model directory, if it moved since training [default: the run's].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// GLUE data directory [default: the run's].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// cpu, cuda or cuda:N [default: the run's].
    #[arg(long)]
    pub device: Option<String>,
    /// Where to write the submission file for a test split [default: in the run directory].
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Print metrics as one JSON object per split.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let info = RunInfo::load(&args.checkpoint)?;
    let model_dir = args.model.clone().unwrap_or_else(|| info.base.path.clone());
    let weights_file = load::weight_file(&model_dir)?;
    let sha = run_dir::sha256_file(&weights_file)?;
    if sha != info.base.sha256 {
        return Err(user(format!(
            "{} was trained on another base model: {} has sha256 {sha}, the run recorded {}",
            args.checkpoint.display(),
            weights_file.display(),
            info.base.sha256
        )));
    }
    let (mcfg, mut weights) = read_checkpoint(&model_dir)?;
    // The run saved its own head; the base's may be for another label set.
    drop_mismatched_head(&mut weights, info.num_labels);
    let file = args.checkpoint.join(match args.which {
        Which::Best => run_dir::BEST,
        Which::Last => run_dir::LAST,
    });
    for (name, t) in run_dir::load_tensors(&file)? {
        if let Some(base) = weights.get(&name) {
            if base.dims() != t.dims() {
                return Err(user(format!(
                    "{}: tensor `{name}` has shape {:?}, the base model {:?}",
                    file.display(),
                    t.dims(),
                    base.dims()
                )));
            }
        }
        weights.insert(name, t);
    }
    let device = crate::device::parse(args.device.as_deref().unwrap_or(&info.train.device))?;
    let store = ParamStore::frozen(weights, device.clone());
    let model = Model::load_with_adapters(
        &store,
        &mcfg,
        Some(info.num_labels),
        info.train.adapter().as_ref(),
    )?;
    if let Some(name) = store.created().first() {
        return Err(user(format!(
            "{} holds no tensor `{name}`: is it a run of this model?",
            file.display()
        )));
    }
    let spec = task(&info.train.task)?;
    let encoder = TextEncoder::load(&model_dir, &mcfg, info.train.max_seq_len)?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| info.train.data_dir.clone());
    let splits: Vec<String> = match args.split.as_str() {
        "dev" => spec.dev_splits.iter().map(|s| s.to_string()).collect(),
        "test" => spec.test_splits.iter().map(|s| s.to_string()).collect(),
        other => vec![other.to_string()],
    };
    for split in splits {
        let data = Dataset::load(spec, &data_dir, &split, &encoder)?;
        let preds = predict(
            &model,
            &data,
            encoder.pad_id(),
            info.train.eval_batch_size,
            &device,
        )?;
        if split.starts_with("test") {
            let path = match &args.output {
                Some(p) if p.is_dir() => p.join(spec.submission_name(&split)),
                Some(p) => p.clone(),
                None => args.checkpoint.join(spec.submission_name(&split)),
            };
            run_dir::write_atomic(&path, submission(spec.problem, &data, &preds).as_bytes())?;
            println!(
                "{split}: wrote {} predictions to {}",
                data.len(),
                path.display()
            );
            continue;
        }
        let metrics = evaluate(spec, &preds, &data.labels)?;
        if args.json {
            println!(
                "{}",
                serde_json::json!({ "split": split, "metrics": metrics })
            );
        } else {
            let shown: Vec<String> = metrics
                .iter()
                .map(|(k, v)| format!("{k} {:.2}", 100.0 * v))
                .collect();
            println!("{split}: {}", shown.join(" "));
        }
    }
    Ok(())
}

/// GLUE leaderboard format: `index<TAB>prediction`, labels by name, STS-B scores in [0, 5].
fn submission(problem: Problem, data: &Dataset, preds: &Predictions) -> String {
    let mut out = String::from("index\tprediction\n");
    for (i, id) in data.ids.iter().enumerate() {
        let _ = match (problem, preds) {
            (Problem::Classification { labels }, Predictions::Classes(c)) => {
                writeln!(
                    out,
                    "{id}\t{}",
                    labels.get(c[i] as usize).copied().unwrap_or("?")
                )
            }
            (Problem::Regression { min, max }, Predictions::Scores(s)) => {
                writeln!(out, "{id}\t{:.3}", s[i].clamp(min, max))
            }
            _ => Ok(()),
        };
    }
    out
}
