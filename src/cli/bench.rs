//! `peft bench`: time full optimizer steps (forward, backward, masked AdamW) at a fixed
//! shape on random token ids, per method, plus an inference forward.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;

use crate::bench::{Forward, TrainStep};
use crate::methods::Methods;
use crate::model::{read_checkpoint, Precision};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Model directory or hub id (weights may be random; only shapes matter for speed).
    #[arg(long)]
    pub model: PathBuf,
    /// Branch, tag or commit of a hub --model [default: main].
    #[arg(long)]
    pub revision: Option<String>,
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    #[arg(long, default_value_t = 128)]
    pub seq: usize,
    /// Timed steps per method (after --warmup untimed ones).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Methods to time, comma-separated, each one method or a union (lora+layernorm).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "full,bitfit,layernorm,lora",
        help = method_help()
    )]
    pub method: Vec<Methods>,
    /// loreft: the layers it edits, `all` or indices (its default: all).
    #[arg(long, value_delimiter = ',')]
    pub loreft_layers: Option<Vec<String>>,
    /// Train steps recompute each layer's activations in the backward (as `train
    /// --recompute`).
    #[arg(long)]
    pub recompute: bool,
    /// What the products compute in, in the training steps and the inference forward
    /// (as `train --precision`).
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: Precision,
    /// Untimed steps before the timed ones.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Leave out the inference forward (profiles of the training step alone).
    #[arg(long, conflicts_with = "inference_only")]
    pub no_inference: bool,
    /// Time the inference forward only (its peak RSS then excludes training's).
    #[arg(long)]
    pub inference_only: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// `--method`'s help, with every registered method.
fn method_help() -> String {
    format!(
        "Methods to time, comma-separated, each one method or a union (lora+layernorm), at \
         their training defaults (LoRA r 8 on query and value, InA r 4 on query, key and \
         value, Child-Tuning F at reserve 0.3, subsets at a tenth, top-layers its top layer; \
         the Fisher-ranked methods need a Fisher file): {}",
        crate::methods::Method::names()
    )
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.steps == 0 || args.batch == 0 || args.seq < 2 {
        crate::user_bail!("--steps and --batch must be at least 1, --seq at least 2");
    }
    crate::bench::check_shape(args.batch, args.seq)?;
    let device = crate::device::parse(&args.device)?;
    let model_dir = crate::model::hub::resolve(&args.model, args.revision.as_deref())?;
    // Each step owns a fresh load of the weights, as a training run does: a trainable
    // weight then exists once, as its variable, and peak RSS is a run's.
    let load = || -> Result<_> {
        let (cfg, mut weights) = read_checkpoint(&model_dir)?;
        // The benchmark's head has two outputs; a classifier made for another count is not it.
        crate::model::fit_head(&mut weights, crate::model::HeadKind::Classes(2));
        Ok((cfg, weights))
    };
    let (cfg, weights) = load()?;
    let mut weights = Some(weights);
    if args.seq > cfg.max_tokens() {
        crate::user_bail!(
            "--seq {} is more than the model holds: at most {} tokens ({}: {})",
            args.seq,
            cfg.max_tokens(),
            model_dir.join("config.json").display(),
            cfg.describe_max_tokens()
        );
    }
    // A method whose default adapters this family cannot take (DeBERTa v1 has no query
    // or value module) fails before the others are timed, not after.
    for m in args.method.iter().filter(|_| !args.inference_only) {
        for t in crate::run::setup::default_adapter(m.clone())
            .filter(|a| !matches!(a.kind, crate::model::AdapterKind::Loreft { .. }))
            .map_or(Vec::new(), |a| a.targets)
        {
            if let Err(e) = cfg.model_type.adapter_module(&t) {
                crate::user_bail!("--method {m}: {e}");
            }
        }
    }
    let shape = (args.batch, args.seq);
    let tokens = (args.batch * args.seq) as f64;
    println!(
        "{} × {} tokens, {} timed steps, median ms",
        args.batch, args.seq, args.steps
    );
    println!(
        "{:<16} {:>10} {:>12} {:>14}",
        "step", "ms", "tokens/s", "peak RSS MB"
    );

    let methods: &[Methods] = if args.inference_only {
        &[]
    } else {
        &args.method
    };
    for method in methods {
        reset_peak_rss();
        let mut adapter = crate::run::setup::default_adapter(method.clone());
        if let (Some(a), Some(layers), true) = (
            adapter.as_mut(),
            &args.loreft_layers,
            method.has(crate::methods::loreft::METHOD),
        ) {
            a.targets = layers.clone();
        }
        let weights = match weights.take() {
            Some(w) => w,
            None => load()?.1,
        };
        let mut step = TrainStep::with_adapter(&cfg, weights, method, adapter, &device, shape)?
            .with_precision(args.precision);
        step.recompute = args.recompute;
        let ms = time(args.warmup, args.steps, || step.run())?;
        println!(
            "{:<16} {:>10.1} {:>12.0} {:>14.0}",
            method.to_string(),
            ms,
            tokens / ms * 1e3,
            peak_rss_mb()
        );
    }

    if args.no_inference {
        return Ok(());
    }
    reset_peak_rss();
    let weights = match weights.take() {
        Some(w) => w,
        None => load()?.1,
    };
    let forward = Forward::new(&cfg, weights, &device, shape)?.with_precision(args.precision);
    let ms = time(args.warmup, args.steps, || forward.run())?;
    println!(
        "{:<16} {:>10.1} {:>12.0} {:>14.0}",
        "inference",
        ms,
        tokens / ms * 1e3,
        peak_rss_mb()
    );
    Ok(())
}

/// Median wall time of `steps` calls in ms, after `warmup` untimed calls.
fn time(warmup: usize, steps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..warmup {
        f()?;
    }
    // Not `with_capacity(steps)`: --steps 10^18 would abort on the allocation.
    let mut ms = Vec::new();
    for _ in 0..steps {
        let t0 = Instant::now();
        f()?;
        ms.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    Ok(ms[ms.len() / 2])
}

/// Peak resident set size of this process (Linux VmHWM), in MB; 0 elsewhere.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l.to_string())
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Reset the peak so each method's figure is its own (Linux: write 5 to clear_refs).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
