//! From start and end logits to answers, as transformers' `utils_qa.py`
//! (`postprocess_qa_predictions`) does it for run_qa.py: per question, the `n_best`
//! largest start and end logits of every window pair into candidate spans inside the
//! context, no longer than `max_answer_length` tokens; the best scoring span (start plus
//! end logit) is the answer. For SQuAD 2.0 the empty answer competes through the
//! null score, the smallest CLS start-plus-end over the question's windows: when it beats
//! the best span's by more than `null_threshold`, the answer is empty.

use std::collections::BTreeMap;

use anyhow::Result;
use candle_core::{DType, Device};

use crate::data::batches;
use crate::data::dataset::Dataset;
use crate::data::squad::{QaData, SpanOptions};
use crate::model::{Batch, Ctx, Model};
use crate::tokenize::{collate, Encoded};

/// Every question's answer, in question order.
#[derive(Debug, Clone, PartialEq)]
pub struct Answers {
    /// (question id, answer text; empty for no answer).
    pub text: Vec<(String, String)>,
    /// SQuAD 2.0: (question id, null score minus the best span's score), the number the
    /// threshold is compared with, in question order.
    pub null_diff: Vec<(String, f64)>,
    /// Per question, the answer's characters in its context (None: no answer) and its
    /// probability among the n best (utils_qa's softmax over their scores); None where
    /// utils_qa answers with its "empty" placeholder.
    pub chosen: Vec<Option<Chosen>>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Chosen {
    pub chars: Option<(usize, usize)>,
    pub probability: f64,
}

impl Answers {
    pub fn map(&self) -> BTreeMap<String, String> {
        self.text.iter().cloned().collect()
    }
}

/// Start and end logits of each window, its own tokens only, batched as `predict` is.
pub fn window_logits(
    model: &Model,
    data: &Dataset,
    pad_id: u32,
    batch_size: usize,
    device: &Device,
) -> Result<Vec<(Vec<f32>, Vec<f32>)>> {
    let ctx = Ctx::inference();
    let mut out = vec![(Vec::new(), Vec::new()); data.len()];
    for idx in batches::sorted(&data.lengths(), batch_size) {
        let examples: Vec<&Encoded> = idx.iter().map(|&i| &data.inputs[i]).collect();
        let batch = collate(&examples, pad_id, device)?;
        let lengths: Vec<usize> = examples.iter().map(|e| e.len()).collect();
        for (&i, row) in idx.iter().zip(batch_spans(model, &batch, &lengths, &ctx)?) {
            out[i] = row;
        }
    }
    Ok(out)
}

/// Each row's start and end logits over its own `lengths[row]` tokens.
pub fn batch_spans(
    model: &Model,
    batch: &Batch,
    lengths: &[usize],
    ctx: &Ctx,
) -> Result<Vec<(Vec<f32>, Vec<f32>)>> {
    // (batch, seq, 2) → per window, per token [start, end].
    let rows = model
        .logits(batch, ctx)?
        .detach()
        .to_dtype(DType::F32)?
        .to_vec3::<f32>()?;
    Ok(rows
        .into_iter()
        .zip(lengths)
        .map(|(row, &n)| {
            (
                row[..n].iter().map(|t| t[0]).collect(),
                row[..n].iter().map(|t| t[1]).collect(),
            )
        })
        .collect())
}

/// A candidate answer: characters of the context, and its logits.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    chars: (usize, usize),
    start_logit: f32,
    end_logit: f32,
    /// Whether it is the empty answer (the CLS token's).
    null: bool,
}

impl Candidate {
    fn score(&self) -> f32 {
        self.start_logit + self.end_logit
    }
}

/// Indices of the `n` largest values, largest first, as numpy's
/// `argsort(x)[-1 : -n - 1 : -1]` orders them (ties: the later index first).
fn top(x: &[f32], n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    order.into_iter().rev().take(n).collect()
}

