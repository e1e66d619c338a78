//! XLNet's encoder as transformers' `XLNetModel` runs it for fine-tuning: the content stream
//! alone (no permutation targets, no query stream, no memory), relative positional
//! attention with `r_w_bias`, `r_r_bias`, segment attention with `r_s_bias` and
//! `seg_embed`, `bi_data` false; and the heads of `XLNetForSequenceClassification` (the
//! sequence summary of the last token: projection, tanh, dropout; then `logits_proj`) and
//! `XLNetForQuestionAnsweringSimple` (`qa_outputs` on every token).
//!
//! Activations are kept as transformers keeps them, (seq, batch, width), so that a dropout
//! mask indexes the same elements as torch's (tests/golden/make_xlnet_golden.py draws
//! peft's masks in transformers); the attention scores are (batch, heads, query, key).
//!
//! `Model` runs it layer by layer (embed, shared, layer, finish), as it runs the other
//! families, so that activation recomputation works on it too. Attention scores, the
//! feed-forward and the LayerNorms act on (seq, batch, ·) activations, which per-example
//! Fisher's probes cannot tell apart by example: those tensors are estimated one example
//! at a time (`Linear::forward_shared`, `LayerNorm::forward_shared`).

use anyhow::Result;
use candle_core::{DType, Device, Tensor, D};
use serde::Deserialize;

use super::activation::Activation;
use super::ctx::{Ctx, Dropout, ProbeKind};
use super::nn::{activate, LayerNorm, Linear};
use super::params::Path;
use crate::error::user;

/// The fields of an XLNet config.json the content stream reads.
#[derive(Debug, Clone, Deserialize)]
pub struct XlnetConfig {
    pub vocab_size: usize,
    pub d_model: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub d_head: usize,
    pub d_inner: usize,
    #[serde(default = "gelu")]
    pub ff_activation: Activation,
    #[serde(default = "tenth")]
    pub dropout: f64,
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
    /// Relative distances beyond this are clamped to it; -1 (or 0): none.
    #[serde(default = "no_clamp")]
    pub clamp_len: i64,
    #[serde(default = "bi")]
    pub attn_type: String,
    #[serde(default)]
    pub bi_data: bool,
    #[serde(default = "last")]
    pub summary_type: String,
    #[serde(default = "yes")]
    pub summary_use_proj: bool,
    /// Absent in XLNet's own configs: then the projection is d_model → d_model.
    #[serde(default)]
    pub summary_proj_to_labels: bool,
    /// Absent in XLNet's own configs: no dropout before the projection.
    #[serde(default)]
    pub summary_first_dropout: f64,
    #[serde(default = "tenth")]
    pub summary_last_dropout: f64,
    #[serde(default = "tanh")]
    pub summary_activation: Option<String>,
    #[serde(default = "std")]
    pub initializer_range: f64,
    #[serde(default)]
    pub pad_token_id: u32,
}

fn gelu() -> Activation {
    Activation::Gelu
}
fn tenth() -> f64 {
    0.1
}
fn eps() -> f64 {
    1e-12
}
fn no_clamp() -> i64 {
    -1
}
fn bi() -> String {
    "bi".into()
}
fn last() -> String {
    "last".into()
}
fn yes() -> bool {
    true
}
fn tanh() -> Option<String> {
    Some("tanh".into())
}
fn std() -> f64 {
    0.02
}

/// Bounds far above any released XLNet (xlnet-large: 1,024 wide, 24 layers, 32,000 pieces).
const MAX_WIDTH: usize = 1 << 16;
const MAX_LAYERS: usize = 1 << 10;
const MAX_VOCAB: usize = 1 << 22;

