//! Scoring a model on a task's data: predictions (no dropout, no graph), raw logits in
//! the same batches, and dev metrics per split; SQuAD's answers in [`spans`].

pub mod spans;

use std::collections::BTreeMap;

use anyhow::Result;
use candle_core::{DType, Device, D};

use crate::data::batches;
use crate::data::dataset::Dataset;
use crate::data::squad::SpanOptions;
use crate::data::TaskSpec;
use crate::metrics::{evaluate, Predictions};
use crate::model::{Batch, Ctx, Model};
use crate::tokenize::{collate, Encoded};

/// The model's predictions for every example, in file order.
pub fn predict(
    model: &Model,
    data: &Dataset,
    pad_id: u32,
    batch_size: usize,
    device: &Device,
) -> Result<Predictions> {
    let ctx = Ctx::inference();
    let regression = model.num_labels() == Some(1);
    let mut classes = vec![0u32; data.len()];
    let mut scores = vec![0f32; data.len()];
    for idx in batches::sorted(&data.lengths(), batch_size) {
        let examples: Vec<&Encoded> = idx.iter().map(|&i| &data.inputs[i]).collect();
        let batch = collate(&examples, pad_id, device)?;
        let logits = model.logits(&batch, &ctx)?.detach();
        if regression {
            for (&i, s) in idx
                .iter()
                .zip(logits.squeeze(1)?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
            {
                scores[i] = s;
            }
        } else {
            for (&i, c) in idx.iter().zip(logits.argmax(D::Minus1)?.to_vec1::<u32>()?) {
                classes[i] = c;
            }
        }
    }
    Ok(if regression {
        Predictions::Scores(scores)
    } else {
        Predictions::Classes(classes)
    })
}

/// Each input's logits, in input order, batched exactly as [`predict`] batches a split,
/// so the same texts get the same numbers (and classes) as `peft eval` gives them.
pub fn logits(
    model: &Model,
    inputs: &[Encoded],
    pad_id: u32,
    batch_size: usize,
    device: &Device,
) -> Result<Vec<Vec<f32>>> {
    let ctx = Ctx::inference();
    let lengths: Vec<usize> = inputs.iter().map(Encoded::len).collect();
    let mut out = vec![Vec::new(); inputs.len()];
    for idx in batches::sorted(&lengths, batch_size) {
        let examples: Vec<&Encoded> = idx.iter().map(|&i| &inputs[i]).collect();
        let batch = collate(&examples, pad_id, device)?;
        for (&i, row) in idx.iter().zip(batch_logits(model, &batch, &ctx)?) {
            out[i] = row;
        }
    }
    Ok(out)
}

/// The head's outputs for each row of `batch`.
pub fn batch_logits(model: &Model, batch: &Batch, ctx: &Ctx) -> Result<Vec<Vec<f32>>> {
    Ok(model
        .logits(batch, ctx)?
        .detach()
        .to_dtype(DType::F32)?
        .to_vec2::<f32>()?)
}

/// Dev metrics of every dev split (MNLI has two); SQuAD's answers picked by `spans`.
pub fn score(
    model: &Model,
    devs: &[Dataset],
    (spec, spans): (&TaskSpec, SpanOptions),
    pad: u32,
    batch_size: usize,
    device: &Device,
) -> Result<BTreeMap<String, BTreeMap<String, f64>>> {
    let mut out = BTreeMap::new();
    for d in devs {
        let metrics = match &d.qa {
            Some(qa) => {
                let logits = spans::window_logits(model, d, pad, batch_size, device)?;
                let a = spans::answers(qa, &logits, spans);
                crate::metrics::squad::dev_metrics(
                    &qa.examples,
                    &a.map(),
                    spans.v2.then_some(&a.null_diff[..]),
                    spans.v2,
                )
            }
            None => evaluate(
                spec,
                &predict(model, d, pad, batch_size, device)?,
                &d.labels,
            )?,
        };
        out.insert(d.split.clone(), metrics);
    }
    Ok(out)
}

/// The first largest logit and its softmax probability, in f64 for a stable sum.
pub fn softmax_top(logits: &[f32]) -> Option<(usize, f64)> {
    let (best, _) = logits
        .iter()
        .enumerate()
        .reduce(|a, b| if b.1 > a.1 { b } else { a })?;
    Some((best, softmax(logits)[best]))
}

/// Every logit's softmax probability, in f64 after subtracting the largest.
pub fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &l| m.max(l as f64));
    let e: Vec<f64> = logits.iter().map(|&l| (l as f64 - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|x| x / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_of_the_largest_logit() {
        let (i, p) = softmax_top(&[0.0, 2.0f32.ln()]).unwrap();
        assert_eq!(i, 1);
        assert!((p - 2.0 / 3.0).abs() < 1e-7, "{p}");
        // Ties go to the first label, as argmax does.
        assert_eq!(softmax_top(&[1.0, 1.0]), Some((0, 0.5)));
        assert_eq!(softmax_top(&[]), None);
    }
}
