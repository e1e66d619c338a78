//! Fused CPU kernels with hand-written backward passes.
//!
//! candle composes LayerNorm, softmax, GELU and dropout from many small single-threaded
//! ops, each of which keeps its inputs for backward and computes a gradient for every
//! float input, frozen or not. These kernels do each in one parallel pass and record a
//! backward that returns only what is needed: a frozen matmul returns no weight gradient,
//! and the attention mask and dropout mask get none. On other devices (CUDA) the same
//! functions fall back to differentiable compositions. `tests/it/parity.rs` checks the
//! gradients of both paths against transformers; the unit tests beside each kernel check
//! it against its composition.
//!
//! This file holds what the kernels share: their inputs' f32 storage, the thread's
//! switches (the fused ops or candle's compositions, a backward recorded or not), an
//! output filled in parallel without zeroing it first, and the shape checks at their entry.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, DType, Layout, Storage, Tensor};
use rayon::prelude::*;

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
pub(crate) unsafe fn par_fill(
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
pub(crate) fn ensure(ok: bool, msg: impl FnOnce() -> String) -> candle_core::Result<()> {
    if ok {
        Ok(())
    } else {
        Err(candle_core::Error::Msg(msg()))
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Helpers for the kernels' unit tests (and the optimizer's).

    use candle_core::{Device, Tensor, Var};

    use crate::kernels::simd::mix;

    pub(crate) fn rand(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| ((mix(seed * 1_000_003 + i as u64) % 2000) as f32 / 1000.0) - 1.0)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Gradients of Σ y ⊙ probe: a random direction, so every output element counts.
    /// The variable itself if it trains, else a detached (frozen) view of it.
    pub(crate) fn as_trained(v: &Var, trains: bool) -> Tensor {
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
    pub(crate) fn grads(
        f: impl Fn(&Tensor) -> Tensor,
        x: &Tensor,
        probe: &Tensor,
    ) -> (Tensor, Tensor) {
        let v = Var::from_tensor(x).unwrap();
        let y = f(v.as_tensor());
        let g = (&y * probe).unwrap().sum_all().unwrap().backward().unwrap();
        (y, g.get(v.as_tensor()).unwrap().clone())
    }
}