impl XlnetConfig {
    /// Parse config.json's text, refusing what fine-tuning's content stream does not run.
    pub fn parse(text: &str) -> Result<Self> {
        let cfg: Self = serde_json::from_str(text).map_err(|e| user(format!("{e}")))?;
        let refuse = |what: String| Err(user(what));
        if cfg.n_head == 0 || cfg.d_head == 0 || cfg.d_model == 0 || !cfg.d_model.is_multiple_of(2)
        {
            return refuse(format!(
                "d_model {} (even, > 0), n_head {} and d_head {} (> 0)",
                cfg.d_model, cfg.n_head, cfg.d_head
            ));
        }
        if cfg.d_model > MAX_WIDTH
            || cfg.d_inner > MAX_WIDTH * 8
            || cfg.n_head * cfg.d_head > MAX_WIDTH
            || cfg.n_layer > MAX_LAYERS
            || cfg.vocab_size > MAX_VOCAB
        {
            return refuse("a size in config.json is past any XLNet's".into());
        }
        if cfg.attn_type != "bi" || cfg.bi_data {
            return refuse(format!(
                "attn_type \"{}\" with bi_data {}: fine-tuning runs attn_type \"bi\" without \
                 bi_data",
                cfg.attn_type, cfg.bi_data
            ));
        }
        if cfg.summary_type != "last" || !cfg.summary_use_proj || cfg.summary_proj_to_labels {
            return refuse(format!(
                "summary_type \"{}\", summary_use_proj {}, summary_proj_to_labels {}: \
                 XLNet's classifier is the last token's summary, projected to d_model",
                cfg.summary_type, cfg.summary_use_proj, cfg.summary_proj_to_labels
            ));
        }
        if !matches!(cfg.summary_activation.as_deref(), Some("tanh")) {
            return refuse(format!(
                "summary_activation {:?}: only XLNet's tanh",
                cfg.summary_activation
            ));
        }
        Ok(cfg)
    }
}

/// The relative position encoding of a sequence of `len`: rows for distances len down to
/// -len + 1, each all sines then all cosines (transformers' `relative_positional_encoding`),
/// (2·len, d_model).
pub fn positions(len: usize, d_model: usize, clamp: i64, device: &Device) -> Result<Tensor> {
    let half = d_model / 2;
    // As torch computes them, in f32: 1 / 10000^(2k / d).
    let inv: Vec<f32> = (0..half)
        .map(|k| 1.0 / 10000f32.powf((2 * k) as f32 / d_model as f32))
        .collect();
    let mut out = Vec::with_capacity(2 * len * d_model);
    for m in 0..2 * len {
        let mut p = len as i64 - m as i64;
        if clamp > 0 {
            p = p.clamp(-clamp, clamp);
        }
        let row: Vec<f32> = inv.iter().map(|f| p as f32 * f).collect();
        out.extend(row.iter().map(|x| x.sin()));
        out.extend(row.iter().map(|x| x.cos()));
    }
    Ok(Tensor::from_vec(out, (2 * len, d_model), device)?)
}

/// One layer's relative attention: projections (d_model, heads, d_head) without biases.
struct RelAttention {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    r: Tensor,
    o: Tensor,
    r_w_bias: Tensor,
    r_r_bias: Tensor,
    r_s_bias: Tensor,
    seg_embed: Tensor,
    layer_norm: LayerNorm,
    heads: usize,
    d_head: usize,
    dropout: Dropout,
}

impl RelAttention {
    fn load(p: &Path, cfg: &XlnetConfig) -> Result<Self> {
        let (d, h, dh) = (cfg.d_model, cfg.n_head, cfg.d_head);
        // q, k, v, r act as x · W with W (d, h·dh); o as x · Wᵀ with W (d, h·dh).
        let proj = |n: &str| -> Result<Tensor> { Ok(p.get(n, &[d, h, dh])?.reshape((d, h * dh))?) };
        Ok(Self {
            q: proj("q")?,
            k: proj("k")?,
            v: proj("v")?,
            r: proj("r")?,
            o: proj("o")?,
            r_w_bias: p.get("r_w_bias", &[h, dh])?,
            r_r_bias: p.get("r_r_bias", &[h, dh])?,
            r_s_bias: p.get("r_s_bias", &[h, dh])?,
            seg_embed: p.get("seg_embed", &[2, h, dh])?,
            layer_norm: LayerNorm::load(&p.pp("layer_norm"), d, cfg.layer_norm_eps)?,
            heads: h,
            d_head: dh,
            dropout: Dropout::new(cfg.dropout),
        })
    }

    /// (seq, batch, d) through `w` (d, h·dh) to (batch, heads, seq, d_head).
    fn heads_of(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        let (l, b, d) = x.dims3()?;
        let y = x.reshape((l * b, d))?.matmul(w)?;
        Ok(y.reshape((l, b, self.heads, self.d_head))?
            .permute((1, 2, 0, 3))?
            .contiguous()?)
    }

