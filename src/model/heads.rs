//! Sequence-classification heads, as transformers builds them.
//!
//! BERT: pooler (first token → dense → tanh) → dropout → `classifier`.
//! RoBERTa: first token → dropout → `classifier.dense` → tanh → dropout → `classifier.out_proj`.
//! ELECTRA: the same with GELU (erf) instead of tanh.
//! XLNet: the last real token (`<cls>`) → `sequence_summary.summary` → tanh → dropout →
//! `logits_proj` (`xlnet.rs`).
//! DeBERTa: ContextPooler (first token → dropout `pooler_dropout` → `pooler.dense` →
//! `pooler_hidden_act`) → dropout (`cls_dropout`) → `classifier`, as BERT's otherwise.
//! Question answering (every family): `qa_outputs`, a start and an end logit per token, with
//! no pooler and no dropout, as transformers' `*ForQuestionAnswering`.
//! A head the checkpoint lacks starts from N(0, 0.02) weights and zero biases, as
//! transformers' `_init_weights` does. Regression (STS-B) is a head with one output.

use anyhow::Result;
use candle_core::{IndexOp, Tensor};

use super::config::{Activation, Arch, ModelConfig};
use super::nn::{Ctx, Dropout, Linear};
use super::params::Path;

/// transformers' `initializer_range` default.
pub const INIT_STD: f64 = 0.02;

/// The first token through `pooler.dense` and an activation: BERT's tanh, DeBERTa's
/// `pooler_hidden_act` after its `pooler_dropout`.
pub struct Pooler {
    dense: Linear,
    act: Activation,
    dropout: Dropout,
}

impl Pooler {
    pub fn load(path: &Path, cfg: &ModelConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        let (act, p) = match &cfg.deberta {
            Some(d) => (d.pooler_act, d.pooler_dropout),
            None => (Activation::Tanh, 0.0),
        };
        Ok(Self {
            dense: Linear::load_or_init(&path.pp("dense"), h, h, INIT_STD)?,
            act,
            dropout: Dropout::new(p),
        })
    }

    /// One pooler over `parts` of a stacked model.
    pub(crate) fn stack(parts: &[&Pooler]) -> Result<Self> {
        Ok(Self {
            dense: Linear::stack(&parts.iter().map(|p| &p.dense).collect::<Vec<_>>())?,
            ..*parts[0]
        })
    }

    pub fn forward(&self, hidden: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let first = self.dropout.forward(&hidden.i((.., 0))?, ctx)?;
        super::nn::activate(&self.dense.forward(&first, ctx)?, self.act)
    }
}

/// What a model's head predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadKind {
    /// One logit per class from the first token; 1 is regression.
    Classes(usize),
    /// A start and an end logit per token (extractive question answering).
    Span,
}

impl From<usize> for HeadKind {
    fn from(n: usize) -> Self {
        HeadKind::Classes(n)
    }
}

#[derive(Clone)]
pub enum Head {
    /// A stacked model's (`stack.rs`): each part's head on its rows, the outputs of a
    /// head with fewer labels padded with zeros.
    Parts(Vec<Head>),
    /// `qa_outputs` on every token: (batch, seq, 2).
    Span { qa_outputs: Linear },
    /// BERT's and DeBERTa's: on the pooler's output.
    Pooled {
        classifier: Linear,
        dropout: Dropout,
    },
    /// RoBERTa's and ELECTRA's: on the first token, through a hidden dense layer.
    Dense {
        dense: Linear,
        out_proj: Linear,
        dropout: Dropout,
        /// ELECTRA's GELU; RoBERTa's tanh otherwise.
        gelu: bool,
    },
    /// XLNet's: on the last real token, through the sequence summary.
    Summary(super::xlnet::SummaryHead),
}

impl Head {
    pub fn load(path: &Path, cfg: &ModelConfig, kind: HeadKind) -> Result<Self> {
        let h = cfg.hidden_size;
        let num_labels = match kind {
            HeadKind::Span => {
                return Ok(Head::Span {
                    qa_outputs: Linear::load_or_init(&path.pp("qa_outputs"), h, 2, INIT_STD)?,
                })
            }
            HeadKind::Classes(n) => n,
        };
        let dropout = Dropout::new(cfg.classifier_dropout());
        let cls = path.pp("classifier");
        Ok(match cfg.model_type {
            Arch::Xlnet => Head::Summary(super::xlnet::SummaryHead::load(
                path,
                cfg.xlnet_config()?,
                num_labels,
            )?),
            Arch::Bert | Arch::Deberta | Arch::DebertaV2 => Head::Pooled {
                classifier: Linear::load_or_init(&cls, h, num_labels, INIT_STD)?,
                dropout,
            },
            Arch::Roberta | Arch::Electra => Head::Dense {
                dense: Linear::load_or_init(&cls.pp("dense"), h, h, INIT_STD)?,
                out_proj: Linear::load_or_init(&cls.pp("out_proj"), h, num_labels, INIT_STD)?,
                dropout,
                gelu: cfg.model_type == Arch::Electra,
            },
        })
    }

    pub(crate) fn kind(&self) -> HeadKind {
        let out = match self {
            Head::Parts(parts) => return parts[0].kind(),
            Head::Span { .. } => return HeadKind::Span,
            Head::Pooled { classifier, .. } => classifier,
            Head::Dense { out_proj, .. } => out_proj,
            Head::Summary(s) => return HeadKind::Classes(s.outputs()),
        };
        HeadKind::Classes(out.weight().dims()[0])
    }

    /// `pooled` is the pooler's output (BERT, DeBERTa); RoBERTa reads the first token of
    /// `hidden`, XLNet the last real one (`mask`, batch × seq, 1 for real tokens).
    pub fn forward(
        &self,
        hidden: &Tensor,
        pooled: Option<&Tensor>,
        mask: &Tensor,
        ctx: &Ctx,
    ) -> Result<Tensor> {
        match self {
            Head::Parts(parts) => {
                let mut xs = vec![hidden, mask];
                xs.extend(pooled);
                super::segments::per_segment(parts, &xs, 1, ctx, |h, xs| {
                    h.forward(&xs[0], xs.get(2), &xs[1], ctx)
                })
            }
            Head::Summary(s) => s.forward(hidden, mask, ctx),
            Head::Span { qa_outputs } => qa_outputs.forward(hidden, ctx),
            Head::Pooled {
                classifier,
                dropout,
            } => {
                let pooled =
                    pooled.ok_or_else(|| anyhow::anyhow!("this head needs the pooler output"))?;
                classifier.forward(&dropout.forward(pooled, ctx)?, ctx)
            }
            Head::Dense {
                dense,
                out_proj,
                dropout,
                gelu,
            } => {
                let x = dropout.forward(&hidden.i((.., 0))?, ctx)?;
                let z = dense.forward(&x, ctx)?;
                let z = if *gelu {
                    super::nn::activate(&z, Activation::Gelu)?
                } else {
                    z.tanh()?
                };
                out_proj.forward(&dropout.forward(&z, ctx)?, ctx)
            }
        }
    }
}