/// The answers to every question of `qa` from its windows' logits (in feature order).
pub fn answers(qa: &QaData, logits: &[(Vec<f32>, Vec<f32>)], opts: SpanOptions) -> Answers {
    let mut windows: Vec<Vec<usize>> = vec![Vec::new(); qa.examples.len()];
    for (f, feature) in qa.features.iter().enumerate() {
        windows[feature.example].push(f);
    }
    let mut out = Answers {
        text: Vec::with_capacity(qa.examples.len()),
        null_diff: Vec::new(),
        chosen: Vec::with_capacity(qa.examples.len()),
    };
    for (example, features) in qa.examples.iter().zip(&windows) {
        let mut null: Option<Candidate> = None;
        let mut candidates = Vec::new();
        for &f in features {
            let (start, end) = &logits[f];
            let offsets = &qa.features[f].offsets;
            // The classifier token's span: the first token's, XLNet's last.
            let at = qa.features[f].cls;
            let cls = Candidate {
                chars: (0, 0),
                start_logit: start[at],
                end_logit: end[at],
                null: true,
            };
            if null.is_none_or(|n| n.score() > cls.score()) {
                null = Some(cls);
            }
            for &s in &top(start, opts.n_best) {
                for &e in &top(end, opts.n_best) {
                    let (Some(Some(so)), Some(Some(eo))) = (offsets.get(s), offsets.get(e)) else {
                        continue;
                    };
                    if e < s || e - s + 1 > opts.max_answer_length {
                        continue;
                    }
                    candidates.push(Candidate {
                        chars: (so.0, eo.1),
                        start_logit: start[s],
                        end_logit: end[e],
                        null: false,
                    });
                }
            }
        }
        if opts.v2 {
            candidates.extend(null);
        }
        // Stable, as Python's sorted(): equal scores keep their order.
        candidates.sort_by(|a, b| b.score().total_cmp(&a.score()));
        candidates.truncate(opts.n_best);
        if opts.v2 && !candidates.iter().any(|c| c.chars == (0, 0)) {
            candidates.extend(null);
        }
        let text = |c: &Candidate| -> String {
            if c.null {
                return String::new();
            }
            example
                .context
                .chars()
                .skip(c.chars.0)
                .take(c.chars.1.saturating_sub(c.chars.0))
                .collect()
        };
        let texts: Vec<String> = candidates.iter().map(text).collect();
        // No span at all (every window's best were outside its context): utils_qa's
        // placeholder answer, "empty", with zero logits.
        let best_span = candidates
            .iter()
            .zip(&texts)
            .find(|(_, t)| !t.is_empty())
            .map(|(c, t)| (c.start_logit, c.end_logit, t.clone()))
            .unwrap_or((0.0, 0.0, "empty".to_string()));
        // utils_qa's probabilities: a softmax over the n best's scores.
        let max = candidates
            .iter()
            .map(|c| f64::from(c.score()))
            .fold(f64::NEG_INFINITY, f64::max);
        let exp: Vec<f64> = candidates
            .iter()
            .map(|c| (f64::from(c.score()) - max).exp())
            .collect();
        let sum: f64 = exp.iter().sum();
        let pick = |i: Option<usize>| {
            i.map(|i| Chosen {
                chars: (!candidates[i].null).then_some(candidates[i].chars),
                probability: exp[i] / sum,
            })
        };
        let answer = if !opts.v2 {
            // utils_qa's "empty" placeholder when nothing, or only an empty text, is left.
            let placeholder = texts.is_empty() || (texts.len() == 1 && texts[0].is_empty());
            let found = (!placeholder).then_some(0);
            out.chosen.push(pick(found));
            texts
                .first()
                .filter(|_| found.is_some())
                .cloned()
                .unwrap_or_else(|| "empty".to_string())
        } else {
            // In f32, as utils_qa subtracts numpy float32 logits.
            let null_score = null.map_or(0.0, |n| n.score());
            let diff = f64::from(null_score - best_span.0 - best_span.1);
            out.null_diff.push((example.id.clone(), diff));
            if diff > opts.null_threshold {
                out.chosen
                    .push(pick(candidates.iter().position(|c| c.null)));
                String::new()
            } else {
                out.chosen
                    .push(pick(texts.iter().position(|t| !t.is_empty())));
                best_span.2
            }
        };
        out.text.push((example.id.clone(), answer));
    }
    out
}
