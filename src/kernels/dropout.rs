//! Inverted dropout whose mask is a hash of (seed, call, element index) rather than a
//! stream of random numbers: the same key draws the same mask whatever the thread count,
//! on the CPU and on the GPU (`cuda.rs` computes the same hash), and the backward applies
//! it again instead of storing it. Also dropout(y) + residual as one op, the step before
//! each post-LayerNorm.

use anyhow::Result;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor};

use super::common::{ensure, fused, par_fill, records, slice};
use super::simd::{self, mix};

pub(crate) struct DropoutOp {
    pub(super) key: u64,
    /// Keep an element when its hash is below this.
    pub(super) threshold: u64,
    scale: f32,
}

impl DropoutOp {
    /// Inverted dropout with keep probability 1 − p; `key` must differ per call.
    pub(crate) fn new(p: f64, key: u64) -> Self {
        let keep = 1.0 - p;
        DropoutOp {
            key: mix(key),
            threshold: (keep * u64::MAX as f64) as u64,
            scale: (1.0 / keep) as f32,
        }
    }

    /// 1/keep, what survivors are multiplied by.
    pub(crate) fn scale(&self) -> f32 {
        self.scale
    }

    /// o = x/keep where element `base + j` survives, else 0.
    pub(crate) fn apply_row(&self, o: &mut [f32], x: &[f32], base: u64) {
        simd::dropout(
            // SAFETY: `simd::dropout` writes only initialised floats through the view, so o
            // stays initialised.
            unsafe { simd::as_uninit(o) },
            x,
            self.key,
            self.threshold,
            self.scale,
            base,
        );
    }

    fn apply(&self, x: &[f32]) -> Vec<f32> {
        // SAFETY: chunk c of the output is beside x's elements [4096·c, 4096·c + o.len()),
        // of o's length, and `simd::dropout` writes every element of an o as long as its x.
        unsafe {
            par_fill(x.len(), 4096, |c, o| {
                let at = c * 4096;
                simd::dropout(
                    o,
                    &x[at..][..o.len()],
                    self.key,
                    self.threshold,
                    self.scale,
                    at as u64,
                )
            })
        }
    }
}

impl CustomOp1 for DropoutOp {
    fn name(&self) -> &'static str {
        "peft-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        Ok((CpuStorage::F32(self.apply(slice(s, l)?)), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::dropout((self.key, self.threshold, self.scale()), s, l)
    }

    /// The same mask, applied to the gradient.
    fn bwd(&self, _x: &Tensor, _res: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(g.contiguous()?.apply_op1_no_bwd(self)?))
    }
}

/// Inverted dropout with keep probability 1 − p; `key` must differ per call.
pub fn dropout(x: &Tensor, p: f64, key: u64) -> Result<Tensor> {
    apply_dropout(x, DropoutOp::new(p, key))
}

/// x through dropout's mask `op`, on any device.
fn apply_dropout(x: &Tensor, op: DropoutOp) -> Result<Tensor> {
    if fused(x) || (x.device().is_cuda() && x.dtype() == DType::F32) {
        return Ok(x.contiguous()?.apply_op1(op)?);
    }
    // Elsewhere: the same mask, built on the CPU and multiplied in.
    let ones = vec![1f32; x.elem_count()];
    let mask = Tensor::from_vec(op.apply(&ones), x.shape(), x.device())?.to_dtype(x.dtype())?;
    Ok((x * mask)?)
}

/// dropout(y) + residual as one op, the step before each post-LayerNorm: the dropped
/// tensor is never stored (the graph kept it and y, 6 MB each per call at 32 × 128 ×
/// 384), and the mask is the one `dropout` draws with the same key.
struct DropoutAddOp {
    dropout: Option<DropoutOp>,
}

