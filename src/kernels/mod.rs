//! Hand-written kernels: fused CPU ops with their own backward passes (LayerNorm, GELU,
//! linear, attention, dropout with the residual add), the SIMD rows they are made of, the
//! GPU's dropout kernel and the fused AdamW update. They know tensors and layouts, never
//! models, methods or runs; the model calls them, and falls back to candle's composed ops
//! on devices they do not cover.

pub mod adamw;
pub(crate) mod attention;
#[cfg(feature = "cuda")]
mod cuda;
pub(crate) mod ops;
pub mod simd;
pub use ops::{columns, linear, linear_bf16, with_composed_ops, without_graph};
