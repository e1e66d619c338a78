//! Prompt tuning (Lester et al., 2021), as PEFT's PromptTuningConfig: --num-virtual-tokens
//! learned embeddings put before every sequence (model/embeddings.rs), the encoder frozen,
//! the head trained. The start is PEFT's RANDOM one (N(0, 1)), or its TEXT one: the word
//! embeddings of --prompt-init-text's tokens (special tokens included, as PEFT's tokenizer
//! call gives them), repeated or cut to the prompt's length.

use anyhow::Result;
use candle_core::Tensor;

use super::{Method, MethodDef, Scope, Traits};
use crate::error::user;
use crate::model::{AdapterConfig, AdapterKind, PROMPT};

pub struct Prompt;

pub const METHOD: Method = Method(&Prompt);

crate::method_settings! {
    context(m, f);
    used_by = m.has(METHOD) || m.has(super::prefix::METHOD);
    /// prompt, prefix: virtual tokens before every sequence, or before every layer's keys
    /// (PEFT's num_virtual_tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    num_virtual_tokens => tokens: usize = default(20);
    /// prompt: start from this text's word embeddings (PEFT's TEXT prompt_tuning_init)
    /// [default: none, PEFT's RANDOM start].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prompt_init_text => init_text: String = optional();
}

impl Settings {
    pub fn check(&self) -> Result<()> {
        if self.tokens == 0 || self.tokens > 4096 {
            return Err(user(format!(
                "num_virtual_tokens: {} is outside 1 to 4096",
                self.tokens
            )));
        }
        if self.init_text.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return Err(user("prompt_init_text: empty"));
        }
        Ok(())
    }

    /// The prompt these settings add.
    pub fn adapter(&self) -> AdapterConfig {
        AdapterConfig {
            kind: AdapterKind::Prompt {
                tokens: self.tokens,
            },
            r: 0,
            alpha: 0.0,
            dropout: 0.0,
            targets: Vec::new(),
            rslora: false,
            init: None,
        }
    }
}

/// PEFT's TEXT start: the rows of `word` (vocabulary × width) for `ids` (the init text's
/// tokens), repeated and cut to `n`.
pub fn text_start(ids: &[u32], n: usize, word: &Tensor) -> Result<Tensor> {
    if ids.is_empty() {
        return Err(user("prompt_init_text: the text has no tokens"));
    }
    let rows: Vec<u32> = ids.iter().copied().cycle().take(n).collect();
    let rows = Tensor::from_vec(rows, n, word.device())?;
    Ok(word.index_select(&rows, 0)?)
}

impl MethodDef for Prompt {
    fn name(&self) -> &'static str {
        "prompt"
    }
    fn help(&self) -> &'static str {
        "prompt tuning (Lester et al., 2021): --num-virtual-tokens learned embeddings before every sequence, as PEFT's PromptTuningConfig"
    }
    /// Prompt tuning's usual rates are large (Lester et al.: 0.3 with Adafactor); PEFT's
    /// examples with AdamW use 3e-2 to 3e-3.
    fn default_lr(&self) -> f64 {
        3e-2
    }
    fn traits(&self) -> Traits {
        Traits::ADAPTER
    }
    /// The prompt, when a text start put it among the checkpoint's tensors.
    fn chooses(&self, name: &str, _scope: &Scope) -> bool {
        name == PROMPT
    }
}
