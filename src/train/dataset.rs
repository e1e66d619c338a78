//! A tokenized split, and scoring a model on it.

use anyhow::Result;
use candle_core::{DType, Device, Tensor, D};

use super::batches;
use crate::data::tasks::{Label, TaskSpec};
use crate::data::Source;
use crate::metrics::Predictions;
use crate::model::{Ctx, Model};
use crate::tokenize::{collate, Encoded, TextEncoder};

pub struct Dataset {
    pub split: String,
    pub ids: Vec<String>,
    pub inputs: Vec<Encoded>,
    pub labels: Vec<Label>,
}

impl Dataset {
    pub fn load(
        spec: &TaskSpec,
        source: &Source,
        split: &str,
        encoder: &TextEncoder,
    ) -> Result<Self> {
        let examples = source.read(spec, split)?;
        let mut inputs = Vec::with_capacity(examples.len());
        for e in &examples {
            inputs.push(encoder.encode(&e.text_a, e.text_b.as_deref())?);
        }
        Ok(Self {
            split: split.to_string(),
            ids: examples.iter().map(|e| e.id.clone()).collect(),
            labels: examples.into_iter().map(|e| e.label).collect(),
            inputs,
        })
    }

    pub fn len(&self) -> usize {
        self.inputs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty()
    }

    pub fn lengths(&self) -> Vec<usize> {
        self.inputs.iter().map(|e| e.len()).collect()
    }

    /// Labels of `idx` as the loss wants them: u32 classes or f32 scores.
    pub fn label_tensor(&self, idx: &[usize], device: &Device) -> Result<Tensor> {
        match self.labels.first() {
            Some(Label::Score(_)) => {
                let v: Vec<f32> = idx
                    .iter()
                    .map(|&i| match self.labels[i] {
                        Label::Score(s) => Ok(s),
                        ref l => Err(anyhow::anyhow!(
                            "example {} has label {l:?}, expected a score",
                            self.ids[i]
                        )),
                    })
                    .collect::<Result<_>>()?;
                Ok(Tensor::new(v, device)?)
            }
            _ => {
                let v: Vec<u32> = idx
                    .iter()
                    .map(|&i| match self.labels[i] {
                        Label::Class(c) => Ok(c),
                        ref l => Err(anyhow::anyhow!(
                            "example {} has label {l:?}, expected a class",
                            self.ids[i]
                        )),
                    })
                    .collect::<Result<_>>()?;
                Ok(Tensor::new(v, device)?)
            }
        }
    }
}

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
        let rows = model
            .logits(&batch, &ctx)?
            .detach()
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
        for (&i, row) in idx.iter().zip(rows) {
            out[i] = row;
        }
    }
    Ok(out)
}
