//! Sentence embeddings from the last hidden state: pooled per input, optionally
//! normalised, in input order.

use anyhow::Result;
use candle_core::{DType, IndexOp, Tensor, D};
use clap::ValueEnum;

use crate::model::{Ctx, Model};
use crate::tokenize::{collate, Encoded};

#[derive(Debug, Clone, Copy, PartialEq, ValueEnum)]
pub enum Pooling {
    /// Mean of the last hidden state over real (non-padding) tokens.
    Mean,
    /// The first token's last hidden state ([CLS] / <s>).
    Cls,
}

/// Embeddings in input order. Inputs are batched by length so padding stays small.
pub fn embed(
    model: &Model,
    inputs: &[Encoded],
    pad_id: u32,
    pooling: Pooling,
    normalize: bool,
    batch_size: usize,
    device: &candle_core::Device,
) -> Result<Vec<Vec<f32>>> {
    let mut order: Vec<usize> = (0..inputs.len()).collect();
    order.sort_by_key(|&i| inputs[i].len());
    let mut out = vec![Vec::new(); inputs.len()];
    let ctx = Ctx::inference();
    for chunk in order.chunks(batch_size) {
        let examples: Vec<&Encoded> = chunk.iter().map(|&i| &inputs[i]).collect();
        let batch = collate(&examples, pad_id, device)?;
        for (row, &i) in embed_batch(model, &batch, pooling, normalize, &ctx)?
            .into_iter()
            .zip(chunk)
        {
            out[i] = row;
        }
    }
    Ok(out)
}

/// Each row of `batch` embedded: its last hidden state pooled, normalised or not.
pub fn embed_batch(
    model: &Model,
    batch: &crate::model::Batch,
    pooling: Pooling,
    normalize: bool,
    ctx: &Ctx,
) -> Result<Vec<Vec<f32>>> {
    let hidden = model.forward(batch, ctx)?.last_hidden_state;
    let mut pooled = match pooling {
        Pooling::Cls => hidden.i((.., 0))?,
        Pooling::Mean => {
            let mask = batch.attention_mask.to_dtype(DType::F32)?.unsqueeze(2)?;
            let sum = hidden.broadcast_mul(&mask)?.sum(1)?;
            sum.broadcast_div(&mask.sum(1)?)?
        }
    };
    if normalize {
        let norm = pooled.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
        pooled = pooled.broadcast_div(&Tensor::maximum(&norm, 1e-12)?)?;
    }
    Ok(pooled.to_vec2::<f32>()?)
}
