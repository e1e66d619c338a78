//! One transformer layer: self-attention, then the feed-forward block, each followed by
//! dropout, a residual and a post-LayerNorm (BERT, RoBERTa and DeBERTa are post-norm).
//! DeBERTa's layer differs only in its attention (`disentangled.rs`).

use anyhow::Result;
use candle_core::Tensor;

use super::adapter::{AdapterConfig, AdapterKind};
use super::bottleneck::Bottleneck;

use super::config::{Activation, ModelConfig};
use super::disentangled::Disentangled;
use super::nn::{Ctx, Dropout, LayerNorm, Linear, Precision};
use super::params::Path;
use super::prefix::Kv;
use super::relative::Positions;
use crate::kernels::{attention, common, dropout, linear};

pub struct SelfAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    heads: usize,
    head_dim: usize,
    dropout: Dropout,
}

impl SelfAttention {
    fn load(path: &Path, cfg: &ModelConfig, adapters: Option<&AdapterConfig>) -> Result<Self> {
        let h = cfg.hidden_size;
        let linear = |name: &str| {
            let p = path.pp(name);
            Linear::load(&p, h, h)?.with_adapter(
                &p,
                adapters.filter(|a| a.wraps(&format!("attention.self.{name}"))),
            )
        };
        Ok(Self {
            query: linear("query")?,
            key: linear("key")?,
            value: linear("value")?,
            heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim(),
            dropout: Dropout::new(cfg.attention_probs_dropout_prob),
        })
    }

    fn stack(parts: &[&SelfAttention]) -> Result<Self> {
        let linears = |f: fn(&SelfAttention) -> &Linear| {
            Linear::stack(&parts.iter().map(|a| f(a)).collect::<Vec<_>>())
        };
        Ok(Self {
            query: linears(|a| &a.query)?,
            key: linears(|a| &a.key)?,
            value: linears(|a| &a.value)?,
            ..*parts[0]
        })
    }

