//! Hand-written kernels: fused CPU ops with their own backward passes (LayerNorm, GELU,
//! linear, attention, dropout with the residual add), the SIMD rows they are made of, the
//! GPU's dropout kernel and the fused AdamW update. They know tensors and layouts, never
//! models, methods or runs; the model calls them, and falls back to candle's composed ops
//! on devices they do not cover.

pub mod adamw;
pub(crate) mod attention;
pub(crate) mod common;
#[cfg(feature = "cuda")]
mod cuda;
pub(crate) mod dropout;
pub(crate) mod gelu;
pub(crate) mod layernorm;
pub(crate) mod linear;
pub(crate) mod matmul;
pub(crate) mod per_example;
pub mod simd;
#[cfg(test)]
mod tests;
pub use common::{with_composed_ops, without_graph};
pub use linear::{columns, linear, linear_bf16};
