//! DeBERTa's disentangled self-attention (He et al., 2021), as transformers' DebertaV2
//! and Deberta compute it:
//!
//! scores = (q·kᵀ + c2p + p2c) / sqrt(head_dim · scale_factor), where c2p(i, j) is query i
//! against the projected relative embedding of distance i − j (the "keys" of positions)
//! and p2c(i, j) key j against the projected embedding of that same distance (the
//! "queries" of positions). The relative embeddings pass dropout in every layer, then
//! the layer's own projections: v2 with `share_att_key` reuses `key_proj` and
//! `query_proj` (adapters included, as PEFT's wrapped modules are reused), else
//! `pos_key_proj` and `pos_query_proj`; v1 has `pos_proj` (no bias) and `pos_q_proj`.
//!
//! Padding follows transformers too: a pair (i, j) counts only when both tokens are real,
//! so a padding query's scores are all masked and it attends uniformly to every key. No
//! real token sees that, but it makes padding rows of the hidden states match.

use anyhow::Result;
use candle_core::{DType, Tensor, D};

use super::adapter::AdapterConfig;
use super::config::{Arch, ModelConfig};
use super::nn::{Ctx, Dropout, Linear};
use super::params::Path;
use super::relative::Positions;

/// How a layer turns its input into queries, keys and values.
enum Projections {
    /// v2: `query_proj`, `key_proj`, `value_proj`.
    Separate {
        query: Linear,
        key: Linear,
        value: Linear,
    },
    /// v1: one `in_proj` without bias whose output holds, head by head, that head's
    /// query, key and value (transformers views it as (heads, 3·head_dim) and chunks),
    /// then `q_bias` and `v_bias` added to queries and values.
    Fused {
        in_proj: Linear,
        q_bias: Tensor,
        v_bias: Tensor,
    },
}

pub struct Disentangled {
    projections: Projections,
    /// Relative embeddings → position keys, for content-to-position.
    pos_key: Option<Linear>,
    /// Relative embeddings → position queries, for position-to-content.
    pos_query: Option<Linear>,
    heads: usize,
    head_dim: usize,
    scale: f64,
    /// On the relative embeddings, per layer (hidden_dropout_prob).
    pos_dropout: Dropout,
    /// On the attention probabilities.
    dropout: Dropout,
}

impl Disentangled {
    /// One attention over `parts` of a stacked model. The position projections read the
    /// relative embeddings every row shares, so they must be the same in every part
    /// (LoRA on a key shared with positions is not).
    pub(crate) fn stack(parts: &[&Disentangled]) -> Result<Self> {
        let linears = |f: &dyn Fn(&Disentangled) -> Option<&Linear>| -> Result<Option<Linear>> {
            match parts.iter().map(|p| f(p)).collect::<Option<Vec<_>>>() {
                Some(ls) => Ok(Some(Linear::stack(&ls)?)),
                None if parts.iter().all(|p| f(p).is_none()) => Ok(None),
                None => anyhow::bail!("the adapters' attention differs"),
            }
        };
        let projections = match &parts[0].projections {
            Projections::Separate { .. } => {
                fn pick(d: &Disentangled, i: usize) -> Option<&Linear> {
                    match &d.projections {
                        Projections::Separate { query, key, value } => Some([query, key, value][i]),
                        Projections::Fused { .. } => None,
                    }
                }
                let differs = || anyhow::anyhow!("the adapters' attention differs");
                Projections::Separate {
                    query: linears(&|d| pick(d, 0))?.ok_or_else(differs)?,
                    key: linears(&|d| pick(d, 1))?.ok_or_else(differs)?,
                    value: linears(&|d| pick(d, 2))?.ok_or_else(differs)?,
                }
            }
            Projections::Fused { q_bias, v_bias, .. } => {
                let mut fused = Vec::with_capacity(parts.len());
                for p in parts {
                    match &p.projections {
                        Projections::Fused {
                            in_proj,
                            q_bias: q,
                            v_bias: v,
                        } if q.id() == q_bias.id() && v.id() == v_bias.id() => fused.push(in_proj),
                        _ => anyhow::bail!("the adapters' attention biases differ"),
                    }
                }
                Projections::Fused {
                    in_proj: Linear::stack(&fused)?,
                    q_bias: q_bias.clone(),
                    v_bias: v_bias.clone(),
                }
            }
        };
        let pos_key = linears(&|d| d.pos_key.as_ref())?;
        let pos_query = linears(&|d| d.pos_query.as_ref())?;
        if pos_key.iter().chain(&pos_query).any(Linear::is_stacked) {
            anyhow::bail!("the adapters' position projections differ");
        }
        Ok(Self {
            projections,
            pos_key,
            pos_query,
            ..*parts[0]
        })
    }