    /// `h` (seq, batch, d); `pos` (2·seq, batch, d), example b's relative encoding in
    /// column b; `other_segment` (batch, 1, seq, seq), 1 where two tokens' segments differ;
    /// `masked` (batch, 1, seq, seq), 1 where query i may not see key j.
    fn forward(
        &self,
        h: &Tensor,
        pos: &Tensor,
        other_segment: &Tensor,
        masked: &Tensor,
        ctx: &Ctx,
    ) -> Result<Tensor> {
        let (l, b, d) = h.dims3()?;
        let q = self.heads_of(h, &self.q)?;
        let k = self.heads_of(h, &self.k)?;
        let v = self.heads_of(h, &self.v)?;
        let kr = self.heads_of(pos, &self.r)?; // (b, heads, 2l, dh)
        let bias = |t: &Tensor| t.reshape((1, self.heads, 1, self.d_head));
        // Content: (q + r_w_bias) · k.
        let ac = q
            .broadcast_add(&bias(&self.r_w_bias)?)?
            .matmul(&k.t()?.contiguous()?)?;
        // Position: (q + r_r_bias) · kr, then the relative shift: column j of row i reads
        // row l − i + j of the encoding, distance i − j (transformers' rel_shift_bnij).
        let bd = q
            .broadcast_add(&bias(&self.r_r_bias)?)?
            .matmul(&kr.t()?.contiguous()?)?; // (b, heads, l, 2l)
        let bd = bd
            .reshape((b, self.heads, 2 * l, l))?
            .narrow(2, 1, 2 * l - 1)?
            .contiguous()?
            .reshape((b, self.heads, l, 2 * l - 1))?
            .narrow(3, 0, l)?;
        // Segment: (q + r_s_bias) · seg_embed[s], s = 1 where the segments differ.
        let seg = self.seg_embed.permute((1, 2, 0))?.contiguous()?.reshape((
            1,
            self.heads,
            self.d_head,
            2,
        ))?;
        let ef = q
            .broadcast_add(&bias(&self.r_s_bias)?)?
            .broadcast_matmul(&seg)?; // (b, heads, l, 2)
        let same = ef.narrow(3, 0, 1)?;
        let diff = (ef.narrow(3, 1, 1)? - &same)?;
        let ef = same.broadcast_add(&diff.broadcast_mul(other_segment)?)?;
        let scale = 1.0 / (self.d_head as f64).sqrt();
        let score = ((ac + bd)? + ef)?.affine(scale, 0.0)?;
        let score = (score.broadcast_sub(&masked.affine(1e30, 0.0)?))?;
        let prob = candle_nn::ops::softmax(&score, D::Minus1)?;
        let prob = self.dropout.forward(&prob, ctx)?;
        let vec = prob.matmul(&v)?; // (b, heads, l, dh)
        let vec = vec
            .permute((2, 0, 1, 3))?
            .contiguous()?
            .reshape((l * b, self.heads * self.d_head))?;
        let out = vec.matmul(&self.o.t()?)?.reshape((l, b, d))?;
        let out = self.dropout.forward(&out, ctx)?;
        self.layer_norm.forward_shared(&(out + h)?)
    }
}

struct FeedForward {
    layer_1: Linear,
    layer_2: Linear,
    layer_norm: LayerNorm,
    act: Activation,
    dropout: Dropout,
}

impl FeedForward {
    fn load(p: &Path, cfg: &XlnetConfig) -> Result<Self> {
        Ok(Self {
            layer_1: Linear::load(&p.pp("layer_1"), cfg.d_model, cfg.d_inner)?,
            layer_2: Linear::load(&p.pp("layer_2"), cfg.d_inner, cfg.d_model)?,
            layer_norm: LayerNorm::load(&p.pp("layer_norm"), cfg.d_model, cfg.layer_norm_eps)?,
            act: cfg.ff_activation,
            dropout: Dropout::new(cfg.dropout),
        })
    }

    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        // (seq, batch, ·): out of per-example Fisher's probes (see the module's doc).
        let y = activate(&self.layer_1.forward_shared(x, ctx)?, self.act)?;
        let y = self.dropout.forward(&y, ctx)?;
        let y = self.layer_2.forward_shared(&y, ctx)?;
        let y = self.dropout.forward(&y, ctx)?;
        self.layer_norm.forward_shared(&(y + x)?)
    }
}

