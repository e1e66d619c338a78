//! LayerNorm over the last dimension as one CPU op with its own backward: the forward
//! normalises blocks of 64 rows in parallel; the backward returns dx, and the gain's and
//! bias's gradients summed per block in a fixed order, so same-seed runs agree whatever
//! the thread count. Elsewhere (CUDA, `with_composed_ops`) it is candle's composition.

use anyhow::Result;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use super::common::{ensure, fused, par_fill, records, slice, with_slice};
use super::simd;

/// The normalised size d of LayerNorm over x's last dimension, checked against the
/// gain's and bias's lengths: the kernel writes whole rows of d, so a mismatch would
/// leave part of its output unwritten.
fn layer_norm_dim(x: &Shape, w: &Shape, b: &Shape) -> candle_core::Result<usize> {
    let d = x.dims().last().copied().unwrap_or(0);
    ensure(d > 0 && w.dims() == [d] && b.dims() == [d], || {
        format!(
            "layer_norm: input {:?} against gain {:?} and bias {:?}: the last dimension \
                 must be non-zero and equal both lengths",
            x.dims(),
            w.dims(),
            b.dims()
        )
    })?;
    Ok(d)
}

pub(super) struct LayerNormOp {
    pub(super) eps: f32,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "peft-layer-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = layer_norm_dim(xl.shape(), wl.shape(), bl.shape())?;
        let (x, w, b) = (slice(xs, xl)?, slice(ws, wl)?, slice(bs, bl)?);
        // Blocks of 64 rows: whole rows per task, few enough tasks to schedule cheaply.
        // SAFETY: x holds whole rows of d = w.len() = b.len() (checked above), so each
        // block o is whole rows too, the slice of x beside it has o's length, and
        // `simd::layer_norm` writes every element of such an o (or panics).
        let out = unsafe {
            par_fill(x.len(), 64 * d, |i, o| {
                simd::layer_norm(o, &x[i * 64 * d..][..o.len()], w, b, self.eps)
            })
        };
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = layer_norm_dim(x.shape(), w.shape(), b.shape())?;
        ensure(g.shape() == x.shape(), || {
            format!(
                "layer_norm backward: gradient {:?} against input {:?}",
                g.dims(),
                x.dims()
            )
        })?;
        let eps = self.eps;
        let (dx, dw, db) = with_slice(x, |x| {
            with_slice(w, |w| {
                with_slice(g, |g| {
                    let mut dx = vec![0f32; x.len()];
                    // Per-block partial sums in a fixed order: the result must not depend
                    // on how rayon splits the work, or same-seed runs would differ.
                    let block = 64 * d;
                    let partials: Vec<(Vec<f32>, Vec<f32>)> = dx
                        .par_chunks_mut(block)
                        .zip(x.par_chunks(block).zip(g.par_chunks(block)))
                        .map(|(dxb, (xb, gb))| {
                            let (mut dw, mut db) = (vec![0f32; d], vec![0f32; d]);
                            simd::layer_norm_backward(dxb, &mut dw, &mut db, xb, gb, w, eps);
                            (dw, db)
                        })
                        .collect();
                    let (mut dw, mut db) = (vec![0f32; d], vec![0f32; d]);
                    for (pw, pb) in partials {
                        dw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
                        db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
                    }
                    (dx, dw, db)
                })
            })
        })???;
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dw, d, dev)?),
            Some(Tensor::from_vec(db, d, dev)?),
        ))
    }
}

/// LayerNorm over the last dimension.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    if fused(x) {
        let (x, w, b) = (x.contiguous()?, w.contiguous()?, b.contiguous()?);
        let op = LayerNormOp { eps: eps as f32 };
        return Ok(if records(&[&x, &w, &b]) {
            x.apply_op3(&w, &b, op)?
        } else {
            x.apply_op3_no_bwd(&w, &b, &op)?
        });
    }
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xn = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    Ok(xn.broadcast_mul(w)?.broadcast_add(b)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::common::testing::{max_diff, rand};
    use candle_core::Var;

    #[test]
    fn layer_norm_matches_composition_with_gradients() {
        // 16: whole SIMD lanes; 19: a tail; 70 rows: more than one 64-row block.
        for (rows, d) in [(6, 16), (70, 19)] {
            layer_norm_case(rows, d);
        }
    }

    fn layer_norm_case(rows: usize, d: usize) {
        let x = rand(&[rows, d], 1);
        let w = Var::from_tensor(&(rand(&[d], 2) + 1.0).unwrap()).unwrap();
        let b = Var::from_tensor(&rand(&[d], 3)).unwrap();
        let probe = rand(&[rows, d], 4);
        let composite = |x: &Tensor| {
            let mean = x.mean_keepdim(D::Minus1).unwrap();
            let xc = x.broadcast_sub(&mean).unwrap();
            let var = xc.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
            let xn = xc
                .broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap())
                .unwrap();
            xn.broadcast_mul(w.as_tensor())
                .unwrap()
                .broadcast_add(b.as_tensor())
                .unwrap()
        };
        let xv = Var::from_tensor(&x).unwrap();
        let run = |y: Tensor| {
            let g = (&y * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let get = |t: &Tensor| g.get(t).unwrap().clone();
            (
                y,
                get(xv.as_tensor()),
                get(w.as_tensor()),
                get(b.as_tensor()),
            )
        };
        let f = run(layer_norm(xv.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5).unwrap());
        let c = run(composite(xv.as_tensor()));
        assert!(max_diff(&f.0, &c.0) < 1e-5);
        assert!(max_diff(&f.1, &c.1) < 1e-4, "dx {}", max_diff(&f.1, &c.1));
        assert!(max_diff(&f.2, &c.2) < 1e-4, "dw");
        assert!(max_diff(&f.3, &c.3) < 1e-4, "db");
    }
}
