//! Word + position + token-type embeddings → LayerNorm → dropout (ELECTRA's may be
//! narrower than the encoder; the model projects them).
//!
//! DeBERTa leaves out what its config turns off (absolute positions without
//! `position_biased_input`, token types when `type_vocab_size` is 0), projects narrower
//! embeddings with `embed_proj` before the LayerNorm rather than after, and zeroes the
//! padding rows after it.

use anyhow::Result;
use candle_core::{DType, Tensor};

use super::config::{Arch, ModelConfig};
use super::nn::{Ctx, Dropout, LayerNorm, Linear, ProbeKind};
use super::params::Path;

pub struct Embeddings {
    word: Tensor,
    position: Option<Tensor>,
    token_type: Option<Tensor>,
    /// DeBERTa's `embed_proj` (no bias): embedding_size → hidden_size before the LayerNorm.
    project: Option<Linear>,
    layer_norm: LayerNorm,
    dropout: Dropout,
    arch: Arch,
    pad_id: u32,
}

impl Embeddings {
    pub fn load(path: &Path, cfg: &ModelConfig) -> Result<Self> {
        let e = cfg.embedding_width();
        let deberta = cfg.deberta.as_ref();
        let has_positions = deberta.is_none_or(|d| d.position_biased_input);
        let project = match deberta {
            Some(_) if e != cfg.hidden_size => Some(Linear::load_without_bias(
                &path.pp("embed_proj"),
                e,
                cfg.hidden_size,
            )?),
            _ => None,
        };
        let normed = if project.is_some() {
            cfg.hidden_size
        } else {
            e
        };
        Ok(Self {
            word: path.get("word_embeddings.weight", &[cfg.vocab_size, e])?,
            position: has_positions
                .then(|| {
                    path.get(
                        "position_embeddings.weight",
                        &[cfg.max_position_embeddings, e],
                    )
                })
                .transpose()?,
            token_type: (cfg.type_vocab_size > 0)
                .then(|| path.get("token_type_embeddings.weight", &[cfg.type_vocab_size, e]))
                .transpose()?,
            project,
            layer_norm: LayerNorm::load(&path.pp("LayerNorm"), normed, cfg.layer_norm_eps)?,
            dropout: Dropout::new(cfg.hidden_dropout_prob),
            arch: cfg.model_type,
            pad_id: cfg.pad_token_id,
        })
    }

