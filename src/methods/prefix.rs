//! Prefix tuning (Li & Liang, 2021) and P-tuning v2 (Liu et al., 2022), as PEFT's
//! PrefixTuningConfig: --num-virtual-tokens learned keys and values before every layer's
//! own (model/prefix.rs), optionally computed through a two-layer projection
//! (--prefix-projection HIDDEN, Li & Liang's reparameterisation), the encoder frozen, the
//! head trained. It shares prompt tuning's --num-virtual-tokens; its text start does not
//! apply (a prefix is keys and values, not word embeddings).

use anyhow::Result;

use super::{Method, MethodDef, Scope, Traits};
use crate::error::user;
use crate::model::{AdapterConfig, AdapterKind};

pub struct Prefix;

pub const METHOD: Method = Method(&Prefix);

crate::method_settings! {
    context(m, f);
    used_by = m.has(METHOD);
    /// prefix: compute the prefix through width → HIDDEN → tanh → every layer's keys and
    /// values (PEFT's prefix_projection with encoder_hidden_size) [default: none, the
    /// prefix itself is trained].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prefix_projection => hidden: usize = optional();
}

impl Settings {
    pub fn check(&self) -> Result<()> {
        if self.hidden.is_some_and(|h| h == 0 || h > 65536) {
            return Err(user(format!(
                "prefix_projection: {} is outside 1 to 65536",
                self.hidden.unwrap_or(0)
            )));
        }
        Ok(())
    }

    /// The prefix these settings add, of `tokens` virtual tokens (prompt tuning's shared
    /// --num-virtual-tokens).
    pub fn adapter(&self, tokens: usize) -> AdapterConfig {
        AdapterConfig {
            kind: AdapterKind::Prefix {
                tokens,
                hidden: self.hidden,
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

/// What prefix tuning takes of prompt tuning's settings: the tokens, not the text start
/// (`init_text`, prompt tuning's --prompt-init-text).
pub fn check_shared(init_text: Option<&str>) -> Result<()> {
    match init_text {
        Some(_) => Err(user(
            "--prompt-init-text applies to --method prompt, not prefix: a prefix is keys and \
             values of every layer, not word embeddings",
        )),
        None => Ok(()),
    }
}

impl MethodDef for Prefix {
    fn name(&self) -> &'static str {
        "prefix"
    }
    fn help(&self) -> &'static str {
        "prefix tuning / P-tuning v2 (Li & Liang, 2021; Liu et al., 2022): --num-virtual-tokens learned keys and values before every layer's, as PEFT's PrefixTuningConfig"
    }
    /// P-tuning v2's GLUE rates for BERT and RoBERTa are 5e-3 to 1e-2; PEFT's examples
    /// use 1e-2.
    fn default_lr(&self) -> f64 {
        1e-2
    }
    fn traits(&self) -> Traits {
        Traits::ADAPTER
    }
    /// The prefix's tensors, when they are among the checkpoint's.
    fn chooses(&self, name: &str, _scope: &Scope) -> bool {
        name.starts_with("prompt_encoder.")
    }
}
