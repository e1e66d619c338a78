//! Fused CPU kernels with hand-written backward passes.
//!
//! candle composes LayerNorm, softmax, GELU and dropout from many small single-threaded
//! ops, each of which keeps its inputs for backward and computes a gradient for every
//! float input, frozen or not. These kernels do each in one parallel pass and record a
//! backward that returns only what is needed: a frozen matmul returns no weight gradient,
//! and the attention mask and dropout mask get none. On other devices (CUDA) the same
//! functions fall back to differentiable compositions. `tests/it/parity.rs` checks the
//! gradients of both paths against transformers; the unit tests here check each kernel
//! against its composition.

use std::mem::MaybeUninit;

use anyhow::Result;
use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Storage, Tensor, D,
};
use rayon::prelude::*;

use super::simd::{self, mix};

/// Run `f` on the f32 data of a contiguous CPU tensor.
pub(crate) fn with_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("fused op on a non-CPU tensor");
    };
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("not contiguous".into()))?;
    Ok(f(&cpu.as_slice::<f32>()?[start..end]))
}

/// The f32 elements of a contiguous CPU tensor's storage.
pub(crate) fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("not contiguous".into()))?;
    Ok(&s.as_slice::<f32>()?[start..end])
}

/// How a weight W (out, in) lies in memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Order {
    /// Row-major, as torch and the checkpoints keep it.
    Rows,
    /// Column-major: the contiguous (in, out) transpose, viewed as W ([`columns`]).
    Cols,
}

/// Which of W's orders a layout is, if either (a 2-D one with its rows or its columns
/// contiguous).
fn order(l: &Layout) -> Option<Order> {
    if l.is_contiguous() {
        Some(Order::Rows)
    } else if l.dims().len() == 2 && l.transpose(0, 1).is_ok_and(|t| t.is_contiguous()) {
        Some(Order::Cols)
    } else {
        None
    }
}

/// W's elements and their order, from a layout in which W's rows or its columns are
/// contiguous.
fn weight_slice<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<(&'a [f32], Order)> {
    match order(l) {
        Some(Order::Cols) => Ok((slice(s, &l.transpose(0, 1)?)?, Order::Cols)),
        _ => Ok((slice(s, l)?, Order::Rows)),
    }
}

/// Run `f` on the f32 data of a CPU weight matrix in its own order (copied to rows if it
/// is in neither).
fn with_weight<R>(w: &Tensor, f: impl FnOnce(&[f32], Order) -> R) -> candle_core::Result<R> {
    let w = match order(w.layout()) {
        Some(_) => w.clone(),
        None => w.contiguous()?,
    };
    let (storage, layout) = w.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("fused op on a non-CPU tensor");
    };
    let (w, order) = weight_slice(cpu, layout)?;
    Ok(f(w, order))
}

/// The same matrix (out, in) with its columns contiguous: `linear` then reads Wᵀ as a
/// row-major right-hand side, gemm's fast case, and packs nothing per call. For weights
/// that only ever go forward (an inference store's): the backward's dx = dy·W would read
/// W the slow way instead. Idempotent, and a copy only if W's columns are not already
/// contiguous.
pub fn columns(w: &Tensor) -> Result<Tensor> {
    Ok(w.t()?.contiguous()?.t()?)
}

thread_local! {
    static COMPOSED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static NO_GRAPH: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Run `f` with this thread's fused ops recording no backward, as `torch.no_grad()`.
/// Evaluating in the middle of training, the parameters are variables, and each op would
/// otherwise keep its inputs until the batch's logits go: a LayerNorm run on RTE peaked at
/// 1.24 GB evaluating at batch 64, against 0.74 GB while training.
pub fn without_graph<R>(f: impl FnOnce() -> R) -> R {
    with_switch(&NO_GRAPH, f)
}

/// Run `f` with a thread-local switch on, restoring it afterwards, panic or not.
fn with_switch<R>(
    switch: &'static std::thread::LocalKey<std::cell::Cell<bool>>,
    f: impl FnOnce() -> R,
) -> R {
    struct Reset(&'static std::thread::LocalKey<std::cell::Cell<bool>>, bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            self.0.with(|c| c.set(self.1));
        }
    }
    let _reset = Reset(switch, switch.with(|c| c.replace(true)));
    f()
}

/// Whether an op on these inputs records its backward: one of them is tracked and the
/// thread is not in `without_graph`.
pub(crate) fn records(inputs: &[&Tensor]) -> bool {
    !NO_GRAPH.with(|c| c.get()) && inputs.iter().any(|t| t.track_op())
}

/// Run `f` with this thread's ops built from candle's compositions, as on CUDA, so that
/// the CPU test suite checks that path against transformers too (tests/it/parity.rs).
#[doc(hidden)]
pub fn with_composed_ops<R>(f: impl FnOnce() -> R) -> R {
    with_switch(&COMPOSED, f)
}

pub(crate) fn fused(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32 && !COMPOSED.with(|c| c.get())
}

/// A vector of `n` floats that `fill(i, chunk)` writes, chunk i of `chunk` elements at a
/// time in parallel, without zero-filling it first: calloc's memset of the GELU and
/// LayerNorm outputs was some 3% of an inference forward in `perf`.
///
/// # Safety
/// `fill` must write every element of each chunk it is given (or panic: then the vector
/// is dropped before its length is set, and nothing uninitialised is read).
unsafe fn par_fill(
    n: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    v.spare_capacity_mut()[..n]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(i, c)| fill(i, c));
    // SAFETY: the capacity is at least n, and every one of the n elements was written: the
    // chunks cover [0, n) and the caller's `fill` writes each chunk whole.
    unsafe { v.set_len(n) };
    v
}

