//! A task split, tokenized: ids, inputs and labels in file order. A SQuAD split is
//! tokenized into windows: one input (and label) per window, the questions beside them.

use anyhow::Result;
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;

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

/// A seeded random sample of `n` examples, in file order.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub n: usize,
    pub seed: u64,
}

impl Sample {
    /// Which of `len` examples it keeps, ascending (all of them when `n` ≥ `len`).
    pub fn indices(&self, len: usize) -> Vec<usize> {
        if self.n >= len {
            return (0..len).collect();
        }
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut kept = rand::seq::index::sample(&mut rng, len, self.n).into_vec();
        kept.sort_unstable();
        kept
    }

    fn apply<T>(sample: Option<Sample>, items: Vec<T>) -> Vec<T> {
        let Some(s) = sample else {
            return items;
        };
        let keep = s.indices(items.len());
        let mut keep = keep.into_iter().peekable();
        items
            .into_iter()
            .enumerate()
            .filter_map(|(i, x)| {
                (keep.peek() == Some(&i)).then(|| {
                    keep.next();
                    x
                })
            })
            .collect()
    }
}

impl Dataset {
    pub fn load(
        spec: &TaskSpec,
        source: &Source,
        split: &str,
        encoder: &TextEncoder,
    ) -> Result<Self> {
        Self::load_sample(spec, source, split, encoder, None)
    }

    /// A split, or a sample of its examples (SQuAD: of its questions, each with all its
    /// windows), drawn before tokenizing.
    pub fn load_sample(
        spec: &TaskSpec,
        source: &Source,
        split: &str,
        encoder: &TextEncoder,
        sample: Option<Sample>,
    ) -> Result<Self> {
        if spec.is_qa() {
            let examples = Sample::apply(sample, source.read_qa(spec, split)?);
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
        let examples = Sample::apply(sample, source.read(spec, split)?);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_is_seeded_in_file_order_and_all_when_it_asks_for_more() {
        let s = |n, seed| Sample { n, seed }.indices(100);
        let a = s(10, 1);
        assert_eq!(a.len(), 10);
        assert!(a.windows(2).all(|w| w[0] < w[1]), "{a:?}");
        assert!(a.iter().all(|&i| i < 100));
        assert_eq!(a, s(10, 1));
        assert_ne!(a, s(10, 2));
        assert_eq!(s(100, 1), (0..100).collect::<Vec<_>>());
        assert_eq!(s(500, 1).len(), 100);
        let kept = Sample::apply(Some(Sample { n: 10, seed: 1 }), (0..100).collect());
        assert_eq!(kept, a);
        assert_eq!(Sample::apply(None, vec![3, 1, 2]), vec![3, 1, 2]);
    }
}
