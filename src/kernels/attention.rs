//! Scaled dot-product attention as one CPU op with its own backward.
//!
//! Composed from candle ops, attention is a dozen graph nodes per layer (head split and
//! merge views and copies, two batched matmuls, softmax, dropout), and candle's backward
//! gives each node a zero-filled gradient and adds into it: `perf` put a quarter of a
//! LayerNorm-only step there. Here q, k and v stay in the linear layers' (batch, seq,
//! heads·dim) layout, each head is a strided view for gemm, and backward is written out.
//! Dropout on the probabilities uses `dropout::DropoutOp`'s counter-based mask with the flat
//! (batch, head, query, key) index, so a run is the same as with the composed ops.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use super::common::{records, slice, with_slice};
use super::dropout::DropoutOp;
use super::matmul::gemm_into;
use super::simd;

pub(crate) struct AttentionOp {
    heads: usize,
    scale: f32,
    /// (batch, keys), 1 for real tokens.
    mask: Vec<f32>,
    dropout: Option<DropoutOp>,
}

/// One batch row's q, k, v (or their gradients): (seq, heads·dim) row-major.
struct Row<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    mask: &'a [f32],
}

impl AttentionOp {
    /// Head h's probabilities p (t, t) = softmax(scale · q_h·k_hᵀ, masked), and with
    /// dropout the dropped ones into `dropped`; `scores` is scratch. The backward calls
    /// this again rather than keeping every head's p from the forward: recomputing costs
    /// one small gemm and a softmax per head, keeping them cost 25 MB a layer at 32 × 128
    /// × 12 heads, a tenth of a full step's peak memory.
    #[allow(clippy::too_many_arguments)]
    fn head_probs(
        &self,
        row: &Row,
        bi: usize,
        h: usize,
        (t, hd, d): (usize, usize, usize),
        scores: &mut [f32],
        p: &mut [f32],
        dropped: &mut [f32],
    ) {
        let c = h * d;
        // scores (t, t) = q_h (t, d) · k_hᵀ (d, t)
        gemm_into(
            scores,
            t,
            t,
            d,
            t,
            (&row.q[c..], hd, 1),
            (&row.k[c..], 1, hd),
            gemm::Parallelism::None,
        );
        for i in 0..t {
            let r = i * t..(i + 1) * t;
            simd::masked_softmax_row(&mut p[r.clone()], &scores[r.clone()], row.mask, self.scale);
            if let Some(drop) = &self.dropout {
                // The flat (batch, head, query, key) index, as the composed ops number it.
                let base = (((bi * self.heads + h) * t + i) * t) as u64;
                drop.apply_row(&mut dropped[r.clone()], &p[r], base);
            }
        }
    }

    /// Batch row `bi` of q, k, v (each (batch, t, hd)) and of the mask.
    fn row<'a>(
        &'a self,
        (q, k, v): (&'a [f32], &'a [f32], &'a [f32]),
        bi: usize,
        t: usize,
        hd: usize,
    ) -> Row<'a> {
        let at = bi * t * hd;
        Row {
            q: &q[at..],
            k: &k[at..],
            v: &v[at..],
            mask: &self.mask[bi * t..(bi + 1) * t],
        }
    }

    /// One task's (t, t) buffers: scores, probabilities, and dropped probabilities (empty
    /// without dropout).
    fn scratch(&self, t: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let dropped = if self.dropout.is_some() { t * t } else { 0 };
        (vec![0f32; t * t], vec![0f32; t * t], vec![0f32; dropped])
    }

    /// The probabilities as applied to v: the dropped ones under dropout, else p.
    fn applied<'a>(&self, p: &'a [f32], dropped: &'a [f32]) -> &'a [f32] {
        if self.dropout.is_some() {
            dropped
        } else {
            p
        }
    }
}