    /// `mask`: (batch, seq), 1 for real tokens and 0 for padding. `prefix`: keys and
    /// values put before the layer's own, attended by every token.
    fn forward(&self, x: &Tensor, mask: &Tensor, prefix: Option<&Kv>, ctx: &Ctx) -> Result<Tensor> {
        let (b, t, h) = x.dims3()?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let bf16 = ctx.precision() == Precision::Bf16;
        if common::fused(x) && !bf16 && prefix.is_none() {
            let (q, k, v) = (
                self.query.forward(x, ctx)?,
                self.key.forward(x, ctx)?,
                self.value.forward(x, ctx)?,
            );
            let dropout = self.dropout.op(ctx);
            return Ok(attention::attention(
                &q, &k, &v, mask, self.heads, scale, dropout,
            )?);
        }
        let split = |y: Tensor| -> Result<Tensor> {
            Ok(y.reshape((b, t, self.heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = split(self.query.forward(x, ctx)?)?;
        let mut k = split(self.key.forward(x, ctx)?)?;
        let mut v = split(self.value.forward(x, ctx)?)?;
        let mut mask = mask.clone();
        if let Some(p) = prefix {
            // (tokens, width) → (batch, heads, tokens, head_dim), first along the keys.
            let n = p.key.dim(0)?;
            let dtype = k.dtype();
            let heads = |y: &Tensor| -> Result<Tensor> {
                Ok(y.reshape((1, n, self.heads, self.head_dim))?
                    .transpose(1, 2)?
                    .broadcast_as((b, self.heads, n, self.head_dim))?
                    .to_dtype(dtype)?)
            };
            k = Tensor::cat(&[&heads(&p.key)?, &k], 2)?.contiguous()?;
            v = Tensor::cat(&[&heads(&p.value)?, &v], 2)?.contiguous()?;
            let ones = Tensor::ones((b, n), mask.dtype(), mask.device())?;
            mask = Tensor::cat(&[&ones, &mask], 1)?;
        }
        let matmul = |a: &Tensor, b: &Tensor| -> Result<Tensor> {
            match bf16 {
                true => linear::matmul_bf16(a, b),
                false => Ok(a.matmul(b)?),
            }
        };
        let scores = matmul(&q, &k.t()?)?;
        let probs = attention::attention_probs(&scores, &mask, scale)?;
        let probs = self.dropout.forward(&probs, ctx)?;
        Ok(matmul(&probs, &v)?.transpose(1, 2)?.reshape((b, t, h))?)
    }
}

/// dense → dropout → + residual → LayerNorm: `attention.output` and `output` share it.
#[derive(Clone)]
pub struct AddNorm {
    dense: Linear,
    layer_norm: LayerNorm,
    dropout: Dropout,
    /// A bottleneck adapter in this sublayer (`--method adapter`).
    bottleneck: Option<Bottleneck>,
    /// In a stacked model where some part has a bottleneck adapter here: each part's own
    /// sublayer after the dense product, on its rows.
    parts: Option<Vec<AddNorm>>,
}

impl AddNorm {
    /// `rel`: the module's path inside its layer, for adapter targeting.
    fn load(
        path: &Path,
        rel: &str,
        d_in: usize,
        cfg: &ModelConfig,
        adapters: Option<&AdapterConfig>,
    ) -> Result<Self> {
        let p = path.pp("dense");
        let wraps = adapters.filter(|a| a.wraps(&format!("{rel}.dense")));
        let bottleneck = match adapters.map(|a| a.kind) {
            Some(AdapterKind::Bottleneck {
                reduction,
                placement,
                activation,
            }) if placement.adapts(rel) => Some(Bottleneck::load(
                path,
                cfg.hidden_size,
                reduction,
                placement,
                activation,
            )?),
            _ => None,
        };
        Ok(Self {
            bottleneck,
            parts: None,
            dense: Linear::load(&p, d_in, cfg.hidden_size)?.with_adapter(&p, wraps)?,
            layer_norm: LayerNorm::load(
                &path.pp("LayerNorm"),
                cfg.hidden_size,
                cfg.layer_norm_eps,
            )?,
            dropout: Dropout::new(cfg.hidden_dropout_prob),
        })
    }

    fn stack(parts: &[&AddNorm]) -> Result<Self> {
        let dense = Linear::stack(&parts.iter().map(|a| &a.dense).collect::<Vec<_>>())?;
        let layer_norm =
            LayerNorm::stack(&parts.iter().map(|a| &a.layer_norm).collect::<Vec<_>>())?;
        let bottlenecks = parts.iter().any(|a| a.bottleneck.is_some());
        Ok(Self {
            dense,
            layer_norm,
            dropout: parts[0].dropout,
            bottleneck: None,
            parts: bottlenecks.then(|| parts.iter().map(|a| (*a).clone()).collect()),
        })
    }

    fn forward(&self, x: &Tensor, residual: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        self.add_norm(self.dense.forward(x, ctx)?, residual, ctx)
    }

    /// forward(act(z)), the activation inside the dense op where it can be.
    fn forward_after(
        &self,
        z: &Tensor,
        act: Activation,
        residual: &Tensor,
        ctx: &Ctx,
    ) -> Result<Tensor> {
        self.add_norm(self.dense.forward_after(z, act, ctx)?, residual, ctx)
    }

    fn add_norm(&self, y: Tensor, residual: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        if let Some(parts) = &self.parts {
            return crate::model::segments::per_segment(parts, &[&y, residual], 1, ctx, |a, xs| {
                a.add_norm(xs[0].clone(), &xs[1], ctx)
            });
        }
        if let Some(b) = &self.bottleneck {
            let h = self.dropout.forward(&y, ctx)?;
            return b.forward(&h, residual, &self.layer_norm, ctx);
        }
        let s = dropout::dropout_add(&y, residual, self.dropout.op(ctx))?;
        self.layer_norm.forward(&s, ctx)
    }
}

/// BERT's attention, or DeBERTa's over content and relative positions.
enum Attention {
    Bert(SelfAttention),
    Disentangled(Disentangled),
}

pub struct Layer {
    attention: Attention,
    attention_output: AddNorm,
    intermediate: Linear,
    act: Activation,
    output: AddNorm,
}

impl Layer {
    /// One layer over `parts` of a stacked model (`stack.rs`).
    pub(crate) fn stack(parts: &[&Layer]) -> Result<Self> {
        let attention = match &parts[0].attention {
            Attention::Bert(_) => Attention::Bert(SelfAttention::stack(
                &parts
                    .iter()
                    .map(|l| match &l.attention {
                        Attention::Bert(a) => Ok(a),
                        Attention::Disentangled(_) => {
                            anyhow::bail!("the adapters' attention differs")
                        }
                    })
                    .collect::<Result<Vec<_>>>()?,
            )?),
            Attention::Disentangled(_) => Attention::Disentangled(Disentangled::stack(
                &parts
                    .iter()
                    .map(|l| match &l.attention {
                        Attention::Disentangled(a) => Ok(a),
                        Attention::Bert(_) => anyhow::bail!("the adapters' attention differs"),
                    })
                    .collect::<Result<Vec<_>>>()?,
            )?),
        };
        let add_norms = |f: fn(&Layer) -> &AddNorm| {
            AddNorm::stack(&parts.iter().map(|l| f(l)).collect::<Vec<_>>())
        };
        Ok(Self {
            attention,
            attention_output: add_norms(|l| &l.attention_output)?,
            intermediate: Linear::stack(
                &parts.iter().map(|l| &l.intermediate).collect::<Vec<_>>(),
            )?,
            act: parts[0].act,
            output: add_norms(|l| &l.output)?,
        })
    }

    pub fn load(path: &Path, cfg: &ModelConfig, adapters: Option<&AdapterConfig>) -> Result<Self> {
        let att = path.pp("attention");
        let inter = path.pp("intermediate").pp("dense");
        let inter_adapter = adapters.filter(|a| a.wraps("intermediate.dense"));
        let attention = match cfg.model_type.is_deberta() {
            true => Attention::Disentangled(Disentangled::load(&att.pp("self"), cfg, adapters)?),
            false => Attention::Bert(SelfAttention::load(&att.pp("self"), cfg, adapters)?),
        };
        Ok(Self {
            attention,
            attention_output: AddNorm::load(
                &att.pp("output"),
                "attention.output",
                cfg.hidden_size,
                cfg,
                adapters,
            )?,
            intermediate: Linear::load(&inter, cfg.hidden_size, cfg.intermediate_size)?
                .with_adapter(&inter, inter_adapter)?,
            act: cfg.hidden_act,
            output: AddNorm::load(
                &path.pp("output"),
                "output",
                cfg.intermediate_size,
                cfg,
                adapters,
            )?,
        })
    }

    /// `positions`: DeBERTa's relative embeddings of this forward (None for the others);
    /// `prefix`: this layer's prefix keys and values (not for DeBERTa, whose model refuses
    /// prefixes).
    pub fn forward(
        &self,
        x: &Tensor,
        mask: &Tensor,
        positions: Option<&Positions>,
        prefix: Option<&Kv>,
        ctx: &Ctx,
    ) -> Result<Tensor> {
        let a = match &self.attention {
            Attention::Bert(att) => att.forward(x, mask, prefix, ctx)?,
            Attention::Disentangled(att) => att.forward(x, mask, positions, ctx)?,
        };
        let h = self.attention_output.forward(&a, x, ctx)?;
        let z = self.intermediate.forward(&h, ctx)?;
        self.output.forward_after(&z, self.act, &h, ctx)
    }
}
