//! Word + position + token-type embeddings → LayerNorm → dropout (ELECTRA's may be
//! narrower than the encoder; the model projects them).

use anyhow::Result;
use candle_core::{DType, Tensor};

use super::config::{Arch, ModelConfig};
use super::nn::{Ctx, Dropout, LayerNorm};
use super::params::Path;

pub struct Embeddings {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    layer_norm: LayerNorm,
    dropout: Dropout,
    arch: Arch,
    pad_id: u32,
}

impl Embeddings {
    pub fn load(path: &Path, cfg: &ModelConfig) -> Result<Self> {
        let h = cfg.embedding_width();
        Ok(Self {
            word: path.get("word_embeddings.weight", &[cfg.vocab_size, h])?,
            position: path.get(
                "position_embeddings.weight",
                &[cfg.max_position_embeddings, h],
            )?,
            token_type: path.get("token_type_embeddings.weight", &[cfg.type_vocab_size, h])?,
            layer_norm: LayerNorm::load(&path.pp("LayerNorm"), h, cfg.layer_norm_eps)?,
            dropout: Dropout::new(cfg.hidden_dropout_prob),
            arch: cfg.model_type,
            pad_id: cfg.pad_token_id,
        })
    }

    /// `input_ids`, `token_type_ids`: (batch, seq) u32.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        ctx: &Ctx,
    ) -> Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        let h = self.word.dim(1)?;
        let max_pos = self.position.dim(0)?;
        let positions = self.position_ids(input_ids)?;
        let last = match self.arch {
            Arch::Bert | Arch::Electra => t,
            Arch::Roberta => t + self.pad_id as usize + 1,
        };
        if last > max_pos {
            anyhow::bail!("sequence of {t} tokens exceeds max_position_embeddings {max_pos}; lower --max-seq-len");
        }
        let words = self.word.index_select(&input_ids.flatten_all()?, 0)?;
        let types = self
            .token_type
            .index_select(&token_type_ids.flatten_all()?, 0)?;
        let pos = self.position.index_select(&positions.flatten_all()?, 0)?;
        let x = ((words + types)? + pos)?.reshape((b, t, h))?;
        let x = self.layer_norm.forward(&x)?;
        self.dropout.forward(&x, ctx)
    }

    /// BERT counts positions from 0. RoBERTa counts real tokens from pad_id + 1 and gives
    /// padding the pad id, as transformers' `create_position_ids_from_input_ids`.
    fn position_ids(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        match self.arch {
            Arch::Bert | Arch::Electra => Ok(Tensor::arange(0u32, t as u32, input_ids.device())?
                .unsqueeze(0)?
                .broadcast_as((b, t))?
                .contiguous()?),
            Arch::Roberta => {
                let real = input_ids.ne(self.pad_id)?.to_dtype(DType::F32)?;
                let counted = (real.cumsum(1)? * &real)?;
                Ok((counted + self.pad_id as f64)?.to_dtype(DType::U32)?)
            }
        }
    }
}
