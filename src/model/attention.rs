//! Scaled dot-product attention as one CPU op with its own backward.
//!
//! Composed from candle ops, attention is a dozen graph nodes per layer (head split and
//! merge views and copies, two batched matmuls, softmax, dropout), and candle's backward
//! gives each node a zero-filled gradient and adds into it: `perf` put a quarter of a
//! LayerNorm-only step there. Here q, k and v stay in the linear layers' (batch, seq,
//! heads·dim) layout, each head is a strided view for gemm, and backward is written out.
//! Dropout on the probabilities uses `ops::DropoutOp`'s counter-based mask with the flat
//! (batch, head, query, key) index, so a run is the same as with the composed ops.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::ops::{gemm_into, slice, with_slice, DropoutOp};
use super::simd;

pub(crate) struct AttentionOp {
    heads: usize,
    scale: f32,
    /// (batch, keys), 1 for real tokens.
    mask: Vec<f32>,
    dropout: Option<DropoutOp>,
    /// The softmax probabilities (before dropout), kept by the forward for the backward.
    probs: Mutex<Option<Vec<f32>>>,
    keep_probs: bool,
}

impl AttentionOp {
    pub(crate) fn new(
        heads: usize,
        scale: f32,
        mask: Vec<f32>,
        dropout: Option<DropoutOp>,
        keep_probs: bool,
    ) -> Self {
        Self {
            heads,
            scale,
            mask,
            dropout,
            probs: Mutex::new(None),
            keep_probs,
        }
    }

    /// Dropout's multiplier for every key of (batch, head, query) row `row`.
    fn drop_row(&self, row: usize, t: usize, p: &[f32], out: &mut [f32]) {
        match &self.dropout {
            Some(d) => {
                let base = (row * t) as u64;
                for (j, (o, &v)) in out.iter_mut().zip(p).enumerate() {
                    *o = d.apply_one(base + j as u64, v);
                }
            }
            None => out.copy_from_slice(p),
        }
    }
}

