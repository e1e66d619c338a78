//! SQuAD v1.1 and v2.0: questions about a paragraph, answered by a span of it (or, in
//! 2.0, by nothing). Examples come from the official JSON files (a `--data-dir` holding
//! `train-v1.1.json`/`dev-v1.1.json` or `train-v2.0.json`/`dev-v2.0.json`, or `--train`
//! and `--dev` in that format) or from the hub's parquet (`rajpurkar/squad`,
//! `rajpurkar/squad_v2`).
//!
//! Windows and labels follow transformers' `examples/pytorch/question-answering/run_qa.py`
//! (`prepare_train_features`, `prepare_validation_features`): the question first, the
//! context cut into windows of `max_seq_len` tokens overlapping by `doc_stride`, each
//! window labelled with the tokens where the (first) gold answer starts and ends, or with
//! the first token (CLS) when the answer is not wholly inside it.

use std::path::Path;

use anyhow::Result;
use serde::Deserialize;

use crate::error::{user, PathContext};
use crate::tokenize::{Encoded, QaEncoder};

/// Candidates per window end kept when picking an answer (run_qa's `--n_best_size`).
pub const N_BEST: usize = 20;
/// The longest answer in tokens (run_qa's `--max_answer_length`).
pub const MAX_ANSWER_LENGTH: usize = 30;

/// How answers are picked from start and end logits (see `eval::spans`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpanOptions {
    pub n_best: usize,
    pub max_answer_length: usize,
    /// SQuAD 2.0: answer nothing when the null score beats the best span's by more.
    pub null_threshold: f64,
    /// SQuAD 2.0: questions may have no answer.
    pub v2: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub text: String,
    /// Where it starts in the context, in characters (Unicode scalar values), as the
    /// official files count (Python string indices).
    pub start: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QaExample {
    pub id: String,
    pub question: String,
    pub context: String,
    /// The gold answers; none for an unanswerable (SQuAD 2.0) question.
    pub answers: Vec<Answer>,
}

impl QaExample {
    pub fn answerable(&self) -> bool {
        !self.answers.is_empty()
    }
}

#[derive(Deserialize)]
struct File {
    data: Vec<Article>,
}

#[derive(Deserialize)]
struct Article {
    paragraphs: Vec<Paragraph>,
}

#[derive(Deserialize)]
struct Paragraph {
    context: String,
    qas: Vec<Question>,
}

#[derive(Deserialize)]
struct Question {
    id: String,
    question: String,
    #[serde(default)]
    answers: Vec<RawAnswer>,
    #[serde(default)]
    is_impossible: bool,
}

#[derive(Deserialize)]
struct RawAnswer {
    text: String,
    answer_start: usize,
}

/// The most text the questions of one split may carry, in bytes: each question holds its
/// own copy of its paragraph's context (with the question), windowed and tokenized on its
/// own into some 20 bytes of windows per byte, so one 1 MB context asked 10,000 questions
/// would be 10 GB of text from a 1 MB file. SQuAD 2.0's train split carries about 100 MB
/// (130,000 questions of some 750 bytes each); 1 GiB is ten times that, room for any real
/// split, and still a bound on what a small file can ask for.
pub const MAX_SPLIT_CONTEXT_BYTES: usize = 1 << 30;

/// The text a split's questions carry, counted against [`MAX_SPLIT_CONTEXT_BYTES`] before
/// their copies are made.
#[derive(Debug, Default)]
pub(crate) struct ContextBytes(usize);

impl ContextBytes {
    /// Count `bytes` more (questions, each with its copy of a context); past the bound,
    /// refuse, `at` naming the file and the paragraph or row.
    pub(crate) fn add(&mut self, bytes: usize, at: impl FnOnce() -> String) -> Result<()> {
        self.0 = self.0.saturating_add(bytes);
        if self.0 > MAX_SPLIT_CONTEXT_BYTES {
            crate::user_bail!(
                "{}: the questions up to here carry {} bytes of context, each question its own \
                 copy of its paragraph's; the questions of a split carry at most \
                 {MAX_SPLIT_CONTEXT_BYTES} bytes in all (SQuAD 2.0's train split carries about \
                 100 MB): ask fewer questions of a long paragraph, or split the file",
                at(),
                self.0
            );
        }
        Ok(())
    }
}

