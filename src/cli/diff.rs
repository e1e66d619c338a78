//! `peft diff`: how far fine-tuning moved each component, ranked. The LayerNorm paper's
//! first analysis: under full fine-tuning, which component changes most?

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use candle_core::DType;
use clap::Args;

use crate::components::aggregate;
use crate::run::weights::{fold_adapters, RunWeights, Which};

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// A run directory written by `peft train`.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The base model, a directory or a hub id, if it moved since training; its weights
    /// must be the ones the run trained from (sha256) [default: the run's].
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// Which saved state to compare.
    #[arg(long, value_enum, default_value_t = Which::Last)]
    pub which: Which,
    /// Print one JSON object per (component, layer) instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: DiffArgs) -> Result<()> {
    // As `peft eval` reads a run: the base must be the one it trained from (sha256), its
    // tensors of the base's shapes and the task's head; a head made for another label set
    // is dropped from the base, having nothing to compare with.
    let run = RunWeights::load(&args.checkpoint, args.which, args.base.as_deref(), None)?;
    // An adapter run moved the weights its adapters fold into (LoRA, AdaLoRA, DoRA, IA3,
    // HRA, VeRA): compare those, as `peft merge` writes them. LoReFT, InA's thresholded
    // path, bottleneck adapters, prompts and prefixes fold into no weight and are refused
    // with the reason.
    let folded;
    let trained = match crate::run::setup::adapter(&run.info.train) {
        Some(_) => {
            let mut w = run.weights(1.0)?;
            fold_adapters(&mut w, &run.info).map_err(|e| {
                match e.downcast_ref::<crate::error::UserError>() {
                    Some(_) => crate::error::user(format!("peft diff compares weights: {e}")),
                    None => e,
                }
            })?;
            // Only what moved: the rest of the encoder is the base itself.
            let mut moved = std::collections::HashMap::new();
            for (name, t) in w {
                if let Some(b) = run.base.get(&name) {
                    if (&t - b)?.abs()?.sum_all()?.to_scalar::<f32>()? != 0.0 {
                        moved.insert(name, t);
                    }
                }
            }
            folded = moved;
            &folded
        }
        None => &run.trained,
    };
    let base = &run.base;
    // Per tensor: (‖ΔW‖², n) and (‖W‖², n) and (Σ|ΔW|, n), aggregated by component.
    let (mut delta_sq, mut base_sq, mut delta_abs) =
        (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    for (name, t) in trained {
        let Some(b) = base.get(name) else { continue }; // a new head has no base
        let d = (t.to_dtype(DType::F64)? - b.to_dtype(DType::F64)?)?;
        let n = t.elem_count();
        delta_sq.insert(name.clone(), (d.sqr()?.sum_all()?.to_scalar::<f64>()?, n));
        base_sq.insert(
            name.clone(),
            (
                b.to_dtype(DType::F64)?
                    .sqr()?
                    .sum_all()?
                    .to_scalar::<f64>()?,
                n,
            ),
        );
        delta_abs.insert(name.clone(), (d.abs()?.sum_all()?.to_scalar::<f64>()?, n));
    }
    let (dsq, bsq, dabs) = (
        aggregate(&delta_sq),
        aggregate(&base_sq),
        aggregate(&delta_abs),
    );
    let mut rows: Vec<(String, Option<usize>, f64, f64, usize)> = dsq
        .iter()
        .map(|(key, a)| {
            let rel = (a.total / bsq[key].total.max(f64::MIN_POSITIVE)).sqrt();
            (key.0.clone(), key.1, rel, dabs[key].mean, a.count)
        })
        .collect();
    rows.sort_by(|a, b| b.2.total_cmp(&a.2));
    if args.json {
        for (kind, layer, rel, mean_abs, n) in &rows {
            println!(
                "{}",
                serde_json::json!({ "component": kind, "layer": layer, "relative_change": rel, "mean_abs_change": mean_abs, "params": n })
            );
        }
        return Ok(());
    }
    println!(
        "{:<4} {:<28} {:>6} {:>14} {:>14} {:>10}",
        "rank", "component", "layer", "‖ΔW‖/‖W‖", "mean |ΔW|", "params"
    );
    for (i, (kind, layer, rel, mean_abs, n)) in rows.iter().filter(|r| r.1.is_none()).enumerate() {
        let _ = layer;
        println!(
            "{:<4} {:<28} {:>6} {:>14.3e} {:>14.3e} {:>10}",
            i + 1,
            kind,
            "all",
            rel,
            mean_abs,
            n
        );
    }
    println!();
    for (i, (kind, layer, rel, mean_abs, n)) in
        rows.iter().filter(|r| r.1.is_some()).take(15).enumerate()
    {
        let l = layer.map_or(String::new(), |l| l.to_string());
        println!(
            "{:<4} {:<28} {:>6} {:>14.3e} {:>14.3e} {:>10}",
            i + 1,
            kind,
            l,
            rel,
            mean_abs,
            n
        );
    }
    Ok(())
}