    /// One over `parts` of a stacked model: their tables must be the same (each part's
    /// LayerNorm and projection may be its own).
    pub(crate) fn stack(parts: &[&Embeddings]) -> Result<Self> {
        use super::segments::{same, same_opt};
        if !(same(parts.iter().map(|e| &e.word))
            && same_opt(parts.iter().map(|e| e.position.as_ref()))
            && same_opt(parts.iter().map(|e| e.token_type.as_ref())))
        {
            anyhow::bail!("the adapters' embedding tables differ (a full fine-tune, another base)");
        }
        let project = match parts[0].project {
            Some(_) => Some(Linear::stack(
                &parts
                    .iter()
                    .map(|e| e.project.as_ref())
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| anyhow::anyhow!("the adapters differ in embed_proj"))?,
            )?),
            None => None,
        };
        Ok(Self {
            word: parts[0].word.clone(),
            position: parts[0].position.clone(),
            token_type: parts[0].token_type.clone(),
            project,
            layer_norm: LayerNorm::stack(&parts.iter().map(|e| &e.layer_norm).collect::<Vec<_>>())?,
            dropout: parts[0].dropout,
            arch: parts[0].arch,
            pad_id: parts[0].pad_id,
        })
    }

    /// `input_ids`, `token_type_ids`: (batch, seq) u32; `mask`: (batch, seq), 1 for real
    /// tokens. `prompt` (virtual tokens, width): prompt tuning's embeddings, put before
    /// each sequence's words as PEFT passes them (`inputs_embeds`), with token type 0 and
    /// the first positions; `mask` then covers them too. `past`: positions already taken
    /// (a prefix's), counted on from.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        mask: &Tensor,
        prompt: Option<&Tensor>,
        past: usize,
        ctx: &Ctx,
    ) -> Result<Tensor> {
        let (input_ids, token_type_ids, words) = match prompt {
            Some(p) => self.prompted(input_ids, token_type_ids, p)?,
            None => (
                input_ids.clone(),
                token_type_ids.clone(),
                self.word.index_select(&input_ids.flatten_all()?, 0)?,
            ),
        };
        let (input_ids, token_type_ids) = (&input_ids, &token_type_ids);
        let (b, t) = input_ids.dims2()?;
        let e = self.word.dim(1)?;
        let mut x = words;
        // What each table's rows were read by, for per-example Fisher (Ctx::probing).
        let mut tables = vec![(self.word.id(), input_ids.clone())];
        if let Some(types) = &self.token_type {
            x = (x + types.index_select(&token_type_ids.flatten_all()?, 0)?)?;
            tables.push((types.id(), token_type_ids.clone()));
        }
        if let Some(position) = &self.position {
            let max_pos = position.dim(0)?;
            let last = match self.arch {
                Arch::Roberta => past + t + self.pad_id as usize + 1,
                _ => past + t,
            };
            if last > max_pos {
                anyhow::bail!("sequence of {t} tokens after {past} exceeds max_position_embeddings {max_pos}; lower --max-seq-len");
            }
            let positions = self.position_ids(input_ids, past)?;
            x = (x + position.index_select(&positions.flatten_all()?, 0)?)?;
            tables.push((position.id(), positions));
        }
        let x = x.reshape((b, t, e))?;
        // The prompt's rows are no table row: out of the probes' reach.
        let mut x = match prompt {
            None => ctx.probe(ProbeKind::Lookup { tables }, input_ids, x)?,
            Some(_) => {
                ctx.shared(&tables.iter().map(|(id, _)| *id).collect::<Vec<_>>());
                x
            }
        };
        if let Some(p) = &self.project {
            x = p.forward(&x, ctx)?;
        }
        let mut x = self.layer_norm.forward(&x, ctx)?;
        if self.arch.is_deberta() {
            x = x.broadcast_mul(&mask.to_dtype(DType::F32)?.unsqueeze(2)?)?;
        }
        self.dropout.forward(&x, ctx)
    }

    /// The ids and types with the prompt's places first (ids that are not padding, so that
    /// RoBERTa counts them; types 0), and the words' embeddings after the prompt's,
    /// flattened: ((batch, n + seq), (batch, n + seq), (batch·(n + seq), width)).
    fn prompted(
        &self,
        ids: &Tensor,
        types: &Tensor,
        prompt: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, t) = ids.dims2()?;
        let (n, e) = prompt.dims2()?;
        let device = ids.device();
        let place = if self.pad_id == 0 { 1u32 } else { 0 };
        let ids = Tensor::cat(&[&Tensor::full(place, (b, n), device)?, ids], 1)?;
        let types = Tensor::cat(&[&Tensor::zeros((b, n), DType::U32, device)?, types], 1)?;
        let words = self
            .word
            .index_select(&ids.narrow(1, n, t)?.flatten_all()?, 0)?
            .reshape((b, t, e))?;
        let words = Tensor::cat(&[&prompt.unsqueeze(0)?.broadcast_as((b, n, e))?, &words], 1)?;
        Ok((ids, types, words.reshape((b * (n + t), e))?))
    }

    /// BERT and DeBERTa count positions from `past`. RoBERTa counts real tokens from
    /// pad_id + 1 + `past` and gives padding the pad id, as transformers'
    /// `create_position_ids_from_input_ids`.
    fn position_ids(&self, input_ids: &Tensor, past: usize) -> Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        match self.arch {
            Arch::Roberta => {
                let real = input_ids.ne(self.pad_id)?.to_dtype(DType::F32)?;
                let counted = ((real.cumsum(1)? + past as f64)? * &real)?;
                Ok((counted + self.pad_id as f64)?.to_dtype(DType::U32)?)
            }
            _ => Ok(
                Tensor::arange(past as u32, (past + t) as u32, input_ids.device())?
                    .unsqueeze(0)?
                    .broadcast_as((b, t))?
                    .contiguous()?,
            ),
        }
    }
}