/// Fail with a candle error naming the op unless `ok`: shape checks at the kernels' entry.
fn ensure(ok: bool, msg: impl FnOnce() -> String) -> candle_core::Result<()> {
    if ok {
        Ok(())
    } else {
        Err(candle_core::Error::Msg(msg()))
    }
}

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

// ---------------------------------------------------------------- LayerNorm

struct LayerNormOp {
    eps: f32,
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

// ---------------------------------------------------------------- attention softmax

/// Attention probabilities softmax(scale · scores + mask) for scores (batch, heads, q, k)
/// and a (batch, k) 1/0 padding mask, from candle's ops: where attention::attention does
/// not run (CUDA), and as its reference in tests.
pub fn attention_probs(scores: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
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

// ---------------------------------------------------------------- GELU

struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "peft-gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice(s, l)?;
        // SAFETY: chunk i of the output is beside x's elements [4096·i, 4096·i + o.len()),
        // of o's length, and `simd::gelu` writes every element of an o as long as its x.
        let out = unsafe {
            par_fill(x.len(), 4096, |i, o| {
                simd::gelu(o, &x[i * 4096..][..o.len()])
            })
        };
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        ensure(g.shape() == x.shape(), || {
            format!(
                "gelu backward: gradient {:?} against input {:?}",
                g.dims(),
                x.dims()
            )
        })?;
        let dx = with_slice(x, |x| {
            with_slice(g, |g| {
                let mut dx = vec![0f32; x.len()];
                dx.par_chunks_mut(4096)
                    .zip(x.par_chunks(4096).zip(g.par_chunks(4096)))
                    .for_each(|(d, (x, g))| simd::gelu_backward(d, x, g));
                dx
            })
        })??;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// Exact (erf) GELU, transformers' "gelu".
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if fused(x) {
        let x = x.contiguous()?;
        return Ok(if records(&[&x]) {
            x.apply_op1(GeluErf)?
        } else {
            x.apply_op1_no_bwd(&GeluErf)?
        });
    }
    Ok(x.gelu_erf()?)
}

// ---------------------------------------------------------------- dropout

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

// ---------------------------------------------------------------- frozen matmul

/// An elementwise function applied to x before it enters the gemm (GELU for the FFN output).
type Prologue = fn(&mut [MaybeUninit<f32>], &[f32]);

/// f(x) (rows, in) · Wᵀ (+ b) for row-major x and W (out, in), f a prologue or the
/// identity: each thread takes one tile of the output and makes one single-threaded gemm
/// call that accumulates onto its tile's bias rows: no zero-filled output and no second
/// pass for the bias, which candle's matmul + broadcast_add spend (a sixth of an inference
/// forward in `perf`). gemm's own threading synchronises inside every call, which `perf`
/// showed as spinning.
///
/// The tiles are column blocks (blocks of W's rows) where W has enough rows: gemm packs
/// the W it is given, strided, before the product, and a thread that takes a block of
/// x's rows instead packs the whole of W, each thread again. Splitting W among the
/// threads packs it once (docs/performance.md, "The forward's gemm").
///
/// W's elements lie in `order`: torch's rows, or columns (an inference store's frozen
/// weights, [`columns`]), which gemm reads as a row-major right-hand side, its fast case.
#[allow(clippy::too_many_arguments)]
fn gemm_linear(
    x: &[f32],
    (w, order): (&[f32], Order),
    b: Option<&[f32]>,
    rows: usize,
    d_in: usize,
    d_out: usize,
    prologue: Option<Prologue>,
) -> Vec<f32> {
    assert_eq!(x.len(), rows * d_in, "gemm_linear: x is not (rows, in)");
    assert_eq!(w.len(), d_out * d_in, "gemm_linear: W is not (out, in)");
    if let Some(b) = b {
        assert_eq!(b.len(), d_out, "gemm_linear: b is not (out)");
    }
    let fx;
    let x = match prologue {
        Some(f) => {
            // SAFETY: chunk c of the output is beside x's elements [4096·c, 4096·c +
            // o.len()), of o's length, and the prologues are elementwise kernels that
            // write every element of an o as long as their x.
            fx = unsafe { par_fill(x.len(), 4096, |c, o| f(o, &x[c * 4096..][..o.len()])) };
            &fx[..]
        }
        None => x,
    };
    let tiles = Tiles::new(rows, d_out, rayon::current_num_threads().max(1));
    let mut y: Vec<f32> = Vec::with_capacity(rows * d_out);
    let out = SendPtr(y.as_mut_ptr());
    (0..tiles.count()).into_par_iter().for_each(|t| {
        let (r0, r1, c0, c1) = tiles.tile(t);
        let (nr, nc) = (r1 - r0, c1 - c0);
        if nr == 0 || nc == 0 {
            return;
        }
        // SAFETY: the tiles partition [0, rows) × [0, d_out) (`Tiles::tile`), so rows
        // r0..r1, columns c0..c1 of y (capacity rows·d_out, row-major) belong to this
        // task alone, and row r0's first element is in bounds.
        let dst = unsafe { out.get().add(r0 * d_out + c0) };
        for r in 0..nr {
            // SAFETY: row r of this task's tile: nc elements inside y's capacity, written
            // by no other task; MaybeUninit, so nothing uninitialised is read.
            let row = unsafe {
                std::slice::from_raw_parts_mut(dst.add(r * d_out) as *mut MaybeUninit<f32>, nc)
            };
            match b {
                Some(b) => row.iter_mut().zip(&b[c0..c1]).for_each(|(o, &v)| {
                    o.write(v);
                }),
                None => row.iter_mut().for_each(|o| {
                    o.write(0.0);
                }),
            }
        }
        if d_in == 0 {
            return; // an empty sum: the tile is the bias rows
        }
        let x = &x[r0 * d_in..r1 * d_in];
        // Wᵀ's columns c0..c1: (in, nc) at (row stride, column stride).
        let (w, w_rs, w_cs) = match order {
            Order::Rows => (&w[c0 * d_in..c1 * d_in], 1, d_in),
            Order::Cols => (&w[c0..], d_out, 1),
        };
        // SAFETY: the tile at dst holds (nr, nc) with rows d_out apart, inside y and
        // initialised above (read with alpha 1), written by this task only; x's slice
        // holds (nr, in) row-major; W's slice holds Wᵀ's (in, nc) block at (w_rs, w_cs):
        // rows, (nc, in) row-major read with row stride 1 and column stride in; columns,
        // the (in, out) matrix from column c0 on, whose last element read, (in − 1)·out +
        // c1 − 1 − c0, is inside it. Every index gemm forms from these dimensions and
        // strides is in bounds, and neither shared input overlaps y.
        unsafe {
            gemm::gemm(
                nr,
                nc,
                d_in,
                dst,
                1,
                d_out as isize,
                true,
                x.as_ptr(),
                1,
                d_in as isize,
                w.as_ptr(),
                w_cs as isize,
                w_rs as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    });
    // SAFETY: the tiles partition the rows·d_out elements (`Tiles::tile`, checked by
    // `tiles_partition_the_output`) and each task wrote its whole tile, bias or zero
    // first, before the parallel loop returned.
    unsafe { y.set_len(rows * d_out) };
    y
}

/// y's buffer, shared by the tasks of `gemm_linear`, each of which writes its own tile.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: only `gemm_linear` makes one, and its tasks write disjoint tiles through it.
unsafe impl Send for SendPtr {}
// SAFETY: as for Send.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// How `gemm_linear` splits a (rows, out) product among `threads`: into as many column
/// blocks as the columns allow at 128 or more each (block edges a multiple of 16, the
/// microkernel's height), then each column block into row blocks for the other threads.
struct Tiles {
    rows: usize,
    cols: usize,
    row_blocks: usize,
    col_blocks: usize,
    col_step: usize,
}

impl Tiles {
    fn new(rows: usize, cols: usize, threads: usize) -> Self {
        let col_blocks = (cols / 128).clamp(1, threads);
        let row_blocks = threads.div_ceil(col_blocks).clamp(1, rows.max(1));
        let col_step = cols.div_ceil(col_blocks).next_multiple_of(16).max(1);
        Self {
            rows,
            cols,
            row_blocks,
            col_blocks,
            col_step,
        }
    }

    fn count(&self) -> usize {
        self.row_blocks * self.col_blocks
    }

    /// Tile t's rows [r0, r1) and columns [c0, c1). The tiles partition the matrix: row
    /// blocks by proportional bounds, column blocks at multiples of `col_step`, the last
    /// running to the end (a tile may be empty).
    fn tile(&self, t: usize) -> (usize, usize, usize, usize) {
        let (rb, cb) = (t / self.col_blocks, t % self.col_blocks);
        let r0 = rb * self.rows / self.row_blocks;
        let r1 = (rb + 1) * self.rows / self.row_blocks;
        let c0 = (cb * self.col_step).min(self.cols);
        let c1 = if cb + 1 == self.col_blocks {
            self.cols
        } else {
            ((cb + 1) * self.col_step).min(self.cols)
        };
        (r0, r1, c0, c1)
    }
}

/// y = x·Wᵀ + b in one op for every combination of what trains. Forward is one gemm onto
/// the bias rows; backward computes by direct gemm calls only what trains: dx = dy·W if x
/// needs it, dW = dyᵀ·x if W trains, db = Σ dy if b does. candle's matmul + broadcast_add
/// instead zero-fill each product, add the bias in a second pass, and compute and keep a
/// gradient for W even when nobody trains it (`tests/it/frozen.rs`).
struct LinearOp {
    /// The CPU's gemm kernels below (f32 on the CPU); else the backend's own matmul
    /// (`backend_linear`: CUDA, bf16, and the CPU under `with_composed_ops`), whose
    /// backward is tensor ops, still only for what trains.
    fused: bool,
    /// y = GELU(x)·Wᵀ + b instead, exact GELU: the feed-forward block's output dense with
    /// its activation inside. GELU(x) then exists only per thread in the forward and is
    /// recomputed in the backward, where dW needs it: the graph kept both x and GELU(x)
    /// (25 MB each a layer at 32 × 128 × 1536), now only x. The same kernels and gemm
    /// calls as GELU then a linear, so the same numbers.
    gelu_input: bool,
    x_grad: bool,
    w_grad: bool,
    b_grad: bool,
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "peft-linear"
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
        if !self.fused {
            return backend_linear((xs, xl), (ws, wl), (bs, bl));
        }
        let (x, w, b) = (slice(xs, xl)?, weight_slice(ws, wl)?, slice(bs, bl)?);
        let (rows, d_in, d_out) = linear_dims(xl, wl, b.len())?;
        let prologue = self.gelu_input.then_some(simd::gelu as Prologue);
        let y = gemm_linear(x, w, Some(b), rows, d_in, d_out, prologue);
        Ok((CpuStorage::F32(y), Shape::from((rows, d_out))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        ws: &candle_core::CudaStorage,
        wl: &Layout,
        bs: &candle_core::CudaStorage,
        bl: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        backend_linear((xs, xl), (ws, wl), (bs, bl))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        if !self.fused {
            ensure(!self.gelu_input, || {
                "linear backward: GELU inside runs on the CPU's kernels only".into()
            })?;
            // dx = g·W, dW = gᵀ·x, db = Σ g over rows, each only if it trains.
            return Ok((
                self.x_grad.then(|| g.matmul(w)).transpose()?,
                self.w_grad.then(|| g.t()?.matmul(x)).transpose()?,
                self.b_grad.then(|| g.sum(0)).transpose()?,
            ));
        }
        let (d_out, d_in) = w.dims2()?;
        let (rows, x_in) = x.dims2()?;
        ensure(x_in == d_in && g.dims() == [rows, d_out], || {
            format!(
                "linear backward: input {:?}, weight {:?}, gradient {:?}",
                x.dims(),
                w.dims(),
                g.dims()
            )
        })?;
        let (dx, dw, db) = with_slice(g, |g| {
            with_slice(x, |x| {
                with_weight(w, |w, order| {
                    // dx (rows, in) = g (rows, out) · W (out, in), ⊙ GELU'(x) with GELU
                    let dx = self.x_grad.then(|| {
                        let w = match order {
                            Order::Rows => (w, d_in, 1),
                            Order::Cols => (w, 1, d_out),
                        };
                        let mut dx = gemm(rows, d_out, d_in, (g, d_out, 1), w);
                        if self.gelu_input {
                            dx.par_chunks_mut(4096)
                                .zip(x.par_chunks(4096))
                                .for_each(|(d, x)| simd::gelu_backward_in_place(d, x));
                        }
                        dx
                    });
                    // dW (out, in) = gᵀ (out, rows) · x (rows, in), GELU(x) recomputed
                    let dw = self.w_grad.then(|| {
                        let gelu;
                        let x = if self.gelu_input {
                            // SAFETY: chunk c of the output is beside x's elements
                            // [4096·c, 4096·c + o.len()), of o's length, and `simd::gelu`
                            // writes every element of an o as long as its x.
                            gelu = unsafe {
                                par_fill(x.len(), 4096, |c, o| {
                                    simd::gelu(o, &x[c * 4096..][..o.len()])
                                })
                            };
                            &gelu[..]
                        } else {
                            x
                        };
                        gemm(d_out, rows, d_in, (g, 1, d_out), (x, d_in, 1))
                    });
                    let db = self.b_grad.then(|| bias_grad(g, d_out));
                    (dx, dw, db)
                })
            })
        })???;
        let dev = x.device();
        Ok((
            dx.map(|v| Tensor::from_vec(v, x.shape(), dev))
                .transpose()?,
            dw.map(|v| Tensor::from_vec(v, (d_out, d_in), dev))
                .transpose()?,
            db.map(|v| Tensor::from_vec(v, d_out, dev)).transpose()?,
        ))
    }
}

/// y = x·Wᵀ + b by the backend's own matmul (cuBLAS on CUDA, which reads Wᵀ as W's layout
/// transposed, op T, no copy) and its broadcast add, in the inputs' dtype: one code path
/// for CUDA and bf16, which the CPU runs too (bf16, `with_composed_ops`), so the CPU tests
/// check what the GPU runs up to the backend itself.
fn backend_linear<S: BackendStorage>(
    (xs, xl): (&S, &Layout),
    (ws, wl): (&S, &Layout),
    (bs, bl): (&S, &Layout),
) -> candle_core::Result<(S, Shape)> {
    let (rows, d_in, d_out) = linear_dims(xl, wl, bl.shape().elem_count())?;
    let shape = Shape::from((rows, d_out));
    let y = xs.matmul(ws, (1, rows, d_out, d_in), xl, &wl.transpose(0, 1)?)?;
    let y = y.binary_impl::<candle_core::op::Add>(
        bs,
        &Layout::contiguous(&shape),
        &bl.broadcast_as(&shape)?,
    )?;
    Ok((y, shape))
}

/// Σ over rows of g (rows, out).
fn bias_grad(g: &[f32], d_out: usize) -> Vec<f32> {
    let mut db = vec![0f32; d_out];
    for row in g.chunks_exact(d_out) {
        db.iter_mut().zip(row).for_each(|(a, v)| *a += v);
    }
    db
}

/// (rows, in, out) of x (rows, in) against W (out, in) and a bias of `b_len`.
fn linear_dims(
    xl: &Layout,
    wl: &Layout,
    b_len: usize,
) -> candle_core::Result<(usize, usize, usize)> {
    match (xl.dims(), wl.dims()) {
        (&[rows, d_in], &[d_out, w_in]) if w_in == d_in && b_len == d_out => {
            Ok((rows, d_in, d_out))
        }
        (x, w) => candle_core::bail!("linear: input {x:?} against weight {w:?} and bias ({b_len})"),
    }
}

/// A matrix in a slice: (data, row stride, column stride).
pub(crate) type Strided<'a> = (&'a [f32], usize, usize);

/// (m, k) · (k, n) into a new row-major (m, n).
fn gemm(m: usize, k: usize, n: usize, lhs: Strided, rhs: Strided) -> Vec<f32> {
    let mut dst = vec![0f32; m * n];
    gemm_into(&mut dst, n, m, k, n, lhs, rhs, parallelism());
    dst
}

/// dst (m, n), rows `dst_rs` apart, = lhs (m, k) · rhs (k, n), overwriting dst.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_into(
    dst: &mut [f32],
    dst_rs: usize,
    m: usize,
    k: usize,
    n: usize,
    lhs: Strided,
    rhs: Strided,
    parallelism: gemm::Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    // Whether a (r, c) matrix at these strides fits in `len` elements: its last element,
    // (r − 1)·rs + (c − 1)·cs, is an index of the slice (no overflow: r and c are ≥ 1).
    let fits = |len: usize, rs: usize, cs: usize, r: usize, c: usize| {
        (r - 1)
            .checked_mul(rs)
            .zip((c - 1).checked_mul(cs))
            .and_then(|(a, b)| a.checked_add(b))
            .is_some_and(|last| last < len)
    };
    // The callers check their shapes first: these are the last line against a bug.
    assert!(fits(dst.len(), dst_rs, 1, m, n), "gemm: dst out of bounds");
    if k == 0 {
        dst.chunks_mut(dst_rs)
            .take(m)
            .for_each(|r| r[..n].fill(0.0));
        return;
    }
    assert!(
        fits(lhs.0.len(), lhs.1, lhs.2, m, k),
        "gemm: lhs out of bounds"
    );
    assert!(
        fits(rhs.0.len(), rhs.1, rhs.2, k, n),
        "gemm: rhs out of bounds"
    );
    // SAFETY: m, n, k ≥ 1, and the asserts put the last element each matrix's strides
    // reach (so every element, the strides being non-negative) inside dst, lhs and rhs;
    // dst is exclusively borrowed, so it does not overlap the shared lhs and rhs; with
    // read_dst false gemm only writes dst.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            false,
            lhs.0.as_ptr(),
            lhs.2 as isize,
            lhs.1 as isize,
            rhs.0.as_ptr(),
            rhs.2 as isize,
            rhs.1 as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

pub(crate) fn parallelism() -> gemm::Parallelism {
    match rayon::current_num_threads() {
        1 => gemm::Parallelism::None,
        n => gemm::Parallelism::Rayon(n),
    }
}

/// GELU(z) (rows, in) · Wᵀ + b with exact GELU; what trains as in `linear`.
pub fn gelu_linear(z: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if !fused(z) {
        return linear(&gelu_erf(z)?, weight, Some(bias));
    }
    linear_op(z, weight, bias, true)
}

/// `x` (rows, in) · Wᵀ + b. The graph records only the gradients of what trains (x, a W
/// or b that is a variable), on every device: no gradient for a frozen W; if nothing
/// trains, the result is a plain tensor.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let mut zeros = None;
    let bias = bias_or_zeros(weight, bias, &mut zeros)?;
    let op = LinearOp::new(x, weight, bias, false);
    op.apply(x, weight, bias)
}

/// `linear` with the product in bf16, autocast's linear: x, W and b rounded to bf16, the
/// product accumulated in f32 (cuBLAS on tensor cores; candle's CPU matmul widens), and
/// the result widened back to f32 at once, where autocast keeps it in bf16. Gradients
/// reach the f32 variables through the casts; a frozen W still gets none.
pub fn linear_bf16(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let mut zeros = None;
    let bias = bias_or_zeros(weight, bias, &mut zeros)?;
    let op = LinearOp {
        fused: false,
        ..LinearOp::new(x, weight, bias, false)
    };
    let [x, weight, bias] = [x, weight, bias].map(|t| t.to_dtype(DType::BF16));
    Ok(op.apply(&x?, &weight?, &bias?)?.to_dtype(DType::F32)?)
}

/// a·b with the product in bf16 and the result f32, as `linear_bf16` (attention's
/// q·kᵀ and p·v); candle's matmul, so both sides get their gradients.
pub fn matmul_bf16(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let half = |t: &Tensor| t.to_dtype(DType::BF16);
    Ok(half(a)?.matmul(&half(b)?)?.to_dtype(DType::F32)?)
}

/// The bias, or zeros of W's output size in `slot` (the op always takes one).
fn bias_or_zeros<'a>(
    weight: &Tensor,
    bias: Option<&'a Tensor>,
    slot: &'a mut Option<Tensor>,
) -> Result<&'a Tensor> {
    Ok(match bias {
        Some(b) => b,
        None => slot.insert(Tensor::zeros(
            weight.dim(0)?,
            weight.dtype(),
            weight.device(),
        )?),
    })
}