/// XLNet's encoder: `{prefix}.word_embedding.weight`, `{prefix}.layer.N.rel_attn.*`,
/// `{prefix}.layer.N.ff.*` (`mask_emb` belongs to the query stream and is not read).
pub struct Xlnet {
    word_embedding: Tensor,
    layers: Vec<(RelAttention, FeedForward)>,
    dropout: Dropout,
    d_model: usize,
    clamp_len: i64,
}

/// What every layer of one batch reads: the relative encoding after its dropout
/// (2·seq, batch, d), which keys each query may not see and which pairs of tokens lie in
/// different segments (both (batch, 1, seq, seq)). No parameter is among them.
#[derive(Clone)]
pub struct Shared {
    pos: Tensor,
    masked: Tensor,
    other_segment: Tensor,
}

impl Xlnet {
    pub fn load(p: &Path, cfg: &XlnetConfig) -> Result<Self> {
        let layers = (0..cfg.n_layer)
            .map(|i| {
                let l = p.pp(format!("layer.{i}"));
                Ok((
                    RelAttention::load(&l.pp("rel_attn"), cfg)?,
                    FeedForward::load(&l.pp("ff"), cfg)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            word_embedding: p.get("word_embedding.weight", &[cfg.vocab_size, cfg.d_model])?,
            layers,
            dropout: Dropout::new(cfg.dropout),
            d_model: cfg.d_model,
            clamp_len: cfg.clamp_len,
        })
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// The word embeddings of `input_ids` (batch, seq) after their dropout, in XLNet's
    /// (seq, batch, d) layout.
    pub fn embed(&self, input_ids: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let (b, l) = input_ids.dims2()?;
        let h = self
            .word_embedding
            .index_select(&input_ids.flatten_all()?, 0)?
            .reshape((b, l, self.d_model))?;
        // Looked up batch first, so that per-example Fisher sees each example's rows.
        let kind = ProbeKind::Lookup {
            tables: vec![(self.word_embedding.id(), input_ids.clone())],
        };
        let h = ctx.probe(kind, input_ids, h)?;
        self.dropout.forward(&h.transpose(0, 1)?.contiguous()?, ctx)
    }

    /// What the layers share for a batch of `token_type_ids` and `attention_mask` (batch,
    /// seq; 1 for real tokens), padded on either side: the relative encoding is drawn
    /// (its dropout) here, after the embeddings', as transformers draws it.
    pub fn shared(
        &self,
        token_type_ids: &Tensor,
        attention_mask: &Tensor,
        ctx: &Ctx,
    ) -> Result<Shared> {
        let (b, l) = attention_mask.dims2()?;
        let device = attention_mask.device();
        // Key j is hidden from query i when j pads and i ≠ j (a padding query still sees
        // itself, as transformers' non_tgt_mask).
        let pad = attention_mask
            .to_dtype(DType::F32)?
            .affine(-1.0, 1.0)?
            .reshape((b, 1, 1, l))?;
        let eye = Tensor::eye(l, DType::F32, device)?.reshape((1, 1, l, l))?;
        let masked = pad.broadcast_sub(&eye)?.gt(0.0)?.to_dtype(DType::F32)?;
        let types = token_type_ids.to_dtype(DType::F32)?;
        let other_segment = types
            .reshape((b, 1, l, 1))?
            .broadcast_ne(&types.reshape((b, 1, 1, l))?)?
            .to_dtype(DType::F32)?;
        // The encoding expanded over the batch before its dropout: each example's own mask.
        let pos = positions(l, self.d_model, self.clamp_len, device)?
            .reshape((2 * l, 1, self.d_model))?
            .broadcast_as((2 * l, b, self.d_model))?
            .contiguous()?;
        Ok(Shared {
            pos: self.dropout.forward(&pos, ctx)?,
            masked,
            other_segment,
        })
    }

    /// Layer `i` on `h` (seq, batch, d).
    pub fn layer(&self, i: usize, h: &Tensor, shared: &Shared, ctx: &Ctx) -> Result<Tensor> {
        let (attn, ff) = &self.layers[i];
        let h = attn.forward(h, &shared.pos, &shared.other_segment, &shared.masked, ctx)?;
        ff.forward(&h, ctx)
    }

    /// The last layer's output through the final dropout, batch first: (batch, seq, d).
    pub fn finish(&self, h: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let h = self.dropout.forward(h, ctx)?;
        Ok(h.transpose(0, 1)?.contiguous()?)
    }

    /// The last hidden state (batch, seq, d) of `input_ids`, `token_type_ids` and
    /// `attention_mask` (batch, seq; 1 for real tokens).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: &Tensor,
        ctx: &Ctx,
    ) -> Result<Tensor> {
        let mut h = self.embed(input_ids, ctx)?;
        let shared = self.shared(token_type_ids, attention_mask, ctx)?;
        for i in 0..self.layers.len() {
            h = self.layer(i, &h, &shared, ctx)?;
        }
        self.finish(&h, ctx)
    }
}

/// `XLNetForSequenceClassification`'s head on the last token: `sequence_summary.summary`
/// (d → d), tanh, dropout, then `logits_proj` (d → labels).
#[derive(Clone)]
pub struct SummaryHead {
    summary: Linear,
    first_dropout: Dropout,
    last_dropout: Dropout,
    logits_proj: Linear,
}

impl SummaryHead {
    /// Loaded when the checkpoint has it, else initialised as transformers does.
    pub fn load(p: &Path, cfg: &XlnetConfig, labels: usize) -> Result<Self> {
        let std = cfg.initializer_range;
        let d = cfg.d_model;
        Ok(Self {
            summary: Linear::load_or_init(&p.pp("sequence_summary.summary"), d, d, std)?,
            first_dropout: Dropout::new(cfg.summary_first_dropout),
            last_dropout: Dropout::new(cfg.summary_last_dropout),
            logits_proj: Linear::load_or_init(&p.pp("logits_proj"), d, labels, std)?,
        })
    }

    /// Logits (batch, labels) from the last hidden state (batch, seq, d) at each row's
    /// last real token (`attention_mask`, batch × seq, 1 for real tokens): `<cls>`, which
    /// transformers finds last because it pads on the left. Padded on either side, a real
    /// token's state is the same (relative attention reads distances, and padding is
    /// hidden from real queries), so the logits are too.
    pub fn forward(&self, hidden: &Tensor, attention_mask: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let last = last_tokens(hidden, attention_mask)?;
        let x = self.first_dropout.forward(&last, ctx)?;
        let x = self.summary.forward(&x, ctx)?.tanh()?;
        let x = self.last_dropout.forward(&x, ctx)?;
        self.logits_proj.forward(&x, ctx)
    }

    pub fn outputs(&self) -> usize {
        self.logits_proj.weight().dims()[0]
    }
}

/// Each row's last real token of `hidden` (batch, seq, d): (batch, d). Real tokens are
/// those `attention_mask` marks, contiguous on the right (left padding) or the left.
pub fn last_tokens(hidden: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
    let (b, l, d) = hidden.dims3()?;
    let mask: Vec<Vec<f32>> = attention_mask.to_dtype(DType::F32)?.to_vec2()?;
    let rows: Vec<u32> = mask
        .iter()
        .enumerate()
        .map(|(r, m)| {
            let last = m.iter().rposition(|&v| v > 0.0).unwrap_or(l - 1);
            (r * l + last) as u32
        })
        .collect();
    let rows = Tensor::from_vec(rows, b, hidden.device())?;
    Ok(hidden.reshape((b * l, d))?.index_select(&rows, 0)?)
}

/// `XLNetForQuestionAnsweringSimple`'s `qa_outputs`: start and end logits per token.
pub struct SpanHead {
    qa_outputs: Linear,
}

impl SpanHead {
    pub fn load(p: &Path, cfg: &XlnetConfig) -> Result<Self> {
        let init = cfg.initializer_range;
        Ok(Self {
            qa_outputs: Linear::load_or_init(&p.pp("qa_outputs"), cfg.d_model, 2, init)?,
        })
    }

    /// (batch, seq, 2): start logits in column 0, end logits in column 1.
    pub fn forward(&self, hidden: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        self.qa_outputs.forward(hidden, ctx)
    }
}
