//! A task split, tokenized: ids, inputs and labels in file order. A SQuAD split is
//! tokenized into windows: one input (and label) per window, the questions beside them.

use anyhow::Result;
use candle_core::{Device, Tensor};

use super::squad::{featurize, Featurized, QaData};
use super::tasks::{Label, TaskSpec};
use super::Source;
use crate::tokenize::{Encoded, TextEncoder};

pub struct Dataset {
    pub split: String,
    /// Per input: its example's id (a SQuAD question's, for each of its windows).
    pub ids: Vec<String>,
    pub inputs: Vec<Encoded>,
    pub labels: Vec<Label>,
    /// SQuAD: the questions, and what each window covers of its context.
    pub qa: Option<QaData>,
}

impl Dataset {
    pub fn load(
        spec: &TaskSpec,
        source: &Source,
        split: &str,
        encoder: &TextEncoder,
    ) -> Result<Self> {
        if spec.is_qa() {
            let examples = source.read_qa(spec, split)?;
            let Featurized { qa, inputs, spans } = featurize(examples, &encoder.qa()?)?;
            return Ok(Self {
                split: split.to_string(),
                ids: qa
                    .features
                    .iter()
                    .map(|f| qa.examples[f.example].id.clone())
                    .collect(),
                inputs,
                labels: spans
                    .into_iter()
                    .map(|(start, end)| Label::Span { start, end })
                    .collect(),
                qa: Some(qa),
            });
        }
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
            qa: None,
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

    /// Labels of `idx` as the loss wants them: u32 classes, f32 scores, or (batch, 2) u32
    /// start and end tokens.
    pub fn label_tensor(&self, idx: &[usize], device: &Device) -> Result<Tensor> {
        match self.labels.first() {
            Some(Label::Span { .. }) => {
                let v: Vec<u32> = idx
                    .iter()
                    .map(|&i| match self.labels[i] {
                        Label::Span { start, end } => Ok([start, end]),
                        ref l => Err(anyhow::anyhow!(
                            "example {} has label {l:?}, expected a span",
                            self.ids[i]
                        )),
                    })
                    .collect::<Result<Vec<_>>>()?
                    .concat();
                Ok(Tensor::from_vec(v, (idx.len(), 2), device)?)
            }
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
