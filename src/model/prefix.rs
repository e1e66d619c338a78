//! Prefix tuning (Li & Liang, 2021) and P-tuning v2 (Liu et al., 2022), as PEFT's
//! `PrefixTuningConfig` builds them: `tokens` learned keys and values put before every
//! layer's own, attended by every real token, the encoder frozen.
//!
//! The prefix is one table of (tokens, layers·2·width): for layer i, its columns
//! [2i·width, (2i+1)·width) are the keys and the next `width` the values, split into heads
//! as the layer splits its own (PEFT's `get_prompt`: view (tokens, layers·2, heads,
//! head_dim), then layer i's key is row 2i). With `--prefix-projection HIDDEN` the table is
//! computed from a (tokens, width) embedding by width → HIDDEN → tanh → layers·2·width
//! (PEFT's `prefix_projection`, `encoder_hidden_size`); each layer computes only its own
//! columns of the last projection, so activation recomputation rebuilds them per layer.
//!
//! What transformers 4.x does with PEFT's prefix, which the parity fixtures come from (5.x
//! no longer takes a cache in BERT's encoder): the attention mask gains `tokens` ones in
//! front, and absolute positions start after the prefix (BERT and ELECTRA count from
//! `tokens`, RoBERTa from pad_id + 1 + `tokens`), as for a continuation of a cached sequence.

use std::collections::HashMap;

use anyhow::Result;
use candle_core::Tensor;

use super::params::{Init, Path};

/// The table, or the embedding the projection reads (PEFT's `prompt_encoder.default.embedding`).
pub const EMBEDDING: &str = "prompt_encoder.embedding.weight";
/// The projection's two linear layers (PEFT's `prompt_encoder.default.transform.{0,2}`).
pub const TRANSFORM: [&str; 2] = ["prompt_encoder.transform.0", "prompt_encoder.transform.2"];

/// One layer's prefix: keys and values, each (tokens, width).
pub struct Kv {
    pub key: Tensor,
    pub value: Tensor,
}

/// The learned prefix of every layer.
pub struct Prefix {
    embedding: Tensor,
    /// (weight (hidden, width), bias), (weight (layers·2·width, hidden), bias).
    projection: Option<[(Tensor, Tensor); 2]>,
    width: usize,
}

impl Prefix {
    /// `tokens` virtual tokens for `layers` layers of `width`, through a projection of
    /// `hidden` if given. Starts as PEFT's: the embedding N(0, 1) (nn.Embedding), the
    /// linear layers as torch's nn.Linear (weight and bias U(±1/√fan_in)).
    pub fn load(
        root: &Path,
        tokens: usize,
        layers: usize,
        width: usize,
        hidden: Option<usize>,
    ) -> Result<Self> {
        let table = 2 * layers * width;
        let embedding = root.get_or_init(
            EMBEDDING,
            &[tokens, hidden.map_or(table, |_| width)],
            Init::Normal(1.0),
        )?;
        let projection = match hidden {
            None => None,
            Some(h) => {
                let linear = |name: &str, d_in: usize, d_out: usize| -> Result<(Tensor, Tensor)> {
                    let p = root.pp(name);
                    let bound = Init::Uniform(1.0 / (d_in as f64).sqrt());
                    Ok((
                        p.get_or_init("weight", &[d_out, d_in], bound)?,
                        p.get_or_init("bias", &[d_out], bound)?,
                    ))
                };
                Some([
                    linear(TRANSFORM[0], width, h)?,
                    linear(TRANSFORM[1], h, table)?,
                ])
            }
        };
        Ok(Self {
            embedding,
            projection,
            width,
        })
    }

    pub fn tokens(&self) -> Result<usize> {
        Ok(self.embedding.dim(0)?)
    }

    /// Layer `i`'s keys and values.
    pub fn layer(&self, i: usize) -> Result<Kv> {
        let w = self.width;
        let (key, value) = match &self.projection {
            None => (
                self.embedding.narrow(1, 2 * i * w, w)?,
                self.embedding.narrow(1, (2 * i + 1) * w, w)?,
            ),
            Some([(w1, b1), (w2, b2)]) => {
                let hidden = self.embedding.matmul(&w1.t()?)?.broadcast_add(b1)?.tanh()?;
                let part = |j: usize| -> Result<Tensor> {
                    let rows = w2.narrow(0, j * w, w)?;
                    Ok(hidden
                        .matmul(&rows.t()?)?
                        .broadcast_add(&b2.narrow(0, j * w, w)?)?)
                };
                (part(2 * i)?, part(2 * i + 1)?)
            }
        };
        Ok(Kv { key, value })
    }
}

/// The whole table (tokens, layers·2·width) from a run's prefix tensors: the embedding, or
/// the projection applied to it, what PEFT saves as `prompt_embeddings`.
pub fn table(tensors: &HashMap<String, Tensor>) -> Result<Tensor> {
    let get = |name: String| {
        tensors
            .get(&name)
            .ok_or_else(|| crate::error::user(format!("the run has no `{name}`")))
    };
    let embedding = get(EMBEDDING.to_string())?;
    if !tensors.contains_key(&format!("{}.weight", TRANSFORM[0])) {
        return Ok(embedding.clone());
    }
    let linear = |x: &Tensor, name: &str| -> Result<Tensor> {
        let w = get(format!("{name}.weight"))?;
        let b = get(format!("{name}.bias"))?;
        Ok(x.matmul(&w.t()?)?.broadcast_add(b)?)
    };
    let hidden = linear(embedding, TRANSFORM[0])?.tanh()?;
    linear(&hidden, TRANSFORM[1])
}
