//! The masked AdamW update of one f32 CPU tensor, in place, in one parallel pass that
//! reads g (and the mask) and θ, m and v once and writes θ, m and v once. The composition
//! of tensor ops it replaces allocates and sweeps a full-size temporary per op, some
//! fifteen per tensor; three passes (m, then v, then θ) read g twice and m and v again.
//!
//! The arithmetic is the composed path's, element by element, in f32 with the constants
//! rounded to f32 as candle's scalar ops round them, so both paths agree to rounding. The
//! loop is branch-free (a subset mask selects old or new values), so LLVM vectorises it,
//! compiled per instruction set as the SIMD row kernels are; division and square root are
//! correctly rounded on every path and nothing is fused into an FMA, so each path gives the
//! same bits.

use anyhow::Result;
use std::cell::Cell;

use candle_core::{CpuStorage, DType, InplaceOp1, Layout, Storage, Tensor};
use rayon::prelude::*;

use super::common::slice;
use super::simd::{multiversion, Isa};

/// Elements per parallel task: big enough to amortise scheduling, small enough to split
/// a LayerNorm-sized tensor into a few tasks.
const CHUNK: usize = 1 << 14;

/// The AdamW arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpdateRule {
    /// `torch.optim.AdamW`: decay θ·(1 − lr·wd) first, then θ −= lr·m̂/(√v̂ + ε).
    #[default]
    Torch,
    /// transformers' original `AdamW` as Child-Tuning's `ChildTuningAdamW` computes it:
    /// θ −= lr·√(1−β2ᵗ)/(1−β1ᵗ) · m/(√v + ε) (ε added before the bias correction), then
    /// θ −= lr·wd·θ on the updated θ.
    ChildTuning,
}

/// The constants of one step for one tensor.
pub struct Hyper {
    pub b1: f64,
    pub b2: f64,
    pub bc1: f64,
    pub bc2: f64,
    pub eps: f64,
    pub lr: f64,
    /// 0 where the tensor takes no decay.
    pub weight_decay: f64,
    /// Clipping times 1/p for a Bernoulli mask: applied to the gradient before the moments.
    pub scale: f64,
    pub rule: UpdateRule,
}

/// What a mask does to one tensor's update.
pub enum Keep {
    /// No mask: every element moves.
    All,
    /// A subset (0/1): elements outside it do not move at all, moments included.
    Subset(Tensor),
    /// A gradient mask (0/1): multiplies the gradient; every element's moments and decay
    /// still apply.
    Multiply(Tensor),
}

pub fn applies(theta: &Tensor, g: &Tensor) -> bool {
    theta.device().is_cpu()
        && theta.dtype() == DType::F32
        && g.dtype() == DType::F32
        && theta.is_contiguous()
}

/// Update `m`, `v` and `theta` in place under `keep`.
pub fn update(
    theta: &Tensor,
    m: &Tensor,
    v: &Tensor,
    g: &Tensor,
    keep: &Keep,
    h: &Hyper,
) -> Result<()> {
    let g = g.contiguous()?;
    let (mask, mode) = match keep {
        Keep::All => (None, Mode::All),
        Keep::Subset(k) => (Some(k.contiguous()?), Mode::Subset),
        Keep::Multiply(k) => (Some(k.contiguous()?), Mode::Multiply),
    };
    let c = Consts {
        scale: h.scale as f32,
        b1: h.b1 as f32,
        take1: (1.0 - h.b1) as f32,
        b2: h.b2 as f32,
        take2: (1.0 - h.b2) as f32,
        inv_bc1: (1.0 / h.bc1) as f32,
        inv_bc2: (1.0 / h.bc2) as f32,
        step_size: (h.lr * h.bc2.sqrt() / h.bc1) as f32,
        eps: h.eps as f32,
        lr: h.lr as f32,
        wd: h.weight_decay as f32,
        mode,
        legacy: h.rule == UpdateRule::ChildTuning,
    };
    let (gs, gl) = g.storage_and_layout();
    let Storage::Cpu(gs) = &*gs else {
        anyhow::bail!("fused AdamW: the gradient is not on the CPU");
    };
    let g = slice(gs, gl)?;
    let guard = mask.as_ref().map(Tensor::storage_and_layout);
    let k: &[f32] = match &guard {
        Some((s, l)) => match &**s {
            Storage::Cpu(s) => slice(s, l)?,
            _ => anyhow::bail!("fused AdamW: the mask is not on the CPU"),
        },
        None => &[],
    };
    // θ, m and v are three tensors with storages of their own (the optimizer makes m and
    // v, and g and the mask are other tensors again): each is borrowed mutably in turn,
    // under its own write lock, and the kernel runs inside the innermost borrow.
    Ok(borrow_mut(theta, |t| {
        borrow_mut(m, |m| {
            borrow_mut(v, |v| {
                let n = t.len();
                if m.len() != n || v.len() != n || g.len() != n || (!k.is_empty() && k.len() != n) {
                    candle_core::bail!(
                        "fused AdamW: parameter, moments, gradient and mask sizes differ"
                    );
                }
                let isa = Isa::chosen();
                t.par_chunks_mut(CHUNK)
                    .zip(m.par_chunks_mut(CHUNK))
                    .zip(v.par_chunks_mut(CHUNK))
                    .enumerate()
                    .for_each(|(i, ((t, m), v))| {
                        let at = i * CHUNK;
                        let g = &g[at..at + t.len()];
                        let k = if k.is_empty() {
                            g
                        } else {
                            &k[at..at + t.len()]
                        };
                        // Rayon's threads do not see the caller's thread-local choice.
                        super::simd::with_isa(isa, || update_chunk(t, m, v, g, k, &c));
                    });
                Ok(())
            })
        })
    })?)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    All,
    Subset,
    Multiply,
}

