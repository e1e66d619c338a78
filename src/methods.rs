//! Methods decide which parameters train, and under what mask. Nothing else does.
//!
//! A method is a name predicate plus optional per-tensor masks for the one optimizer
//! ([`crate::optim::MaskedAdamW`]). Two rules hold for every method: the task head
//! (`classifier.*`) always trains, and so does any parameter the checkpoint lacks
//! (a freshly initialised head or pooler), since a random frozen layer would be noise.

use std::collections::{BTreeMap, HashSet};

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use crate::model::params::Predicate;
use crate::optim::Mask;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Every parameter.
    Full,
    /// Biases only (Ben Zaken et al., 2022).
    Bitfit,
    /// LayerNorm gains and biases only (ValizadehAslani & Liang, 2024).
    Layernorm,
}

impl Method {
    /// A learning rate that suits the method when neither flag nor config gives one:
    /// full fine-tuning in BERT's range, sparse subsets need far larger steps.
    pub fn default_lr(self) -> f64 {
        match self {
            Method::Full => 2e-5,
            Method::Bitfit | Method::Layernorm => 1e-3,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Method::Full => "full",
            Method::Bitfit => "bitfit",
            Method::Layernorm => "layernorm",
        }
    }

    /// The selection for a checkpoint holding `base_names`.
    pub fn select<'a>(self, base_names: impl IntoIterator<Item = &'a String>) -> Selection {
        let known: HashSet<String> = base_names.into_iter().cloned().collect();
        let chosen: fn(&str) -> bool = match self {
            Method::Full => |_| true,
            Method::Bitfit => is_bias,
            Method::Layernorm => is_layernorm,
        };
        Selection {
            trainable: Box::new(move |n| is_head(n) || !known.contains(n) || chosen(n)),
            masks: BTreeMap::new(),
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which tensors train, and the masks of those that train only in part.
pub struct Selection {
    pub trainable: Predicate,
    pub masks: BTreeMap<String, Mask>,
}

pub fn is_head(name: &str) -> bool {
    name.starts_with("classifier.")
}

pub fn is_layernorm(name: &str) -> bool {
    name.contains("LayerNorm.")
}

pub fn is_bias(name: &str) -> bool {
    name.ends_with(".bias")
}

/// transformers' convention: no weight decay on biases and LayerNorm parameters.
pub fn decays(name: &str) -> bool {
    !(is_bias(name) || is_layernorm(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: &[&str] = &[
        "embeddings.word_embeddings.weight",
        "embeddings.LayerNorm.weight",
        "encoder.layer.0.attention.self.query.bias",
        "encoder.layer.0.output.LayerNorm.bias",
        "pooler.dense.weight",
    ];

    fn trains(m: Method) -> Vec<&'static str> {
        let known: Vec<String> = NAMES.iter().map(|s| s.to_string()).collect();
        let sel = m.select(&known);
        let mut out: Vec<&str> = NAMES
            .iter()
            .copied()
            .filter(|n| (sel.trainable)(n))
            .collect();
        for extra in [
            "classifier.weight",
            "classifier.out_proj.bias",
            "pooler.dense.bias",
        ] {
            if (sel.trainable)(extra) {
                out.push(extra);
            }
        }
        out
    }

    #[test]
    fn selections() {
        assert_eq!(trains(Method::Full).len(), NAMES.len() + 3);
        assert_eq!(
            trains(Method::Bitfit),
            vec![
                "encoder.layer.0.attention.self.query.bias",
                "encoder.layer.0.output.LayerNorm.bias",
                "classifier.weight",
                "classifier.out_proj.bias",
                "pooler.dense.bias"
            ]
        );
        // pooler.dense.bias is not in the checkpoint here: new parameters always train.
        assert_eq!(
            trains(Method::Layernorm),
            vec![
                "embeddings.LayerNorm.weight",
                "encoder.layer.0.output.LayerNorm.bias",
                "classifier.weight",
                "classifier.out_proj.bias",
                "pooler.dense.bias"
            ]
        );
    }

    #[test]
    fn decay_rule() {
        assert!(decays("encoder.layer.0.attention.self.query.weight"));
        assert!(!decays("encoder.layer.0.attention.self.query.bias"));
        assert!(!decays("embeddings.LayerNorm.weight"));
    }
}
