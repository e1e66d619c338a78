//! `peft bench`: time full optimizer steps (forward, backward, masked AdamW) at a fixed
//! shape on random token ids, per method, plus an inference forward.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use candle_core::{Device, Tensor};
use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::loss;
use crate::methods::{self, Method};
use crate::model::{read_checkpoint, Batch, Ctx, Model, ModelConfig, ParamStore};
use crate::optim::{AdamWConfig, MaskedAdamW};

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
    /// Timed steps per method (after 2 untimed warm-up steps).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Methods to time, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "full,bitfit,layernorm")]
    pub method: Vec<Method>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.steps == 0 || args.batch == 0 || args.seq < 2 {
        crate::user_bail!("--steps and --batch must be at least 1, --seq at least 2");
    }
    let device = crate::device::parse(&args.device)?;
    let model_dir = crate::model::hub::resolve(&args.model, args.revision.as_deref())?;
    let (cfg, weights) = read_checkpoint(&model_dir)?;
    let batch = random_batch(&cfg, args.batch, args.seq, &device)?;
    let labels = Tensor::new(
        (0..args.batch as u32).map(|i| i % 2).collect::<Vec<_>>(),
        &device,
    )?;
    let tokens = (args.batch * args.seq) as f64;
    println!(
        "{} × {} tokens, {} timed steps, median ms",
        args.batch, args.seq, args.steps
    );
    println!(
        "{:<12} {:>10} {:>12} {:>14}",
        "step", "ms", "tokens/s", "peak RSS MB"
    );

    for method in &args.method {
        reset_peak_rss();
        let sel = method.select(weights.keys());
        let store = ParamStore::new(weights.clone(), device.clone(), 0, sel.trainable);
        let model = Model::load(&store, &cfg, Some(2))?;
        let vars = store.vars();
        let mut opt = MaskedAdamW::new(
            vars.clone(),
            sel.masks,
            methods::decays,
            AdamWConfig::default(),
            0,
        )?;
        let ctx = Ctx::train(0);
        let ms = time(args.steps, || {
            let logits = model.logits(&batch, &ctx)?;
            let grads = loss::cross_entropy(&logits, &labels)?.backward()?;
            let g = vars
                .iter()
                .filter_map(|(n, v)| grads.get(v.as_tensor()).map(|g| (n.clone(), g.clone())))
                .collect();
            opt.step(&g, 1e-5)?;
            Ok(())
        })?;
        println!(
            "{:<12} {:>10.1} {:>12.0} {:>14.0}",
            method.name(),
            ms,
            tokens / ms * 1e3,
            peak_rss_mb()
        );
    }

    reset_peak_rss();
    let store = ParamStore::frozen(weights, device.clone());
    let model = Model::load(&store, &cfg, Some(2))?;
    let ctx = Ctx::eval();
    let ms = time(args.steps, || {
        model.logits(&batch, &ctx)?.to_device(&Device::Cpu)?;
        Ok(())
    })?;
    println!(
        "{:<12} {:>10.1} {:>12.0} {:>14.0}",
        "inference",
        ms,
        tokens / ms * 1e3,
        peak_rss_mb()
    );
    Ok(())
}

fn random_batch(cfg: &ModelConfig, b: usize, t: usize, device: &Device) -> Result<Batch> {
    let mut rng = StdRng::seed_from_u64(0);
    // Ids above the special tokens, so no position counts as padding.
    let ids: Vec<u32> = (0..b * t)
        .map(|_| rng.random_range(5..cfg.vocab_size as u32))
        .collect();
    Ok(Batch {
        input_ids: Tensor::from_vec(ids, (b, t), device)?,
        token_type_ids: Tensor::zeros((b, t), candle_core::DType::U32, device)?,
        attention_mask: Tensor::ones((b, t), candle_core::DType::F32, device)?,
    })
}

/// Median wall time of `steps` calls in ms, after two untimed warm-up calls.
fn time(steps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..2 {
        f()?;
    }
    let mut ms = Vec::with_capacity(steps);
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