/// One step's constants for one tensor, rounded to f32.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Consts {
    scale: f32,
    b1: f32,
    take1: f32,
    b2: f32,
    take2: f32,
    inv_bc1: f32,
    inv_bc2: f32,
    step_size: f32,
    eps: f32,
    lr: f32,
    wd: f32,
    mode: Mode,
    legacy: bool,
}

multiversion! {
    /// One chunk of the update. The moments, with g' = scale·g (times the mask in
    /// Multiply mode; squared for v): torch's rule as candle computes it, x += (g' − x)·(1−β),
    /// left as it was outside a subset; the Child-Tuning rule as torch's
    /// `mul_(β).add_(g', alpha=1−β)`. Then θ: torch's rule θ −= lr·(m̂ / (√v̂ + ε) + wd·θ)
    /// where kept; the Child-Tuning rule θ −= step_size · m / (√v + ε), then θ −= lr·wd·θ.
    /// `k` is the mask, or any slice of the chunk's length where there is none.
    pub(crate) fn update_chunk(t: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], k: &[f32], c: &Consts) {
        match (c.mode, c.legacy, c.wd != 0.0) {
            (Mode::All, false, false) => chunk::<0, false, false>(t, m, v, g, k, c),
            (Mode::All, false, true) => chunk::<0, false, true>(t, m, v, g, k, c),
            (Mode::All, true, false) => chunk::<0, true, false>(t, m, v, g, k, c),
            (Mode::All, true, true) => chunk::<0, true, true>(t, m, v, g, k, c),
            (Mode::Subset, false, false) => chunk::<1, false, false>(t, m, v, g, k, c),
            (Mode::Subset, false, true) => chunk::<1, false, true>(t, m, v, g, k, c),
            (Mode::Subset, true, false) => chunk::<1, true, false>(t, m, v, g, k, c),
            (Mode::Subset, true, true) => chunk::<1, true, true>(t, m, v, g, k, c),
            (Mode::Multiply, false, false) => chunk::<2, false, false>(t, m, v, g, k, c),
            (Mode::Multiply, false, true) => chunk::<2, false, true>(t, m, v, g, k, c),
            (Mode::Multiply, true, false) => chunk::<2, true, false>(t, m, v, g, k, c),
            (Mode::Multiply, true, true) => chunk::<2, true, true>(t, m, v, g, k, c),
        }
    }
}

/// `update_chunk` for one mode (0 all, 1 subset, 2 multiply), rule and weight decay: the
/// branches are constants here, so the loop body is straight-line and vectorises.
#[inline(always)]
fn chunk<const MODE: u8, const LEGACY: bool, const DECAY: bool>(
    t: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    g: &[f32],
    k: &[f32],
    c: &Consts,
) {
    let n = t.len().min(m.len()).min(v.len()).min(g.len()).min(k.len());
    let (t, m, v, g, k) = (&mut t[..n], &mut m[..n], &mut v[..n], &g[..n], &k[..n]);
    for i in 0..n {
        let gi = match MODE {
            2 => g[i] * c.scale * k[i],
            _ => g[i] * c.scale,
        };
        let (m0, v0, t0) = (m[i], v[i], t[i]);
        let (m1, v1) = if LEGACY && MODE != 1 {
            (m0 * c.b1 + gi * c.take1, v0 * c.b2 + (gi * gi) * c.take2)
        } else {
            (m0 + (gi - m0) * c.take1, v0 + (gi * gi - v0) * c.take2)
        };
        let t1 = if LEGACY {
            let t = t0 - c.step_size * (m1 / (v1.sqrt() + c.eps));
            if DECAY {
                t - t * (c.lr * c.wd)
            } else {
                t
            }
        } else {
            let mut u = (m1 * c.inv_bc1) / ((v1 * c.inv_bc2).sqrt() + c.eps);
            if DECAY {
                u += t0 * c.wd;
            }
            t0 - u * c.lr
        };
        // Outside a subset nothing moves, moments included.
        let kept = MODE != 1 || k[i] != 0.0;
        m[i] = if kept { m1 } else { m0 };
        v[i] = if kept { v1 } else { v0 };
        t[i] = if kept { t1 } else { t0 };
    }
}

