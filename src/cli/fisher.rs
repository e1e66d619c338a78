//! `peft fisher`: the diagonal Fisher information of every parameter on a task's training
//! data, and which components carry the most of it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use candle_core::Tensor;
use clap::Args;

use crate::components::{aggregate, Table};
use crate::data::dataset::Dataset;
use crate::data::{task, Source, CUSTOM};
use crate::error::PathContext;
use crate::fisher::{estimate, global, totals, Estimator, FisherOptions};
use crate::model::{fit_head, read_checkpoint};
use crate::run::dir as run_dir;
use crate::tokenize::TextEncoder;
use crate::train::session::Trainable;

#[derive(Args, Debug)]
pub struct FisherArgs {
    /// Base model: a directory in Hugging Face layout, or a hub id.
    #[arg(long)]
    pub model: PathBuf,
    /// Branch, tag or commit of a hub --model [default: main].
    #[arg(long)]
    pub revision: Option<String>,
    /// GLUE data in the official glue_data/<TASK>/ layout [default: $PEFT_GLUE_DIR, else
    /// nyu-mll/glue from the Hugging Face hub].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// One task (cola, rte, ...).
    #[arg(long, conflicts_with = "tasks")]
    pub task: Option<String>,
    /// Several tasks, comma-separated; with --global, one ranking averaged over them.
    #[arg(long, value_delimiter = ',')]
    pub tasks: Vec<String>,
    /// Average the tasks' Fishers, each normalised to sum 1, into one global Fisher.
    #[arg(long)]
    pub global: bool,
    /// Training examples to use, a seeded random subset [default: all].
    #[arg(long)]
    pub samples: Option<usize>,
    /// Child-Tuning's cheaper estimate: squared batch-mean gradients over batches of B
    /// (dropout on, each tensor's gradient clipped to norm 1) instead of per-example ones.
    #[arg(long, value_name = "B")]
    pub batch_mean: Option<usize>,
    #[arg(long, default_value_t = 128)]
    pub max_seq_len: usize,
    /// Seeds the sample, the head's initialisation and (with --batch-mean) dropout.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Output directory [default: fisher/<task> or fisher/global-<tasks>].
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn run(args: FisherArgs) -> Result<()> {
    let tasks: Vec<String> = match (&args.task, args.tasks.is_empty()) {
        (Some(t), _) => vec![t.clone()],
        (None, false) => args.tasks.clone(),
        (None, true) => crate::user_bail!("pass --task NAME or --tasks a,b,c"),
    };
    if tasks.len() > 1 && !args.global {
        crate::user_bail!(
            "--tasks with several tasks needs --global (one Fisher averaged over them)"
        );
    }
    // SQuAD reads --data-dir or the hub; $PEFT_GLUE_DIR is GLUE's.
    let source_of = |qa: bool| match qa {
        true => args
            .data_dir
            .clone()
            .map_or(Source::GlueHub, Source::GlueDir),
        false => Source::glue(args.data_dir.clone()),
    };
    let device = crate::device::parse(&args.device)?;
    // No example gives no estimate: an empty fisher.safetensors that ranks nothing.
    if args.samples == Some(0) {
        crate::user_bail!("--samples 0: the Fisher needs at least 1 training example");
    }
    let estimator = match args.batch_mean {
        Some(0) => crate::user_bail!("--batch-mean 0: a batch needs at least 1 example"),
        Some(b) => Estimator::BatchMean { batch: b },
        None => Estimator::PerExample,
    };
    let opts = FisherOptions {
        samples: args.samples,
        estimator,
        seed: args.seed,
    };
    let model_dir = crate::model::hub::resolve(&args.model, args.revision.as_deref())?;
    let (cfg, base) = read_checkpoint(&model_dir)?;
    let encoder = TextEncoder::load(&model_dir, &cfg, args.max_seq_len)?;

    let mut per_task = Vec::new();
    let mut names = Vec::new();
    for t in &tasks {
        if t.eq_ignore_ascii_case(CUSTOM) {
            crate::user_bail!(
                "peft fisher ranks on GLUE tasks; for custom data, `peft train --task custom \
                 --method fisher-layernorm` estimates the Fisher on its --train file"
            );
        }
        let spec = task(t)?;
        let data = Dataset::load(spec, &source_of(spec.is_qa()), "train", &encoder)?;
        let mut weights = base.clone();
        fit_head(&mut weights, spec.head());
        let t = Trainable::everything(weights, &cfg, Some(spec.head()), &device, args.seed)?;
        let n = opts.samples.unwrap_or(data.len()).min(data.len());
        let start = Instant::now();
        let f = estimate(&t.model, &t.store, &data, encoder.pad_id(), opts, &device)?;
        let secs = start.elapsed().as_secs_f64();
        eprintln!(
            "{}: Fisher from {n} training examples ({:?}) in {secs:.1}s",
            spec.name, estimator
        );
        names.push(spec.name.to_string());
        per_task.push(f);
    }
    let fisher = if per_task.len() == 1 {
        per_task.remove(0)
    } else {
        global(&per_task)?
    };

    let label = if names.len() == 1 {
        names[0].clone()
    } else {
        format!("global-{}", names.join("-"))
    };
    let out = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from("fisher").join(&label));
    std::fs::create_dir_all(&out).path_context("cannot create", &out)?;
    let tensors: HashMap<String, Tensor> =
        fisher.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    run_dir::save_tensors(&out.join("fisher.safetensors"), &tensors)?;
    let table = aggregate(&totals(&fisher)?);
    let json = components_json(&table, &label, &args, n_samples(&args));
    run_dir::write_atomic(
        &out.join("components.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    println!("{}", render(&table));
    println!(
        "wrote {} and {}",
        out.join("fisher.safetensors").display(),
        out.join("components.json").display()
    );
    Ok(())
}

fn n_samples(args: &FisherArgs) -> serde_json::Value {
    args.samples
        .map_or(serde_json::Value::String("all".into()), |n| n.into())
}

fn components_json(
    table: &Table,
    label: &str,
    args: &FisherArgs,
    samples: serde_json::Value,
) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = table
        .iter()
        .map(|((kind, layer), a)| {
            serde_json::json!({ "component": kind, "layer": layer, "mean": a.mean, "total": a.total, "params": a.count })
        })
        .collect();
    serde_json::json!({
        "tasks": label,
        "samples": samples,
        "estimator": if args.batch_mean.is_some() { "batch-mean" } else { "per-example" },
        "components": rows,
    })
}

/// Components over all layers, ranked by mean Fisher per parameter.
pub fn render(table: &Table) -> String {
    let mut rows: Vec<(&String, &crate::components::Aggregate)> = table
        .iter()
        .filter(|((_, l), _)| l.is_none())
        .map(|((k, _), a)| (k, a))
        .collect();
    rows.sort_by(|a, b| b.1.mean.total_cmp(&a.1.mean));
    let mut s = format!(
        "{:<4} {:<28} {:>12} {:>12} {:>12}\n",
        "rank", "component", "mean", "total", "params"
    );
    for (i, (kind, a)) in rows.iter().enumerate() {
        s.push_str(&format!(
            "{:<4} {:<28} {:>12.3e} {:>12.3e} {:>12}\n",
            i + 1,
            kind,
            a.mean,
            a.total,
            a.count
        ));
    }
    let by_layer: BTreeMap<usize, Vec<(&String, f64)>> = table
        .iter()
        .filter_map(|((k, l), a)| l.map(|l| (l, (k, a.mean))))
        .fold(BTreeMap::new(), |mut m, (l, v)| {
            m.entry(l).or_default().push(v);
            m
        });
    s.push_str("\nper layer, top component by mean:\n");
    for (layer, mut v) in by_layer {
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        s.push_str(&format!(
            "  layer {layer:>2}: {} ({:.3e})\n",
            v[0].0, v[0].1
        ));
    }
    s
}
