//! One transformer layer: self-attention, then the feed-forward block, each followed by
//! dropout, a residual and a post-LayerNorm (BERT and RoBERTa are post-norm).

use anyhow::Result;
use candle_core::{Module, Tensor};

use super::config::{Activation, ModelConfig};
use super::nn::{activate, Ctx, Dropout, LayerNorm, Linear};
use super::ops;
use super::params::Path;

pub struct SelfAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    heads: usize,
    head_dim: usize,
    dropout: Dropout,
}

impl SelfAttention {
    fn load(path: &Path, cfg: &ModelConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            query: Linear::load(&path.pp("query"), h, h)?,
            key: Linear::load(&path.pp("key"), h, h)?,
            value: Linear::load(&path.pp("value"), h, h)?,
            heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim(),
            dropout: Dropout::new(cfg.attention_probs_dropout_prob),
        })
    }

    /// `mask`: (batch, seq), 1 for real tokens and 0 for padding.
    fn forward(&self, x: &Tensor, mask: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let (b, t, h) = x.dims3()?;
        let split = |y: Tensor| -> Result<Tensor> {
            Ok(y.reshape((b, t, self.heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = split(self.query.forward(x)?)?;
        let k = split(self.key.forward(x)?)?;
        let v = split(self.value.forward(x)?)?;
        let scores = q.matmul(&k.t()?)?;
        let probs = ops::attention_probs(&scores, mask, 1.0 / (self.head_dim as f64).sqrt())?;
        let probs = self.dropout.forward(&probs, ctx)?;
        Ok(probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, h))?)
    }
}

/// dense → dropout → + residual → LayerNorm: `attention.output` and `output` share it.
pub struct AddNorm {
    dense: Linear,
    layer_norm: LayerNorm,
    dropout: Dropout,
}

impl AddNorm {
    fn load(path: &Path, d_in: usize, cfg: &ModelConfig) -> Result<Self> {
        Ok(Self {
            dense: Linear::load(&path.pp("dense"), d_in, cfg.hidden_size)?,
            layer_norm: LayerNorm::load(
                &path.pp("LayerNorm"),
                cfg.hidden_size,
                cfg.layer_norm_eps,
            )?,
            dropout: Dropout::new(cfg.hidden_dropout_prob),
        })
    }

    fn forward(&self, x: &Tensor, residual: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let y = self.dropout.forward(&self.dense.forward(x)?, ctx)?;
        self.layer_norm.forward(&(y + residual)?)
    }
}

pub struct Layer {
    attention: SelfAttention,
    attention_output: AddNorm,
    intermediate: Linear,
    act: Activation,
    output: AddNorm,
}

impl Layer {
    pub fn load(path: &Path, cfg: &ModelConfig) -> Result<Self> {
        let att = path.pp("attention");
        Ok(Self {
            attention: SelfAttention::load(&att.pp("self"), cfg)?,
            attention_output: AddNorm::load(&att.pp("output"), cfg.hidden_size, cfg)?,
            intermediate: Linear::load(
                &path.pp("intermediate").pp("dense"),
                cfg.hidden_size,
                cfg.intermediate_size,
            )?,
            act: cfg.hidden_act,
            output: AddNorm::load(&path.pp("output"), cfg.intermediate_size, cfg)?,
        })
    }

    pub fn forward(&self, x: &Tensor, mask: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let a = self.attention.forward(x, mask, ctx)?;
        let h = self.attention_output.forward(&a, x, ctx)?;
        let i = activate(&self.intermediate.forward(&h)?, self.act)?;
        self.output.forward(&i, &h, ctx)
    }
}