/// (batch, seq, heads·dim) of a q, k or v layout.
fn dims(l: &Layout) -> candle_core::Result<(usize, usize, usize)> {
    match l.dims() {
        &[b, t, h] => Ok((b, t, h)),
        d => candle_core::bail!("attention: expected (batch, seq, hidden), got {d:?}"),
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
        let (b, t, hd) = dims(ql)?;
        if dims(kl)? != (b, t, hd) || dims(vl)? != (b, t, hd) || self.mask.len() != b * t {
            candle_core::bail!("attention: q, k, v and mask shapes differ");
        }
        let (q, k, v) = (slice(qs, ql)?, slice(ks, kl)?, slice(vs, vl)?);
        let (heads, d) = (self.heads, hd / self.heads);
        let mut probs = vec![0f32; b * heads * t * t];
        let mut out = vec![0f32; b * t * hd];
        let none = gemm::Parallelism::None;
        out.par_chunks_mut(t * hd)
            .zip(probs.par_chunks_mut(heads * t * t))
            .enumerate()
            .for_each(|(bi, (out, probs))| {
                let (q, k, v) = (&q[bi * t * hd..], &k[bi * t * hd..], &v[bi * t * hd..]);
                let mask = &self.mask[bi * t..(bi + 1) * t];
                let mut scores = vec![0f32; t * t];
                let mut dropped = vec![0f32; t * t];
                for h in 0..heads {
                    let c = h * d;
                    // scores (t, t) = q_h (t, d) · k_hᵀ (d, t)
                    gemm_into(
                        &mut scores,
                        t,
                        t,
                        d,
                        t,
                        (&q[c..], hd, 1),
                        (&k[c..], 1, hd),
                        none,
                    );
                    let p = &mut probs[h * t * t..(h + 1) * t * t];
                    for i in 0..t {
                        let row = &scores[i * t..(i + 1) * t];
                        simd::masked_softmax_row(&mut p[i * t..(i + 1) * t], row, mask, self.scale);
                        let global = (bi * heads + h) * t + i;
                        self.drop_row(
                            global,
                            t,
                            &p[i * t..(i + 1) * t],
                            &mut dropped[i * t..(i + 1) * t],
                        );
                    }
                    // out_h (t, d) = dropped (t, t) · v_h (t, d), into columns c.. of out
                    gemm_into(
                        &mut out[c..],
                        hd,
                        t,
                        t,
                        d,
                        (&dropped, t, 1),
                        (&v[c..], hd, 1),
                        none,
                    );
                }
            });
        if self.keep_probs {
            *self
                .probs
                .lock()
                .map_err(|_| candle_core::Error::Msg("attention: poisoned".into()))? = Some(probs);
        }
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
        let (b, t, hd) = q.dims3()?;
        let (heads, d) = (self.heads, hd / self.heads);
        let guard = self
            .probs
            .lock()
            .map_err(|_| candle_core::Error::Msg("attention: poisoned".into()))?;
        let probs = guard
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg("attention: no saved probabilities".into()))?;
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
                                let at = bi * t * hd;
                                let (g, q, k, v) = (&g[at..], &q[at..], &k[at..], &v[at..]);
                                let mut dp = vec![0f32; t * t];
                                let mut dropped = vec![0f32; t * t];
                                for h in 0..heads {
                                    let c = h * d;
                                    let p = &probs[(bi * heads + h) * t * t..][..t * t];
                                    for i in 0..t {
                                        let global = (bi * heads + h) * t + i;
                                        let r = i * t..(i + 1) * t;
                                        self.drop_row(global, t, &p[r.clone()], &mut dropped[r]);
                                    }
                                    // dv_h (t, d) = droppedᵀ (t, t) · g_h (t, d)
                                    gemm_into(
                                        &mut dv[c..],
                                        hd,
                                        t,
                                        t,
                                        d,
                                        (&dropped, 1, t),
                                        (&g[c..], hd, 1),
                                        none,
                                    );
                                    // d(dropped) (t, t) = g_h (t, d) · v_hᵀ (d, t)
                                    gemm_into(
                                        &mut dp,
                                        t,
                                        t,
                                        d,
                                        t,
                                        (&g[c..], hd, 1),
                                        (&v[c..], 1, hd),
                                        none,
                                    );
                                    for i in 0..t {
                                        let r = i * t..(i + 1) * t;
                                        let (dp, p, kept) =
                                            (&mut dp[r.clone()], &p[r.clone()], &dropped[r]);
                                        // The same mask, read off `dropped` instead of hashed
                                        // again: where p > 0, kept ≠ 0 exactly when the element
                                        // survived, and where p = 0 its d(scores) is 0 anyway.
                                        if let Some(drop) = &self.dropout {
                                            for (x, &kept) in dp.iter_mut().zip(kept) {
                                                *x = if kept != 0.0 {
                                                    *x * drop.scale()
                                                } else {
                                                    0.0
                                                };
                                            }
                                        }
                                        // d(scores) = scale · p ⊙ (dp − ⟨dp, p⟩)
                                        let dot = simd::dot(dp, p);
                                        for (x, &pj) in dp.iter_mut().zip(p) {
                                            *x = self.scale * pj * (*x - dot);
                                        }
                                    }
                                    // dq_h (t, d) = ds (t, t) · k_h (t, d)
                                    gemm_into(
                                        &mut dq[c..],
                                        hd,
                                        t,
                                        t,
                                        d,
                                        (&dp, t, 1),
                                        (&k[c..], hd, 1),
                                        none,
                                    );
                                    // dk_h (t, d) = dsᵀ (t, t) · q_h (t, d)
                                    gemm_into(
                                        &mut dk[c..],
                                        hd,
                                        t,
                                        t,
                                        d,
                                        (&dp, 1, t),
                                        (&q[c..], hd, 1),
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
    let tracked = q.track_op() || k.track_op() || v.track_op();
    let op = AttentionOp::new(
        heads,
        scale as f32,
        mask.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
        dropout,
        tracked,
    );
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    if tracked {
        q.apply_op3(&k, &v, op)
    } else {
        q.apply_op3_no_bwd(&k, &v, &op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ops;
    use crate::model::ops::tests::{max_diff, probe_grads, rand};
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
        let mut probs = ops::attention_probs(&scores, mask, scale).unwrap();
        if p > 0.0 {
            probs = ops::dropout(&probs, p, 77).unwrap();
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
    fn without_a_tracked_input_no_probabilities_are_kept() {
        let x = rand(&[2, 4, 6], 5);
        let mask = Tensor::ones((2, 4), DType::F32, &Device::Cpu).unwrap();
        let y = attention(&x, &x, &x, &mask, 3, 0.5, None).unwrap();
        assert!(!y.track_op());
        assert_eq!(y.dims(), &[2, 4, 6]);
    }
}