impl LinearOp {
    /// What trains, from the tensors as the model holds them (a variable's bf16 cast is
    /// tracked but no variable), and which path: the CPU's kernels for f32 on the CPU.
    fn new(x: &Tensor, weight: &Tensor, bias: &Tensor, gelu_input: bool) -> Self {
        LinearOp {
            fused: fused(x),
            gelu_input,
            x_grad: records(&[x]),
            w_grad: records(&[weight]) && weight.is_variable(),
            b_grad: records(&[bias]) && bias.is_variable(),
        }
    }

    /// The op on these tensors, recording a backward only if something trains.
    fn apply(self, x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        Ok(if self.x_grad || self.w_grad || self.b_grad {
            x.apply_op3(weight, bias, self)?
        } else {
            x.apply_op3_no_bwd(weight, bias, &self)?
        })
    }
}

/// The fused CPU linear with GELU inside, recording the gradients of what trains.
fn linear_op(x: &Tensor, weight: &Tensor, bias: &Tensor, gelu_input: bool) -> Result<Tensor> {
    LinearOp::new(x, weight, bias, gelu_input).apply(x, weight, bias)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::{Device, Var};

    pub(crate) fn rand(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| ((mix(seed * 1_000_003 + i as u64) % 2000) as f32 / 1000.0) - 1.0)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Gradients of Σ y ⊙ probe: a random direction, so every output element counts.
    /// The variable itself if it trains, else a detached (frozen) view of it.
    fn as_trained(v: &Var, trains: bool) -> Tensor {
        if trains {
            v.as_tensor().clone()
        } else {
            v.as_tensor().detach()
        }
    }

    pub(crate) fn probe_grads(y: &Tensor, probe: &Tensor) -> candle_core::backprop::GradStore {
        (y * probe).unwrap().sum_all().unwrap().backward().unwrap()
    }

    pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        crate::stats::max_abs(&(a - b).unwrap()).unwrap()
    }

    /// Gradients of sum(f(x) ⊙ probe) through the fused op and through the composition.
    fn grads(f: impl Fn(&Tensor) -> Tensor, x: &Tensor, probe: &Tensor) -> (Tensor, Tensor) {
        let v = Var::from_tensor(x).unwrap();
        let y = f(v.as_tensor());
        let g = (&y * probe).unwrap().sum_all().unwrap().backward().unwrap();
        (y, g.get(v.as_tensor()).unwrap().clone())
    }

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

    #[test]
    fn kernels_refuse_shapes_they_cannot_fill() {
        let (x, w) = (rand(&[3, 4], 50), rand(&[4], 51));
        // LayerNorm: a gain or bias of another length, forward and backward.
        assert!(layer_norm(&x, &rand(&[5], 52), &w, 1e-5).is_err());
        assert!(layer_norm(&x, &w, &rand(&[3], 52), 1e-5).is_err());
        assert!(layer_norm(&rand(&[12], 53), &w, &w, 1e-5).is_err());
        let op = LayerNormOp { eps: 1e-5 };
        let y = layer_norm(&x, &w, &w, 1e-5).unwrap();
        assert!(op.bwd(&x, &w, &w, &y, &rand(&[3, 5], 54)).is_err());
        assert!(op.bwd(&x, &w, &rand(&[3], 55), &y, &y).is_err());
        assert!(op.bwd(&x, &w, &w, &y, &y).is_ok());
        // GELU's and the linear's backward: a gradient of another shape.
        assert!(GeluErf.bwd(&x, &x, &rand(&[3, 3], 56)).is_err());
        let (wl, b) = (rand(&[2, 4], 57), rand(&[2], 58));
        let lin = LinearOp {
            fused: true,
            gelu_input: false,
            x_grad: true,
            w_grad: true,
            b_grad: true,
        };
        let out = linear(&x, &wl, Some(&b)).unwrap();
        assert!(lin.bwd(&x, &wl, &b, &out, &rand(&[3, 3], 59)).is_err());
        assert!(lin.bwd(&x, &rand(&[2, 5], 60), &b, &out, &out).is_err());
        assert!(lin.bwd(&x, &wl, &b, &out, &out).is_ok());
        // The linear's forward: another width, another bias length.
        assert!(linear(&x, &rand(&[2, 5], 61), Some(&b)).is_err());
        assert!(linear(&x, &wl, Some(&rand(&[3], 62))).is_err());
        // dropout + residual of two shapes with one element count.
        let op = DropoutOp::new(0.1, 1);
        assert!(dropout_add(&x, &rand(&[4, 3], 63), Some(op)).is_err());
    }

    #[test]
    fn a_linear_without_inputs_is_its_bias() {
        let x = Tensor::zeros((3, 0), DType::F32, &Device::Cpu).unwrap();
        let w = Tensor::zeros((2, 0), DType::F32, &Device::Cpu).unwrap();
        let b = rand(&[2], 64);
        let y = linear(&x, &w, Some(&b)).unwrap();
        let want = b.unsqueeze(0).unwrap().broadcast_as((3, 2)).unwrap();
        assert_eq!(max_diff(&y, &want), 0.0);
    }

    #[test]
    fn tiles_partition_the_output() {
        for (rows, cols, threads) in [
            (1, 1, 1),
            (7, 2, 2),
            (1, 1000, 16),
            (300, 300, 2),
            (5, 300, 3),
            (1024, 768, 2),
            (512, 4096, 16),
            (3, 130, 64),
        ] {
            let tiles = Tiles::new(rows, cols, threads);
            assert!(
                tiles.count() <= threads.max(1) * 2,
                "{rows}x{cols}/{threads}"
            );
            let mut hits = vec![0u8; rows * cols];
            for t in 0..tiles.count() {
                let (r0, r1, c0, c1) = tiles.tile(t);
                assert!(r0 <= r1 && r1 <= rows && c0 <= c1 && c1 <= cols);
                for r in r0..r1 {
                    hits[r * cols + c0..r * cols + c1]
                        .iter_mut()
                        .for_each(|h| *h += 1);
                }
            }
            assert!(
                hits.iter().all(|&h| h == 1),
                "{rows}x{cols} on {threads} threads"
            );
        }
    }

    #[test]
    fn a_tiled_linear_matches_the_sum_on_any_thread_count() {
        // Wide enough for column tiles, rows not a multiple of anything.
        let (rows, d_in, d_out) = (37, 24, 300);
        let (x, w, b) = (
            rand(&[rows, d_in], 70),
            rand(&[d_out, d_in], 71),
            rand(&[d_out], 72),
        );
        let (xv, wv, bv) = (
            x.to_vec2::<f32>().unwrap(),
            w.to_vec2::<f32>().unwrap(),
            b.to_vec1::<f32>().unwrap(),
        );
        let cols = columns(&w).unwrap();
        for (threads, w) in [1, 2, 3, 5].into_iter().flat_map(|n| [(n, &w), (n, &cols)]) {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let y = pool.install(|| linear(&x, w, Some(&b)).unwrap());
            let y = y.to_vec2::<f32>().unwrap();
            for r in 0..rows {
                for o in 0..d_out {
                    let want: f64 = bv[o] as f64
                        + (0..d_in)
                            .map(|i| xv[r][i] as f64 * wv[o][i] as f64)
                            .sum::<f64>();
                    let got = y[r][o] as f64;
                    assert!((got - want).abs() < 1e-4, "{threads} threads, ({r}, {o})");
                }
            }
        }
    }

    #[test]
    fn gemm_refuses_strides_that_leave_its_slices() {
        let run = |dst_len: usize, lhs_len: usize| {
            std::panic::catch_unwind(|| {
                let mut dst = vec![0f32; dst_len];
                let (lhs, rhs) = (vec![1f32; lhs_len], vec![1f32; 6]);
                gemm_into(
                    &mut dst,
                    3,
                    2,
                    2,
                    3,
                    (&lhs, 2, 1),
                    (&rhs, 3, 1),
                    gemm::Parallelism::None,
                );
                dst
            })
        };
        assert_eq!(run(6, 4).unwrap(), vec![2.0; 6]);
        assert!(run(5, 4).is_err(), "dst one short");
        assert!(run(6, 3).is_err(), "lhs one short");
        // Strides whose last index overflows usize are refused, not wrapped.
        let huge = std::panic::catch_unwind(|| {
            let mut dst = vec![0f32; 4];
            let one = [1f32; 3];
            gemm_into(
                &mut dst,
                usize::MAX,
                3,
                1,
                1,
                (&one, 1, 1),
                (&one, 1, 1),
                gemm::Parallelism::None,
            );
        });
        assert!(huge.is_err());
    }

    #[test]
    fn gelu_matches_candle_with_gradient() {
        let x = (rand(&[1000], 7) * 4.0).unwrap();
        let probe = rand(&[1000], 8);
        let (yf, gf) = grads(|x| gelu_erf(x).unwrap(), &x, &probe);
        let (yc, gc) = grads(|x| x.gelu_erf().unwrap(), &x, &probe);
        assert!(max_diff(&yf, &yc) < 1e-6, "{}", max_diff(&yf, &yc));
        assert!(max_diff(&gf, &gc) < 1e-5, "{}", max_diff(&gf, &gc));
    }

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

    #[test]
    fn frozen_linear_gives_input_gradient_only() {
        let x = rand(&[7, 5], 10);
        let w = rand(&[3, 5], 11);
        let b = rand(&[3], 12);
        let probe = rand(&[7, 3], 13);
        let cols = columns(&w).unwrap();
        assert_eq!(order(cols.layout()), Some(Order::Cols));
        assert_eq!(order(w.layout()), Some(Order::Rows));
        // W stored by rows and by columns: the same products, forward and backward.
        let (yf, gf) = grads(|x| linear(x, &w, Some(&b)).unwrap(), &x, &probe);
        let (yk, gk) = grads(|x| linear(x, &cols, Some(&b)).unwrap(), &x, &probe);
        assert!(max_diff(&yf, &yk) < 1e-6, "{}", max_diff(&yf, &yk));
        assert!(max_diff(&gf, &gk) < 1e-6);
        let (yc, gc) = grads(
            |x| {
                x.matmul(&w.t().unwrap())
                    .unwrap()
                    .broadcast_add(&b)
                    .unwrap()
            },
            &x,
            &probe,
        );
        assert!(max_diff(&yf, &yc) < 1e-6);
        assert!(max_diff(&gf, &gc) < 1e-5);
    }

    /// Each variable that trains (`flags`) has an f32 gradient in `got` within `tol` of
    /// `want`'s; the others have none.
    fn assert_grads_of_what_trains(
        vars: &[Var],
        flags: [bool; 3],
        got: &candle_core::backprop::GradStore,
        want: &candle_core::backprop::GradStore,
        tol: f32,
    ) {
        for (v, yes) in vars.iter().zip(flags) {
            match (got.get(v), yes) {
                (Some(a), true) => {
                    assert_eq!(a.dtype(), DType::F32);
                    let d = max_diff(a, want.get(v).unwrap());
                    assert!(d <= tol, "{flags:?}: gradient off by {d}");
                }
                (None, false) => {}
                (got, _) => panic!("{flags:?}: gradient {:?}", got.is_some()),
            }
        }
    }

    #[test]
    fn linear_matches_candle_with_the_gradients_of_what_trains() {
        linear_case();
        // The backend's matmul and tensor-op backward: what CUDA runs.
        with_composed_ops(linear_case);
    }

    fn linear_case() {
        let probe = rand(&[9, 4], 23);
        // (x, W, b) trains: full, frozen bias, frozen input, BitFit, BitFit on the first layer.
        for flags in [
            [true, true, true],
            [true, true, false],
            [false, true, true],
            [true, false, true],
            [false, false, true],
        ] {
            let vars = [rand(&[9, 6], 20), rand(&[4, 6], 21), rand(&[4], 22)]
                .map(|t| Var::from_tensor(&t).unwrap());
            let [x, w, b] = [0, 1, 2].map(|i| as_trained(&vars[i], flags[i]));
            let ours = linear(&x, &w, Some(&b)).unwrap();
            let theirs = x
                .matmul(&w.t().unwrap())
                .unwrap()
                .broadcast_add(&b)
                .unwrap();
            assert!(max_diff(&ours, &theirs) < 1e-6);
            let g1 = probe_grads(&ours, &probe);
            let g2 = probe_grads(&theirs, &probe);
            assert_grads_of_what_trains(&vars, flags, &g1, &g2, 1e-5);
        }
    }

    #[test]
    fn a_bf16_linear_rounds_its_inputs_and_trains_what_trains() {
        let probe = rand(&[9, 4], 43);
        // (x, W, b) trains: full, LayerNorm-only (x alone), BitFit.
        for flags in [
            [true, true, true],
            [true, false, false],
            [true, false, true],
        ] {
            let vars = [rand(&[9, 6], 40), rand(&[4, 6], 41), rand(&[4], 42)]
                .map(|t| Var::from_tensor(&t).unwrap());
            let [x, w, b] = [0, 1, 2].map(|i| as_trained(&vars[i], flags[i]));
            let ours = linear_bf16(&x, &w, Some(&b)).unwrap();
            assert_eq!(ours.dtype(), DType::F32);
            // The same product of the bf16-rounded inputs in f32, rounded to bf16.
            let r = |t: &Tensor| {
                t.to_dtype(DType::BF16)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap()
            };
            let want = r(&r(&x).matmul(&r(&w).t().unwrap()).unwrap())
                .broadcast_add(&r(&b))
                .unwrap();
            let want = r(&want);
            assert!(max_diff(&ours, &want) < 1e-6, "{}", max_diff(&ours, &want));
            // Within bf16's precision of the f32 product.
            let exact = x
                .matmul(&w.t().unwrap())
                .unwrap()
                .broadcast_add(&b)
                .unwrap();
            assert!(max_diff(&ours, &exact) < 0.05);
            let g = probe_grads(&ours, &probe);
            let exact_g = probe_grads(&exact, &probe);
            assert_grads_of_what_trains(&vars, flags, &g, &exact_g, 0.1);
        }
    }

    #[test]
    fn gelu_linear_is_gelu_then_linear_bit_for_bit() {
        let probe = rand(&[70, 5], 33);
        for flags in [
            [true, true, true],
            [true, false, false],
            [false, true, true],
        ] {
            let vars = [rand(&[70, 9], 30), rand(&[5, 9], 31), rand(&[5], 32)]
                .map(|t| Var::from_tensor(&(t * 3.0).unwrap()).unwrap());
            let [z, w, b] = [0, 1, 2].map(|i| as_trained(&vars[i], flags[i]));
            let fused = gelu_linear(&z, &w, &b).unwrap();
            let apart = linear(&gelu_erf(&z).unwrap(), &w, Some(&b)).unwrap();
            assert_eq!(max_diff(&fused, &apart), 0.0, "{flags:?}");
            let (g1, g2) = (probe_grads(&fused, &probe), probe_grads(&apart, &probe));
            assert_grads_of_what_trains(&vars, flags, &g1, &g2, 0.0);
        }
    }

    #[test]
    fn without_graph_records_nothing_even_for_variables() {
        let x = rand(&[6, 8], 40);
        let [w, b, lw, lb] = [
            rand(&[8, 8], 41),
            rand(&[8], 42),
            rand(&[8], 43),
            rand(&[8], 44),
        ]
        .map(|t| Var::from_tensor(&t).unwrap());
        let forward = || {
            let h = layer_norm(&x, lw.as_tensor(), lb.as_tensor(), 1e-12).unwrap();
            let y = linear(&h, w.as_tensor(), Some(b.as_tensor())).unwrap();
            let y = gelu_linear(&gelu_erf(&y).unwrap(), w.as_tensor(), b.as_tensor()).unwrap();
            dropout_add(&y, &h, None).unwrap()
        };
        assert!(forward().track_op(), "variables are tracked by default");
        assert!(!without_graph(forward).track_op());
        // The switch is restored afterwards.
        assert!(forward().track_op());
        assert_eq!(max_diff(&forward(), &without_graph(forward)), 0.0);
    }
}