impl CustomOp2 for DropoutAddOp {
    fn name(&self) -> &'static str {
        "peft-dropout-add"
    }

    fn cpu_fwd(
        &self,
        ys: &CpuStorage,
        yl: &Layout,
        rs: &CpuStorage,
        rl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        ensure(yl.shape() == rl.shape(), || {
            format!("dropout_add: {:?} against {:?}", yl.dims(), rl.dims())
        })?;
        let (y, r) = (slice(ys, yl)?, slice(rs, rl)?);
        let (key, threshold, scale) = match &self.dropout {
            Some(d) => (Some(d.key), d.threshold, d.scale),
            None => (None, 0, 1.0),
        };
        // SAFETY: y and r have one shape (checked above), so one length; chunk c of the
        // output is beside their elements [4096·c, 4096·c + o.len()), and
        // `simd::dropout_add` writes every element of an o as long as its y and r.
        let out = unsafe {
            par_fill(y.len(), 4096, |c, o| {
                let at = c * 4096;
                let (y, r) = (&y[at..][..o.len()], &r[at..][..o.len()]);
                simd::dropout_add(o, y, r, key, threshold, scale, at as u64)
            })
        };
        Ok((CpuStorage::F32(out), yl.shape().clone()))
    }

    fn bwd(
        &self,
        _y: &Tensor,
        _r: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = match &self.dropout {
            Some(d) => g.contiguous()?.apply_op1_no_bwd(d)?,
            None => g.clone(),
        };
        Ok((Some(dy), Some(g.clone())))
    }
}

/// dropout(y) + residual, `dropout` a mask from `Dropout::op` (None: no dropout).
pub fn dropout_add(y: &Tensor, residual: &Tensor, dropout: Option<DropoutOp>) -> Result<Tensor> {
    if !fused(y) {
        let y = match dropout {
            Some(op) => apply_dropout(y, op)?,
            None => y.clone(),
        };
        return Ok((y + residual)?);
    }
    let op = DropoutAddOp { dropout };
    let (y, r) = (y.contiguous()?, residual.contiguous()?);
    Ok(if records(&[&y, &r]) {
        y.apply_op2(&r, op)?
    } else {
        y.apply_op2_no_bwd(&r, &op)?
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::common::testing::{grads, max_diff, probe_grads, rand};
    use candle_core::{Device, Var};

    #[test]
    fn dropout_is_seeded_inverted_and_masks_the_gradient() {
        let x = Tensor::ones(10_000, DType::F32, &Device::Cpu).unwrap();
        let probe = rand(&[10_000], 9);
        let (y, g) = grads(|x| dropout(x, 0.1, 42).unwrap(), &x, &probe);
        let y = y.to_vec1::<f32>().unwrap();
        let kept = y.iter().filter(|v| **v != 0.0).count() as f64 / 1e4;
        assert!((kept - 0.9).abs() < 0.01, "kept {kept}");
        assert!(y.iter().all(|v| *v == 0.0 || (*v - 1.0 / 0.9).abs() < 1e-6));
        let g = g.to_vec1::<f32>().unwrap();
        let p = probe.to_vec1::<f32>().unwrap();
        for i in 0..10_000 {
            assert_eq!(g[i], p[i] * y[i], "gradient at {i}");
        }
        assert_eq!(dropout(&x, 0.1, 42).unwrap().to_vec1::<f32>().unwrap(), y);
        assert_ne!(dropout(&x, 0.1, 43).unwrap().to_vec1::<f32>().unwrap(), y);
    }

    #[test]
    fn dropout_add_is_dropout_then_add_with_both_gradients() {
        let (y, r) = (rand(&[300, 7], 12), rand(&[300, 7], 13));
        let probe = rand(&[300, 7], 14);
        for p in [None, Some(0.1)] {
            let (vy, vr) = (Var::from_tensor(&y).unwrap(), Var::from_tensor(&r).unwrap());
            let op = p.map(|p| DropoutOp::new(p, 42));
            let fused = dropout_add(vy.as_tensor(), vr.as_tensor(), op).unwrap();
            let g = probe_grads(&fused, &probe);
            let dropped = match p {
                Some(p) => dropout(&y, p, 42).unwrap(),
                None => y.clone(),
            };
            let want = (&dropped + &r).unwrap();
            assert_eq!(
                fused.to_vec2::<f32>().unwrap(),
                want.to_vec2::<f32>().unwrap(),
                "p {p:?}"
            );
            // d/dy is the probe through the same mask; d/dr the probe itself.
            let dy_want = match p {
                Some(p) => dropout(&probe, p, 42).unwrap(),
                None => probe.clone(),
            };
            assert_eq!(max_diff(g.get(vy.as_tensor()).unwrap(), &dy_want), 0.0);
            assert_eq!(max_diff(g.get(vr.as_tensor()).unwrap(), &probe), 0.0);
        }
    }
}