/// The questions of an official-format JSON file, in file order. For v1.1 (`v2` false)
/// every question must have an answer.
pub fn read_json(path: &Path, v2: bool) -> Result<Vec<QaExample>> {
    let mut text = String::new();
    std::io::Read::read_to_string(&mut super::input::open(path)?, &mut text)
        .path_context("cannot read", path)?;
    let file: File = serde_json::from_str(&text).map_err(|e| {
        user(format!(
            "{}: line {}: not a SQuAD JSON file ({{\"data\": [{{\"paragraphs\": [{{\"context\", \
             \"qas\"}}]}}]}}): {e}",
            path.display(),
            e.line()
        ))
    })?;
    let mut out = Vec::new();
    let mut carried = ContextBytes::default();
    for (a, article) in file.data.into_iter().enumerate() {
        for (p, para) in article.paragraphs.into_iter().enumerate() {
            let chars = para.context.chars().count();
            let at = || format!("{}: data[{a}].paragraphs[{p}]", path.display());
            super::input::check_text(&para.context, || format!("{}: the context", at()))?;
            // Counted before any question copies the context.
            let bytes = para
                .qas
                .iter()
                .map(|q| para.context.len().saturating_add(q.question.len()))
                .fold(0, usize::saturating_add);
            carried.add(bytes, || format!("{} ({} questions)", at(), para.qas.len()))?;
            for q in para.qas {
                let at = format!("{}, question {}", at(), q.id);
                super::input::check_text(&q.question, || format!("{at}: the question"))?;
                let answers = if q.is_impossible {
                    Vec::new()
                } else {
                    q.answers
                        .into_iter()
                        .map(|r| Answer {
                            text: r.text,
                            start: r.answer_start,
                        })
                        .collect()
                };
                check(&at, &answers, chars, v2)?;
                out.push(QaExample {
                    id: q.id,
                    question: q.question,
                    context: para.context.clone(),
                    answers,
                });
            }
        }
    }
    Ok(out)
}

/// An answer must lie inside its context; v1.1 has no unanswerable questions.
pub(crate) fn check(at: &str, answers: &[Answer], context_chars: usize, v2: bool) -> Result<()> {
    if answers.is_empty() && !v2 {
        crate::user_bail!(
            "{at}: no answer; SQuAD 1.1 questions all have one (unanswerable questions are \
             SQuAD 2.0: --task squad_v2)"
        );
    }
    for a in answers {
        if a.start + a.text.chars().count() > context_chars {
            crate::user_bail!(
                "{at}: the answer {:?} at character {} runs past the context ({context_chars} \
                 characters)",
                a.text,
                a.start
            );
        }
    }
    Ok(())
}

/// One window of one question's context.
#[derive(Debug, Clone, PartialEq)]
pub struct Feature {
    /// Index of its question in [`QaData::examples`].
    pub example: usize,
    /// Per token, the context characters it covers; None outside the context.
    pub offsets: Vec<Option<(usize, usize)>>,
    /// The classifier token, whose span means "no answer": first in every family but
    /// XLNet, whose `<cls>` ends the window.
    pub cls: usize,
}

/// A SQuAD split, windowed: what the trainer and the scorer read besides the token ids.
#[derive(Debug, Clone)]
pub struct QaData {
    pub examples: Vec<QaExample>,
    pub features: Vec<Feature>,
}

/// A split's questions as windows: what they cover, their token ids, their labels.
pub struct Featurized {
    pub qa: QaData,
    pub inputs: Vec<Encoded>,
    /// Per window, the start and end token of the (first) answer; the classifier token's
    /// (0, 0), or XLNet's last, for none.
    pub spans: Vec<(u32, u32)>,
}