/// (batch, seq, heads·dim) of a q, k or v shape.
fn dims(s: &Shape) -> candle_core::Result<(usize, usize, usize)> {
    match s.dims() {
        &[b, t, h] => Ok((b, t, h)),
        d => candle_core::bail!("attention: expected (batch, seq, hidden), got {d:?}"),
    }
}

impl AttentionOp {
    /// (batch, seq, hidden) of q, k and v, which must agree, with hidden a whole number of
    /// heads and a mask of (batch, seq): the kernels index rows and heads by these alone.
    fn check(&self, q: &Shape, k: &Shape, v: &Shape) -> candle_core::Result<(usize, usize, usize)> {
        let (b, t, hd) = dims(q)?;
        if dims(k)? != (b, t, hd) || dims(v)? != (b, t, hd) {
            candle_core::bail!(
                "attention: q {:?}, k {:?} and v {:?} differ",
                q.dims(),
                k.dims(),
                v.dims()
            );
        }
        if self.mask.len() != b * t {
            candle_core::bail!(
                "attention: a mask of {} elements for (batch, seq) = ({b}, {t})",
                self.mask.len()
            );
        }
        if self.heads == 0 || !hd.is_multiple_of(self.heads) {
            candle_core::bail!(
                "attention: hidden size {hd} is not a multiple of {} heads",
                self.heads
            );
        }
        Ok((b, t, hd))
    }
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "peft-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, t, hd) = self.check(ql.shape(), kl.shape(), vl.shape())?;
        let (q, k, v) = (slice(qs, ql)?, slice(ks, kl)?, slice(vs, vl)?);
        let (heads, d) = (self.heads, hd / self.heads);
        let mut out = vec![0f32; b * t * hd];
        out.par_chunks_mut(t * hd)
            .enumerate()
            .for_each(|(bi, out)| {
                let row = self.row((q, k, v), bi, t, hd);
                let (mut scores, mut p, mut dropped) = self.scratch(t);
                for h in 0..heads {
                    let c = h * d;
                    self.head_probs(&row, bi, h, (t, hd, d), &mut scores, &mut p, &mut dropped);
                    // out_h (t, d) = p (t, t) · v_h (t, d), into columns c.. of out
                    gemm_into(
                        &mut out[c..],
                        hd,
                        t,
                        t,
                        d,
                        (self.applied(&p, &dropped), t, 1),
                        (&row.v[c..], hd, 1),
                        gemm::Parallelism::None,
                    );
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((b, t, hd))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, t, hd) = self.check(q.shape(), k.shape(), v.shape())?;
        if g.shape() != q.shape() {
            candle_core::bail!(
                "attention backward: gradient {:?} against output {:?}",
                g.dims(),
                q.dims()
            );
        }
        let (heads, d) = (self.heads, hd / self.heads);
        let n = b * t * hd;
        let (mut dq, mut dk, mut dv) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
        let none = gemm::Parallelism::None;
        with_slice(g, |g| {
            with_slice(q, |q| {
                with_slice(k, |k| {
                    with_slice(v, |v| {
                        dq.par_chunks_mut(t * hd)
                            .zip(dk.par_chunks_mut(t * hd))
                            .zip(dv.par_chunks_mut(t * hd))
                            .enumerate()
                            .for_each(|(bi, ((dq, dk), dv))| {
                                let g = &g[bi * t * hd..];
                                let row = self.row((q, k, v), bi, t, hd);
                                let (mut scores, mut p, mut dropped) = self.scratch(t);
                                // The gradient of the scores is built in `scores`.
                                for h in 0..heads {
                                    let c = h * d;
                                    self.head_probs(
                                        &row,
                                        bi,
                                        h,
                                        (t, hd, d),
                                        &mut scores,
                                        &mut p,
                                        &mut dropped,
                                    );
                                    // dv_h (t, d) = appliedᵀ (t, t) · g_h (t, d)
                                    gemm_into(
                                        &mut dv[c..],
                                        hd,
                                        t,
                                        t,
                                        d,
                                        (self.applied(&p, &dropped), 1, t),
                                        (&g[c..], hd, 1),
                                        none,
                                    );
                                    let dp = &mut scores;
                                    // d(applied) (t, t) = g_h (t, d) · v_hᵀ (d, t)
                                    gemm_into(
                                        dp,
                                        t,
                                        t,
                                        d,
                                        t,
                                        (&g[c..], hd, 1),
                                        (&row.v[c..], 1, hd),
                                        none,
                                    );
                                    for i in 0..t {
                                        let r = i * t..(i + 1) * t;
                                        simd::softmax_backward_row(
                                            &mut dp[r.clone()],
                                            &p[r.clone()],
                                            if self.dropout.is_some() {
                                                &dropped[r]
                                            } else {
                                                &[]
                                            },
                                            self.dropout.as_ref().map(DropoutOp::scale),
                                            self.scale,
                                        );
                                    }
                                    // dq_h (t, d) = ds (t, t) · k_h (t, d)
                                    gemm_into(
                                        &mut dq[c..],
                                        hd,
                                        t,
                                        t,
                                        d,
                                        (dp, t, 1),
                                        (&row.k[c..], hd, 1),
                                        none,
                                    );
                                    // dk_h (t, d) = dsᵀ (t, t) · q_h (t, d)
                                    gemm_into(
                                        &mut dk[c..],
                                        hd,
                                        t,
                                        t,
                                        d,
                                        (dp, 1, t),
                                        (&row.q[c..], hd, 1),
                                        none,
                                    );
                                }
                            })
                    })
                })
            })
        })????;
        let dev = q.device();
        let shape = q.shape();
        Ok((
            Some(Tensor::from_vec(dq, shape, dev)?),
            Some(Tensor::from_vec(dk, shape, dev)?),
            Some(Tensor::from_vec(dv, shape, dev)?),
        ))
    }
}

/// softmax(scale · q·kᵀ masked) · v per head, with dropout on the probabilities, for q, k
/// and v of shape (batch, seq, heads·dim) on the CPU in f32, and a (batch, seq) 1/0 mask.
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    heads: usize,
    scale: f64,
    dropout: Option<DropoutOp>,
) -> candle_core::Result<Tensor> {
    let (b, t, _) = q.dims3()?;
    if mask.dims() != [b, t] {
        candle_core::bail!(
            "attention: mask {:?} for q {:?}; expected (batch, seq)",
            mask.dims(),
            q.dims()
        );
    }
    let tracked = records(&[q, k, v]);
    let op = AttentionOp {
        heads,
        scale: scale as f32,
        mask: mask.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
        dropout,
    };
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    if tracked {
        q.apply_op3(&k, &v, op)
    } else {
        q.apply_op3_no_bwd(&k, &v, &op)
    }
}

