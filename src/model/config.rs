//! `config.json` of a Hugging Face BERT or RoBERTa checkpoint.

use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::error::{user, PathContext};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Bert,
    Roberta,
    /// ELECTRA's discriminator: BERT's encoder, embeddings that may be narrower than it
    /// (with a projection between), and a RoBERTa-like head with GELU.
    Electra,
}

impl Arch {
    /// The prefix transformers puts before encoder weights in task models.
    pub fn prefix(self) -> &'static str {
        match self {
            Arch::Bert => "bert",
            Arch::Roberta => "roberta",
            Arch::Electra => "electra",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// Exact GELU with erf, transformers' "gelu".
    #[serde(rename = "gelu")]
    Gelu,
    /// The tanh approximation: "gelu_new", "gelu_pytorch_tanh", "gelu_fast".
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluTanh,
    #[serde(rename = "relu")]
    Relu,
}

/// The fields of config.json the encoder needs; others are ignored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelConfig {
    pub model_type: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: Activation,
    pub max_position_embeddings: usize,
    /// ELECTRA: the width of the embeddings, projected to hidden_size when it differs.
    #[serde(default)]
    pub embedding_size: Option<usize>,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: u32,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    /// transformers uses hidden_dropout_prob when this is null.
    #[serde(default)]
    pub classifier_dropout: Option<f64>,
}

fn default_act() -> Activation {
    Activation::Gelu
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_dropout() -> f64 {
    0.1
}

impl ModelConfig {
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text =
            std::fs::read_to_string(&path).path_context("cannot read model config", &path)?;
        Self::parse(&text).map_err(|e| user(format!("{}: {e}", path.display())))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let raw: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        match raw.get("model_type").and_then(|v| v.as_str()) {
            Some("bert") | Some("roberta") | Some("electra") => {}
            Some(other) => {
                return Err(format!(
                    "model_type \"{other}\" is not supported (expected \"bert\", \"roberta\" \
                     or \"electra\")"
                ))
            }
            None => {
                return Err("no model_type (expected \"bert\", \"roberta\" or \"electra\")".into())
            }
        }
        let cfg: ModelConfig = serde_json::from_value(raw).map_err(|e| e.to_string())?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), String> {
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        for (key, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(format!("{key} = {p} is outside [0, 1)"));
            }
        }
        Ok(())
    }

    /// The most tokens a sequence may have: the rows of the position table it can use.
    /// BERT numbers positions from 0; RoBERTa from pad_token_id + 1 (transformers'
    /// `create_position_ids_from_input_ids`), so roberta-base's 514 rows hold 512 tokens.
    pub fn max_tokens(&self) -> usize {
        match self.model_type {
            Arch::Bert | Arch::Electra => self.max_position_embeddings,
            Arch::Roberta => self
                .max_position_embeddings
                .saturating_sub(self.pad_token_id as usize + 1),
        }
    }

    /// `max_tokens` and where it comes from, for messages.
    pub fn describe_max_tokens(&self) -> String {
        match self.model_type {
            Arch::Bert | Arch::Electra => {
                format!("max_position_embeddings {}", self.max_position_embeddings)
            }
            Arch::Roberta => format!(
                "max_position_embeddings {} less pad_token_id {} + 1: RoBERTa's positions \
                 start after the padding index",
                self.max_position_embeddings, self.pad_token_id
            ),
        }
    }

    /// The embeddings' width (ELECTRA's embedding_size, else hidden_size).
    pub fn embedding_width(&self) -> usize {
        self.embedding_size.unwrap_or(self.hidden_size)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    pub fn classifier_dropout(&self) -> f64 {
        self.classifier_dropout.unwrap_or(self.hidden_dropout_prob)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BERT: &str = r#"{"model_type":"bert","vocab_size":10,"hidden_size":8,
        "num_hidden_layers":1,"num_attention_heads":2,"intermediate_size":16,
        "max_position_embeddings":20,"hidden_act":"gelu_new"}"#;

    #[test]
    fn parses_bert_with_defaults() {
        let cfg = ModelConfig::parse(BERT).unwrap();
        assert_eq!(cfg.model_type, Arch::Bert);
        assert_eq!(cfg.hidden_act, Activation::GeluTanh);
        assert_eq!(cfg.type_vocab_size, 2);
        assert_eq!(cfg.head_dim(), 4);
        assert_eq!(cfg.classifier_dropout(), 0.1);
    }

    #[test]
    fn usable_positions_of_bert_and_roberta() {
        let bert = ModelConfig::parse(BERT).unwrap();
        assert_eq!(bert.max_tokens(), 20);
        let roberta = ModelConfig::parse(&BERT.replace("\"bert\"", "\"roberta\"").replace(
            "\"max_position_embeddings\":20",
            "\"max_position_embeddings\":514,\"pad_token_id\":1",
        ))
        .unwrap();
        assert_eq!(roberta.max_tokens(), 512);
        assert!(roberta.describe_max_tokens().contains("514"));
    }

    #[test]
    fn rejects_unknown_model_type() {
        let err = ModelConfig::parse(&BERT.replace("\"bert\"", "\"gpt2\"")).unwrap_err();
        assert!(err.contains("gpt2"), "{err}");
    }

    #[test]
    fn rejects_heads_that_do_not_divide_hidden() {
        let err = ModelConfig::parse(
            &BERT.replace("\"num_attention_heads\":2", "\"num_attention_heads\":3"),
        )
        .unwrap_err();
        assert!(err.contains("num_attention_heads"), "{err}");
    }
}