/// Every question's windows, each with its token ids and its training label (start and
/// end token). Features are in question order, windows in context order.
pub fn featurize(examples: Vec<QaExample>, encoder: &QaEncoder) -> Result<Featurized> {
    let (mut features, mut inputs, mut labels) = (Vec::new(), Vec::new(), Vec::new());
    for (i, e) in examples.iter().enumerate() {
        // run_qa strips the question's leading whitespace: some SQuAD questions have
        // a lot of it, and it would take room from the context.
        for w in encoder.windows(e.question.trim_start(), &e.context)? {
            let cls = w.cls as u32;
            let label = span_label(&w.offsets, e.answers.first()).unwrap_or((cls, cls));
            labels.push(label);
            features.push(Feature {
                example: i,
                offsets: w.offsets,
                cls: w.cls,
            });
            inputs.push(w.encoded);
        }
    }
    Ok(Featurized {
        qa: QaData { examples, features },
        inputs,
        spans: labels,
    })
}

/// The tokens where `answer` starts and ends in a window, or None (the classifier token's
/// label) when there is no answer or it is not wholly inside the window.
///
/// run_qa scans right from the first context token for the start, past the context's
/// end when the answer starts in the window's last context token (onto the final SEP or
/// padding, whose offsets are (0, 0)); we stop the scan at the context's last token,
/// which labels that one case with the token that holds the answer.
pub fn span_label(
    offsets: &[Option<(usize, usize)>],
    answer: Option<&Answer>,
) -> Option<(u32, u32)> {
    let answer = answer?;
    let start_char = answer.start;
    let end_char = start_char + answer.text.chars().count();
    let context: Vec<(usize, (usize, usize))> = offsets
        .iter()
        .enumerate()
        .filter_map(|(i, o)| o.map(|o| (i, o)))
        .collect();
    let (&(_, first), &(_, last)) = (context.first()?, context.last()?);
    if !(first.0 <= start_char && last.1 >= end_char) {
        return None;
    }
    let start = context
        .iter()
        .take_while(|(_, o)| o.0 <= start_char)
        .last()
        .map_or(0, |(i, _)| *i);
    let end = context
        .iter()
        .rev()
        .take_while(|(_, o)| o.1 >= end_char)
        .last()
        .map_or(0, |(i, _)| *i);
    Some((start as u32, end as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ans(text: &str, start: usize) -> Answer {
        Answer {
            text: text.into(),
            start,
        }
    }

    #[test]
    fn labels_point_at_the_answer_tokens_or_cls() {
        // [CLS] q [SEP] "the" "big" "cat" [SEP]; context "the big cat"
        let offsets = vec![
            None,
            None,
            None,
            Some((0, 3)),
            Some((4, 7)),
            Some((8, 11)),
            None,
        ];
        assert_eq!(span_label(&offsets, Some(&ans("big cat", 4))), Some((4, 5)));
        assert_eq!(span_label(&offsets, Some(&ans("cat", 8))), Some((5, 5)));
        assert_eq!(span_label(&offsets, Some(&ans("the", 0))), Some((3, 3)));
        // Starting inside a token: that token.
        assert_eq!(span_label(&offsets, Some(&ans("ig", 5))), Some((4, 4)));
        assert_eq!(span_label(&offsets, None), None);
        // Outside the window (a later window holds it).
        assert_eq!(span_label(&offsets, Some(&ans("dog", 12))), None);
    }

    #[test]
    fn the_context_a_split_carries_is_bounded() {
        let mut carried = ContextBytes::default();
        carried
            .add(MAX_SPLIT_CONTEXT_BYTES - 10, || unreachable!())
            .unwrap();
        carried.add(10, || unreachable!()).unwrap();
        let err = carried
            .add(1, || "f.json: data[0].paragraphs[3]".into())
            .unwrap_err();
        assert!(crate::error::is_user_error(&err));
        let msg = err.to_string();
        assert!(
            msg.starts_with(
                "f.json: data[0].paragraphs[3]: the questions up to here carry 1073741825 bytes"
            ) && msg.contains("at most 1073741824 bytes"),
            "{msg}"
        );
        // Counting saturates rather than wrapping round below the bound.
        assert!(ContextBytes::default()
            .add(usize::MAX, String::new)
            .is_err());
    }

    #[test]
    fn v1_needs_answers_inside_the_context() {
        let err = check("f.json: q1", &[], 10, false).unwrap_err();
        assert!(err.to_string().contains("--task squad_v2"), "{err}");
        assert!(check("q", &[], 10, true).is_ok());
        let err = check("q", &[ans("abc", 8)], 10, true).unwrap_err();
        assert!(err.to_string().contains("runs past the context"), "{err}");
    }
}
