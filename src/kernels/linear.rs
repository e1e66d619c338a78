//! The linear op y = x·Wᵀ + b, and GELU(x)·Wᵀ + b (the feed-forward block's output dense
//! with its activation inside), on every device in f32 and bf16: one custom op whose
//! backward computes the gradients of only what trains, the CPU's by direct gemm calls,
//! other devices' by the backend's matmul.

use anyhow::Result;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::common::{ensure, fused, par_fill, records, slice, with_slice};
use super::gelu::gelu_erf;
use super::matmul::{gemm, gemm_linear, weight_slice, with_weight, Order, Prologue};
use super::simd;

/// The same matrix (out, in) with its columns contiguous: `linear` then reads Wᵀ as a
/// row-major right-hand side, gemm's fast case, and packs nothing per call. For weights
/// that only ever go forward (an inference store's): the backward's dx = dy·W would read
/// W the slow way instead. Idempotent: W itself (the same tensor, which `peft serve`'s
/// stacked models recognise as shared) when its columns are already contiguous.
pub fn columns(w: &Tensor) -> Result<Tensor> {
    if w.rank() == 2 && w.t()?.is_contiguous() {
        return Ok(w.clone());
    }
    Ok(w.t()?.contiguous()?.t()?)
}

/// y = x·Wᵀ + b in one op for every combination of what trains. Forward is one gemm onto
/// the bias rows; backward computes by direct gemm calls only what trains: dx = dy·W if x
/// needs it, dW = dyᵀ·x if W trains, db = Σ dy if b does. candle's matmul + broadcast_add
/// instead zero-fill each product, add the bias in a second pass, and compute and keep a
/// gradient for W even when nobody trains it (`tests/it/frozen.rs`).
pub(super) struct LinearOp {
    /// The CPU's gemm kernels below (f32 on the CPU); else the backend's own matmul
    /// (`backend_linear`: CUDA, bf16, and the CPU under `with_composed_ops`), whose
    /// backward is tensor ops, still only for what trains.
    pub(super) fused: bool,
    /// y = GELU(x)·Wᵀ + b instead, exact GELU: the feed-forward block's output dense with
    /// its activation inside. GELU(x) then exists only per thread in the forward and is
    /// recomputed in the backward, where dW needs it: the graph kept both x and GELU(x)
    /// (25 MB each a layer at 32 × 128 × 1536), now only x. The same kernels and gemm
    /// calls as GELU then a linear, so the same numbers.
    pub(super) gelu_input: bool,
    pub(super) x_grad: bool,
    pub(super) w_grad: bool,
    pub(super) b_grad: bool,
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
mod tests {
    use super::*;
    use crate::kernels::common::testing::{as_trained, grads, max_diff, probe_grads, rand};
    use crate::kernels::common::with_composed_ops;
    use crate::kernels::matmul::order;
    use candle_core::{Device, Var};

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
            // What trains gets a gradient, within bf16's error of the exact one element
            // by element: each product term carries three roundings of relative 2⁻⁸
            // (the incoming gradient, the other operand, the bf16 result), so
            // |got − exact| ≤ 3·2⁻⁸·Σ|g||other| (plus f32 summation, 1e-6).
            let abs = |t: &Tensor| t.abs().unwrap();
            let p = abs(&probe);
            let bounds = [
                p.matmul(&abs(vars[1].as_tensor())).unwrap(),
                p.t().unwrap().matmul(&abs(vars[0].as_tensor())).unwrap(),
                p.sum(0).unwrap(),
            ];
            for ((v, yes), bound) in vars.iter().zip(flags).zip(&bounds) {
                match (g.get(v), yes) {
                    (Some(a), true) => {
                        let err = (a - exact_g.get(v).unwrap()).unwrap().abs().unwrap();
                        let slack = ((bound * (3.0 / 256.0)).unwrap() + 1e-6).unwrap();
                        let over = (err - slack).unwrap().max_all().unwrap();
                        assert!(
                            over.to_scalar::<f32>().unwrap() <= 0.0,
                            "{flags:?}: gradient beyond bf16's error"
                        );
                    }
                    (None, false) => {}
                    (got, _) => panic!("{flags:?}: gradient {:?}", got.is_some()),
                }
            }
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
}
