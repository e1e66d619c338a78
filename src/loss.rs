//! Training losses, as transformers' sequence-classification and question-answering
//! models compute them.

use anyhow::Result;
use candle_core::Tensor;

use crate::model::HeadKind;

/// Mean cross-entropy of (batch, classes) logits against u32 class ids.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::loss::cross_entropy(logits, labels)?)
}

/// Mean squared error of (batch, 1) predictions against (batch,) f32 targets (STS-B).
pub fn mse(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    Ok(pred.squeeze(1)?.sub(target)?.sqr()?.mean_all()?)
}

/// transformers' question-answering loss: the mean of the start and the end tokens'
/// cross-entropies over each window's tokens, for (batch, seq, 2) logits against
/// (batch, 2) u32 start and end tokens. Padding is left out of the softmax (transformers
/// includes it, so its loss depends on how far a batch is padded; the two agree on
/// unpadded batches).
pub fn span(logits: &Tensor, labels: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
    // 0 for tokens, -1e4 for padding: exp() of a padded logit underflows to nothing.
    let pad = ((attention_mask.to_dtype(logits.dtype())? - 1.0)? * 1e4)?;
    let mut total: Option<Tensor> = None;
    for side in 0..2 {
        let l = logits.narrow(2, side, 1)?.squeeze(2)?.broadcast_add(&pad)?;
        let y = labels.narrow(1, side, 1)?.squeeze(1)?.contiguous()?;
        let ce = cross_entropy(&l.contiguous()?, &y)?;
        total = Some(match total {
            Some(t) => (t + ce)?,
            None => ce,
        });
    }
    Ok((total.expect("two sides") * 0.5)?)
}

/// The training loss of a head: cross-entropy over classes, squared error for one
/// output (regression), [`span`] for question answering.
pub fn for_head(
    head: HeadKind,
    logits: &Tensor,
    labels: &Tensor,
    attention_mask: &Tensor,
) -> Result<Tensor> {
    match head {
        HeadKind::Span => span(logits, labels, attention_mask),
        HeadKind::Classes(1) => mse(logits, labels),
        HeadKind::Classes(_) => cross_entropy(logits, labels),
    }
}