    /// `path`: the layer's `attention.self`. Adapters wrap the projections users name
    /// `query`, `key`, `value` (v2's `*_proj`), or v1's fused `in_proj` whole.
    pub fn load(path: &Path, cfg: &ModelConfig, adapters: Option<&AdapterConfig>) -> Result<Self> {
        let d = cfg.deberta()?;
        let h = cfg.hidden_size;
        let projections = match cfg.model_type {
            Arch::Deberta => Projections::Fused {
                in_proj: Linear::load_without_bias(&path.pp("in_proj"), h, 3 * h)?.with_adapter(
                    &path.pp("in_proj"),
                    adapters.filter(|a| a.wraps("attention.self.in_proj")),
                )?,
                q_bias: path.get("q_bias", &[h])?,
                v_bias: path.get("v_bias", &[h])?,
            },
            _ => {
                let linear = |target: &str| {
                    let p = path.pp(format!("{target}_proj"));
                    Linear::load(&p, h, h)?.with_adapter(
                        &p,
                        adapters.filter(|a| a.wraps(&format!("attention.self.{target}"))),
                    )
                };
                Projections::Separate {
                    query: linear("query")?,
                    key: linear("key")?,
                    value: linear("value")?,
                }
            }
        };
        let relative = d.relative.is_some();
        let (pos_key, pos_query) = match (&projections, cfg.model_type) {
            _ if !relative => (None, None),
            (Projections::Separate { query, key, .. }, _) if d.share_att_key => {
                (d.c2p.then(|| key.clone()), d.p2c.then(|| query.clone()))
            }
            (_, Arch::Deberta) => (
                d.c2p
                    .then(|| Linear::load_without_bias(&path.pp("pos_proj"), h, h))
                    .transpose()?,
                d.p2c
                    .then(|| Linear::load(&path.pp("pos_q_proj"), h, h))
                    .transpose()?,
            ),
            _ => (
                d.c2p
                    .then(|| Linear::load(&path.pp("pos_key_proj"), h, h))
                    .transpose()?,
                d.p2c
                    .then(|| Linear::load(&path.pp("pos_query_proj"), h, h))
                    .transpose()?,
            ),
        };
        Ok(Self {
            projections,
            pos_key,
            pos_query,
            heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim(),
            scale: 1.0 / ((cfg.head_dim() * d.scale_factor) as f64).sqrt(),
            pos_dropout: Dropout::new(cfg.hidden_dropout_prob),
            dropout: Dropout::new(cfg.attention_probs_dropout_prob),
        })
    }