/// Attention probabilities softmax(scale · scores + mask) for scores (batch, heads, q, k)
/// and a (batch, k) 1/0 padding mask, from candle's ops: where attention::attention does
/// not run (CUDA), and as its reference in tests.
pub fn attention_probs(scores: &Tensor, mask: &Tensor, scale: f64) -> anyhow::Result<Tensor> {
    let (b, _, _, k) = scores.dims4()?;
    // transformers' additive mask: 0 keeps, f32::MIN removes.
    let add = mask
        .to_dtype(DType::F32)?
        .affine(f32::MAX as f64, f32::MIN as f64)?
        .reshape((b, 1, 1, k))?;
    let x = (scores * scale)?.broadcast_add(&add)?;
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::common::testing::{max_diff, probe_grads, rand};
    use crate::kernels::dropout::dropout;
    use candle_core::{Device, Var};

    /// The composed candle ops the fused op replaces, dropout drawn with the same key.
    fn composed(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, heads: usize, p: f64) -> Tensor {
        let (b, t, hd) = q.dims3().unwrap();
        let split = |y: &Tensor| {
            y.reshape((b, t, heads, hd / heads))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let (q, k, v) = (split(q), split(k), split(v));
        let scores = q.matmul(&k.t().unwrap()).unwrap();
        let scale = 1.0 / ((hd / heads) as f64).sqrt();
        let mut probs = attention_probs(&scores, mask, scale).unwrap();
        if p > 0.0 {
            probs = dropout(&probs, p, 77).unwrap();
        }
        probs
            .matmul(&v)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b, t, hd))
            .unwrap()
    }

    #[test]
    fn fused_attention_matches_the_composed_ops_with_gradients() {
        let (b, t, heads, hd) = (3, 7, 2, 8);
        let mask = Tensor::from_vec(
            (0..b * t)
                .map(|i| if i % t < t - i / t { 1f32 } else { 0.0 })
                .collect::<Vec<_>>(),
            (b, t),
            &Device::Cpu,
        )
        .unwrap();
        let probe = rand(&[b, t, hd], 9);
        for p in [0.0, 0.3] {
            let vars = [1, 2, 3].map(|s| Var::from_tensor(&rand(&[b, t, hd], s)).unwrap());
            let [q, k, v] = [0, 1, 2].map(|i| vars[i].as_tensor().clone());
            let scale = 1.0 / ((hd / heads) as f64).sqrt();
            let drop = (p > 0.0).then(|| DropoutOp::new(p, 77));
            let ours = attention(&q, &k, &v, &mask, heads, scale, drop).unwrap();
            let theirs = composed(&q, &k, &v, &mask, heads, p);
            assert!(max_diff(&ours, &theirs) < 1e-6, "p {p}: forward");
            let g1 = probe_grads(&ours, &probe);
            let g2 = probe_grads(&theirs, &probe);
            for (name, var) in ["q", "k", "v"].iter().zip(&vars) {
                let d = max_diff(g1.get(var).unwrap(), g2.get(var).unwrap());
                assert!(d < 1e-5, "p {p}: d{name} differs by {d}");
            }
        }
    }

    #[test]
    fn shapes_the_kernel_cannot_index_are_refused() {
        let mask = Tensor::ones((2, 4), DType::F32, &Device::Cpu).unwrap();
        let x = rand(&[2, 4, 6], 5);
        // 6 is no whole number of 4 heads (the last two columns were left at zero), and
        // 0 heads divided by zero.
        assert!(attention(&x, &x, &x, &mask, 4, 0.5, None).is_err());
        assert!(attention(&x, &x, &x, &mask, 0, 0.5, None).is_err());
        // q, k and v of different shapes.
        let other = rand(&[2, 3, 6], 6);
        assert!(attention(&x, &other, &x, &mask, 3, 0.5, None).is_err());
        assert!(attention(&x, &x, &other, &mask, 3, 0.5, None).is_err());
        // A mask with batch·seq elements, transposed.
        let flipped = Tensor::ones((4, 2), DType::F32, &Device::Cpu).unwrap();
        assert!(attention(&x, &x, &x, &flipped, 3, 0.5, None).is_err());
        // Backward with a gradient of another shape.
        let op = AttentionOp {
            heads: 3,
            scale: 0.5,
            mask: vec![1.0; 8],
            dropout: None,
        };
        let y = attention(&x, &x, &x, &mask, 3, 0.5, None).unwrap();
        assert!(op.bwd(&x, &x, &x, &y, &rand(&[2, 4, 3], 7)).is_err());
        assert!(op.bwd(&x, &x, &x, &y, &y).is_ok());
    }

    #[test]
    fn without_a_tracked_input_no_probabilities_are_kept() {
        let x = rand(&[2, 4, 6], 5);
        let mask = Tensor::ones((2, 4), DType::F32, &Device::Cpu).unwrap();
        let y = attention(&x, &x, &x, &mask, 3, 0.5, None).unwrap();
        assert!(!y.track_op());
        assert_eq!(y.dims(), &[2, 4, 6]);
    }
}
