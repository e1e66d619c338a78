//! Training losses, as transformers' sequence-classification models compute them.

use anyhow::Result;
use candle_core::Tensor;

/// Mean cross-entropy of (batch, classes) logits against u32 class ids.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::loss::cross_entropy(logits, labels)?)
}

/// Mean squared error of (batch, 1) predictions against (batch,) f32 targets (STS-B).
pub fn mse(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    Ok(pred.squeeze(1)?.sub(target)?.sqr()?.mean_all()?)
}
