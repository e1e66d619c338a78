//! The CUDA side of the hand-written ops whose result must not depend on the device.
//!
//! Dropout's mask is a hash of (seed, call, element index) (dropout::DropoutOp). This kernel
//! computes the same hash on the GPU, so a run draws the same masks on either device and
//! no mask is built on the host and copied over (which had made a GPU step 10x slower
//! than PyTorch's). Compiled once per process with NVRTC, as candle does not ship it.

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{cudarc, WrapErr};
use candle_core::{CudaStorage, Layout, Shape};

const DROPOUT: &str = r#"
extern "C" __global__ void peft_dropout(const float* x, float* y, unsigned long long n,
        unsigned long long key, unsigned long long threshold, float scale) {
    unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         i < n; i += stride) {
        unsigned long long z = key ^ (i * 0x9e3779b97f4a7c15ULL);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        z ^= z >> 31;
        y[i] = z < threshold ? x[i] * scale : 0.0f;
    }
}
"#;

fn dropout_ptx() -> candle_core::Result<&'static str> {
    static PTX: OnceLock<Result<String, String>> = OnceLock::new();
    PTX.get_or_init(|| {
        cudarc::nvrtc::compile_ptx(DROPOUT)
            .map(|p| p.to_src())
            .map_err(|e| e.to_string())
    })
    .as_deref()
    .map_err(|e| candle_core::Error::Msg(format!("compiling the dropout kernel: {e}")))
}

/// Dropout (the mask key, the keep threshold, the survivors' scale) applied to a
/// contiguous f32 tensor on the GPU.
pub(super) fn dropout(
    (key, threshold, scale): (u64, u64, f32),
    s: &CudaStorage,
    l: &Layout,
) -> candle_core::Result<(CudaStorage, Shape)> {
    let dev = s.device();
    let n = l.shape().elem_count();
    let (start, _) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("dropout: not contiguous".into()))?;
    let x = s.as_cuda_slice::<f32>()?.slice(start..);
    // SAFETY: `alloc` leaves the n floats uninitialised; nothing reads y before the kernel
    // below has written every one of them (its grid-stride loop covers i < n whatever the
    // launch size), and if the launch fails y is dropped unread.
    let y = unsafe { dev.alloc::<f32>(n)? };
    let func = dev.get_or_load_custom_func("peft_dropout", "peft_dropout", dropout_ptx()?)?;
    let n64 = n as u64;
    let mut b = func.builder();
    b.arg(&x);
    b.arg(&y);
    b.arg(&n64);
    b.arg(&key);
    b.arg(&threshold);
    b.arg(&scale);
    // SAFETY: the arguments are pushed in the order and types of `peft_dropout`'s
    // signature (two f32 device pointers, three u64, an f32); y holds n floats, and x,
    // the contiguous tensor's view from its start offset, at least n (the layout's
    // elements), so the kernel's indices i < n stay inside both.
    unsafe { b.launch(LaunchConfig::for_num_elems(n as u32)) }.w()?;
    Ok((
        CudaStorage::wrap_cuda_slice(y, dev.clone()),
        l.shape().clone(),
    ))
}