/// Runs `f` on `t`'s f32 CPU elements, mutably, under its storage's write lock.
fn borrow_mut<F>(t: &Tensor, f: F) -> candle_core::Result<()>
where
    F: FnOnce(&mut [f32]) -> candle_core::Result<()>,
{
    struct Borrow<F>(Cell<Option<F>>);
    impl<F: FnOnce(&mut [f32]) -> candle_core::Result<()>> InplaceOp1 for Borrow<F> {
        fn name(&self) -> &'static str {
            "peft-adamw"
        }
        fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
            match self.0.take() {
                Some(f) => f(contiguous_mut(s, l)?),
                None => candle_core::bail!("fused AdamW: a borrow ran twice"),
            }
        }
    }
    t.inplace_op1(&Borrow(Cell::new(Some(f))))
}

/// Σ g² in f64, for f32 CPU tensors (None otherwise): partial sums over fixed chunks,
/// added in order, so the result does not depend on thread scheduling.
pub fn squared_norm(g: &Tensor) -> Result<Option<f64>> {
    if !g.device().is_cpu() || g.dtype() != DType::F32 {
        return Ok(None);
    }
    let g = g.contiguous()?;
    let (storage, layout) = g.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Ok(None);
    };
    let x = slice(cpu, layout)?;
    let parts: Vec<f64> = x
        .par_chunks(CHUNK)
        .map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>())
        .collect();
    Ok(Some(parts.iter().sum()))
}

fn contiguous_mut<'a>(s: &'a mut CpuStorage, l: &Layout) -> candle_core::Result<&'a mut [f32]> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("not contiguous".into()))?;
    match s {
        CpuStorage::F32(v) => Ok(&mut v[start..end]),
        _ => candle_core::bail!("fused AdamW on a non-f32 tensor"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::simd::with_isa;

    #[test]
    fn every_path_gives_the_same_bits() {
        let n = 1000; // not a multiple of any vector width
        let val = |i: usize, s: usize| ((i * 37 + s * 11) % 101) as f32 / 25.0 - 2.0;
        let g: Vec<f32> = (0..n).map(|i| val(i, 1) * 1e-2).collect();
        let k: Vec<f32> = (0..n).map(|i| (i % 3 != 0) as u8 as f32).collect();
        for mode in [Mode::All, Mode::Subset, Mode::Multiply] {
            for legacy in [false, true] {
                for wd in [0.0, 0.01] {
                    let c = Consts {
                        scale: 0.7,
                        b1: 0.9,
                        take1: 0.1,
                        b2: 0.999,
                        take2: 0.001,
                        inv_bc1: 1.0 / 0.271,
                        inv_bc2: 1.0 / 0.002_997,
                        step_size: 2e-3,
                        eps: 1e-8,
                        lr: 1e-3,
                        wd,
                        mode,
                        legacy,
                    };
                    let run = |isa| {
                        let mut t: Vec<f32> = (0..n).map(|i| val(i, 2)).collect();
                        let mut m: Vec<f32> = (0..n).map(|i| val(i, 3) * 1e-3).collect();
                        let mut v: Vec<f32> = (0..n).map(|i| val(i, 4).abs() * 1e-5).collect();
                        with_isa(isa, || update_chunk(&mut t, &mut m, &mut v, &g, &k, &c));
                        (t, m, v)
                    };
                    let base = run(Isa::Baseline);
                    for isa in crate::kernels::simd::tests::wider_paths_here() {
                        assert_eq!(run(isa), base, "{isa:?} {mode:?} legacy {legacy} wd {wd}");
                    }
                    if mode == Mode::Subset {
                        let moved = (0..n).filter(|&i| k[i] == 0.0 && base.0[i] != val(i, 2));
                        assert_eq!(moved.count(), 0, "an element outside the subset moved");
                    }
                }
            }
        }
    }
}