    /// `mask`: (batch, seq), 1 for real tokens; `positions`: the relative embeddings of
    /// this forward, None without relative attention.
    pub fn forward(
        &self,
        x: &Tensor,
        mask: &Tensor,
        positions: Option<&Positions>,
        ctx: &Ctx,
    ) -> Result<Tensor> {
        let (b, t, hidden) = x.dims3()?;
        let (q, k, v) = self.qkv(x, ctx)?;
        let mut scores = q.matmul(&k.t()?)?;
        if let Some(pos) = positions.filter(|_| self.pos_key.is_some() || self.pos_query.is_some())
        {
            let rows = self.pos_dropout.forward(&pos.rows, ctx)?;
            if let Some(proj) = &self.pos_key {
                let c2p = self.against_positions(&q, &proj.forward_shared(&rows, ctx)?)?;
                scores = (scores + self.gather(&c2p, &pos.index)?.transpose(0, 1)?)?;
            }
            if let Some(proj) = &self.pos_query {
                // Rows are keys here: gather (key j, query i), then swap to (i, j).
                let p2c = self.against_positions(&k, &proj.forward_shared(&rows, ctx)?)?;
                let p2c = self.gather(&p2c, &pos.index_t)?;
                scores = (scores + p2c.transpose(0, 1)?.transpose(2, 3)?)?;
            }
        }
        let probs = pair_masked_softmax(&scores, mask, self.scale)?;
        let probs = self.dropout.forward(&probs, ctx)?;
        Ok(probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, hidden))?)
    }

    /// Queries, keys and values, each (batch, heads, seq, head_dim) and contiguous.
    fn qkv(&self, x: &Tensor, ctx: &Ctx) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, t, _) = x.dims3()?;
        let (heads, d) = (self.heads, self.head_dim);
        let split = |y: Tensor| -> Result<Tensor> {
            Ok(y.reshape((b, t, heads, d))?.transpose(1, 2)?.contiguous()?)
        };
        match &self.projections {
            Projections::Separate { query, key, value } => Ok((
                split(query.forward(x, ctx)?)?,
                split(key.forward(x, ctx)?)?,
                split(value.forward(x, ctx)?)?,
            )),
            Projections::Fused {
                in_proj,
                q_bias,
                v_bias,
            } => {
                let qkv = in_proj.forward(x, ctx)?.reshape((b, t, heads, 3 * d))?;
                let part = |i: usize| -> Result<Tensor> {
                    Ok(qkv.narrow(3, i * d, d)?.transpose(1, 2)?.contiguous()?)
                };
                let per_head = |bias: &Tensor| bias.reshape((1, heads, 1, d));
                Ok((
                    part(0)?.broadcast_add(&per_head(q_bias)?)?,
                    part(1)?,
                    part(2)?.broadcast_add(&per_head(v_bias)?)?,
                ))
            }
        }
    }

    /// Content (batch, heads, seq, d) against projected positions (rows, hidden): every
    /// token against every row, as (heads, batch, seq, rows), one gemm per head.
    fn against_positions(&self, content: &Tensor, projected: &Tensor) -> Result<Tensor> {
        let (b, heads, t, d) = content.dims4()?;
        let rows = projected.dim(0)?;
        let p = projected
            .reshape((rows, heads, d))?
            .transpose(0, 1)?
            .contiguous()?;
        let c = content.transpose(0, 1)?.reshape((heads, b * t, d))?;
        Ok(c.matmul(&p.t()?)?.reshape((heads, b, t, rows))?)
    }

    /// Per (head, batch, row i, column j) the entry of `scores` (heads, batch, seq, rows)
    /// at row i and column `index[i][j]`: (heads, batch, seq, seq).
    fn gather(&self, scores: &Tensor, index: &Tensor) -> Result<Tensor> {
        let (heads, b, t, _) = scores.dims4()?;
        let index = index.broadcast_as((heads, b, t, t))?.contiguous()?;
        Ok(scores.contiguous()?.gather(&index, 3)?)
    }
}

/// softmax(scale · scores) over keys for scores (batch, heads, seq, seq), with the pair
/// (i, j) kept only when both tokens are real (transformers' DeBERTa mask, masked_fill
/// with f32::MIN: a row with nothing kept comes out uniform).
fn pair_masked_softmax(scores: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    let (b, _, t, _) = scores.dims4()?;
    let m = mask.to_dtype(DType::F32)?;
    let pairs = m
        .reshape((b, t, 1))?
        .broadcast_mul(&m.reshape((b, 1, t))?)?
        .reshape((b, 1, t, t))?;
    // 0 keeps, f32::MIN removes; a kept score plus MIN rounds to MIN, so masked_fill's
    // replacement and this addition agree.
    let add = pairs.affine(f32::MAX as f64, f32::MIN as f64)?;
    let x = (scores * scale)?.broadcast_add(&add)?;
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}
