//! The mask shared by the subset methods: of the elements a predicate makes eligible, a
//! share kept, chosen at random (seeded) or by Fisher information.

use anyhow::{anyhow, Result};
use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::MaskContext;
use crate::error::user;
use crate::optim::{Mask, MaskPlan};

crate::method_settings! {
    context(m, f);
    used_by = m.takes_fraction();
    /// fisher-layernorm, random-layernorm, random: share of eligible elements that train
    /// (required).
    fraction => fraction: f64 = required("0.1");
}

impl Settings {
    pub fn check(&self) -> Result<()> {
        check_share("fraction", self.fraction)
    }
}

/// The share a subset method keeps (all, for a spec without one).
pub fn fraction(spec: &super::MethodSpec) -> f64 {
    spec.config.subset.as_ref().map_or(1.0, |s| s.fraction)
}

/// A share of elements: in (0, 1].
pub fn check_share(key: &str, v: f64) -> Result<()> {
    if !(v > 0.0 && v <= 1.0) {
        return Err(user(format!("{key}: {v} is outside (0, 1]")));
    }
    Ok(())
}

/// How the kept elements are chosen.
pub enum Keep {
    /// Uniformly at random, from the run's seed.
    Random,
    /// The largest Fisher information first (ties by position).
    Fisher,
}

/// Masks over every eligible tensor (in name order), keeping `share` of their elements;
/// `mask` wraps each 0/1 tensor (fixed subset or gradient gate).
pub fn masks(
    cx: &MaskContext,
    method: &str,
    eligible: fn(&str) -> bool,
    share: f64,
    keep: Keep,
    mask: fn(Tensor) -> Mask,
) -> Result<MaskPlan> {
    let mut eligible: Vec<(&String, &Tensor)> =
        cx.base.iter().filter(|(n, _)| eligible(n)).collect();
    eligible.sort_by(|a, b| a.0.cmp(b.0));
    let total: usize = eligible.iter().map(|(_, t)| t.elem_count()).sum();
    let k = ((share * total as f64).round() as usize).clamp(1, total.max(1));
    let kept: Vec<bool> = match keep {
        Keep::Random => {
            let mut idx: Vec<usize> = (0..total).collect();
            idx.shuffle(&mut StdRng::seed_from_u64(cx.spec.seed));
            let mut kept = vec![false; total];
            idx[..k.min(total)].iter().for_each(|&i| kept[i] = true);
            kept
        }
        Keep::Fisher => {
            let fisher = cx
                .fisher
                .ok_or_else(|| anyhow!("{method} needs Fisher information"))?;
            let mut scores = Vec::with_capacity(total);
            for (name, t) in &eligible {
                let f = fisher
                    .get(*name)
                    .ok_or_else(|| user(format!("the Fisher information has no `{name}`")))?;
                if f.dims() != t.dims() {
                    return Err(user(format!(
                        "Fisher of `{name}` has shape {:?}, the model {:?}",
                        f.dims(),
                        t.dims()
                    )));
                }
                scores.extend(f.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?);
            }
            top_k(&scores, k)
        }
    };
    let mut plan = MaskPlan::default();
    let mut at = 0;
    for (name, t) in eligible {
        let n = t.elem_count();
        let m: Vec<f32> = kept[at..at + n]
            .iter()
            .map(|&k| if k { 1.0 } else { 0.0 })
            .collect();
        at += n;
        plan.named.insert(
            name.clone(),
            mask(Tensor::from_vec(m, t.dims(), &Device::Cpu)?),
        );
    }
    Ok(plan)
}

/// Exactly k largest scores (ties broken by position, NaN counted as smallest).
fn top_k(scores: &[f32], k: usize) -> Vec<bool> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    let key = |i: usize| {
        if scores[i].is_nan() {
            f32::NEG_INFINITY
        } else {
            scores[i]
        }
    };
    idx.sort_by(|&a, &b| key(b).total_cmp(&key(a)).then(a.cmp(&b)));
    let mut keep = vec![false; scores.len()];
    idx[..k.min(scores.len())]
        .iter()
        .for_each(|&i| keep[i] = true);
    keep
}
