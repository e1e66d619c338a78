//! `config.json` of a Hugging Face BERT, RoBERTa, ELECTRA, DeBERTa or XLNet checkpoint.

use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

pub use super::activation::Activation;
use super::deberta::{DebertaConfig, Dims};
pub use super::family::Arch;
use super::family::{Family, FAMILIES};
use super::xlnet::XlnetConfig;
use crate::error::{user, PathContext};

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
    /// DeBERTa's own fields (relative attention, pooler), for the two DeBERTa families.
    #[serde(skip)]
    pub deberta: Option<DebertaConfig>,
    /// XLNet's own config.json (its keys are not BERT's), for the XLNet family.
    #[serde(skip)]
    pub xlnet: Option<XlnetConfig>,
}

/// Bounds on config.json's sizes, far above every released BERT-family encoder (the
/// widest, deberta-v2-xxlarge, is 1,536 wide with 48 layers; the largest vocabularies,
/// XLM-R's and mDeBERTa's, about 250,000 tokens): past them a value is a typo or a hostile
/// file, and the tables it sizes would not fit in memory anyway.
const MAX_VOCAB: usize = 1 << 22;
const MAX_WIDTH: usize = 1 << 16;
const MAX_LAYERS: usize = 1 << 10;
const MAX_POSITIONS: usize = 1 << 20;
const MAX_TYPES: usize = 1 << 10;
/// XLNet's sequences in pretraining (its relative positions have no table to run past).
const XLNET_MAX_TOKENS: usize = 512;

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
        let mut raw: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let expected = || {
            let quoted: Vec<String> = FAMILIES
                .iter()
                .map(|f| format!("\"{}\"", f.model_type))
                .collect();
            format!("expected one of {}", quoted.join(", "))
        };
        let deberta = match raw.get("model_type").and_then(|v| v.as_str()) {
            Some(t) if Family::of_model_type(t).is_some() => t.starts_with("deberta"),
            Some(other) => {
                return Err(format!(
                    "model_type \"{other}\" is not supported ({})",
                    expected()
                ))
            }
            None => return Err(format!("no model_type ({})", expected())),
        };
        if raw.get("model_type").and_then(|v| v.as_str()) == Some("xlnet") {
            return Self::xlnet(text);
        }
        if deberta {
            // DebertaConfig's defaults differ from BertConfig's for these two.
            if let Some(obj) = raw.as_object_mut() {
                obj.entry("type_vocab_size").or_insert(0.into());
                obj.entry("layer_norm_eps").or_insert(1e-7.into());
            }
        }
        let mut cfg: ModelConfig =
            serde_json::from_value(raw.clone()).map_err(|e| e.to_string())?;
        cfg.validate()?;
        if deberta {
            let dims = Dims {
                v2: cfg.model_type == Arch::DebertaV2,
                hidden_size: cfg.hidden_size,
                head_dim: cfg.head_dim(),
                max_position_embeddings: cfg.max_position_embeddings,
            };
            cfg.deberta = Some(DebertaConfig::parse(raw, dims)?);
        }
        Ok(cfg)
    }

    /// XLNet's config.json in BERT's terms (the encoder reads [`XlnetConfig`] itself):
    /// what the tokenizer, the methods and the messages read.
    fn xlnet(text: &str) -> Result<Self, String> {
        let x = XlnetConfig::parse(text).map_err(|e| e.to_string())?;
        if x.n_head * x.d_head != x.d_model {
            return Err(format!(
                "n_head {} times d_head {} is not d_model {} (transformers' XLNetConfig \
                 requires it)",
                x.n_head, x.d_head, x.d_model
            ));
        }
        let cfg = ModelConfig {
            model_type: Arch::Xlnet,
            vocab_size: x.vocab_size,
            hidden_size: x.d_model,
            num_hidden_layers: x.n_layer,
            num_attention_heads: x.n_head,
            intermediate_size: x.d_inner,
            hidden_act: x.ff_activation,
            max_position_embeddings: XLNET_MAX_TOKENS,
            embedding_size: None,
            // Types are compared, never looked up: 0 and 1 for a pair's texts, 2 for <cls>.
            type_vocab_size: 3,
            layer_norm_eps: x.layer_norm_eps,
            pad_token_id: x.pad_token_id,
            hidden_dropout_prob: x.dropout,
            attention_probs_dropout_prob: x.dropout,
            classifier_dropout: Some(x.summary_last_dropout),
            deberta: None,
            xlnet: Some(x),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// XLNet's settings; an error for the other families (a caller's bug).
    pub fn xlnet_config(&self) -> anyhow::Result<&XlnetConfig> {
        self.xlnet
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("{:?} has no XLNet settings", self.model_type))
    }

    /// Values that would build a broken encoder are refused here, naming the key, rather
    /// than failing far from config.json: a size of 0 builds empty tables (or divides by
    /// zero), an absurd one allocates by it; a LayerNorm eps of 0 divides a constant
    /// row's zero by zero (null embeddings, then a loss that only looks like a bad --lr);
    /// a dropout of 1 or more is no probability (torch's `nn.Dropout` refuses it too).
    fn validate(&self) -> Result<(), String> {
        for (key, value, max) in [
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("hidden_size", self.hidden_size, MAX_WIDTH),
            ("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS),
            ("num_attention_heads", self.num_attention_heads, MAX_WIDTH),
            ("intermediate_size", self.intermediate_size, 4 * MAX_WIDTH),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                MAX_POSITIONS,
            ),
            (
                "embedding_size",
                self.embedding_size.unwrap_or(1),
                MAX_WIDTH,
            ),
        ] {
            if value == 0 || value > max {
                return Err(format!("{key} = {value} is outside 1 to {max}"));
            }
        }
        // 0 is allowed: no token-type table (DeBERTa's default).
        if self.type_vocab_size > MAX_TYPES {
            return Err(format!(
                "type_vocab_size = {} is above {MAX_TYPES} (token types tell a pair's two \
                 texts apart)",
                self.type_vocab_size
            ));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        // Padding reads the word embeddings' row pad_token_id.
        if self.pad_token_id as usize >= self.vocab_size {
            return Err(format!(
                "pad_token_id = {} is past the word embeddings: vocab_size is {}",
                self.pad_token_id, self.vocab_size
            ));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(format!(
                "layer_norm_eps = {} must be a positive number (LayerNorm divides by \
                 sqrt(variance + eps); transformers' configs use 1e-12 or 1e-7)",
                self.layer_norm_eps
            ));
        }
        for (key, p) in [
            ("hidden_dropout_prob", Some(self.hidden_dropout_prob)),
            (
                "attention_probs_dropout_prob",
                Some(self.attention_probs_dropout_prob),
            ),
            ("classifier_dropout", self.classifier_dropout),
        ] {
            if let Some(p) = p.filter(|p| !(0.0..1.0).contains(p)) {
                return Err(format!("{key} = {p} is outside [0, 1)"));
            }
        }
        Ok(())
    }

    /// The most tokens a sequence may have: the rows of the position table it can use.
    /// BERT numbers positions from 0; RoBERTa from pad_token_id + 1 (transformers'
    /// `create_position_ids_from_input_ids`), so roberta-base's 514 rows hold 512 tokens.
    /// DeBERTa's relative positions have no such table, but its tokenizers stop at
    /// max_position_embeddings (512) all the same.
    pub fn max_tokens(&self) -> usize {
        match self.model_type {
            Arch::Bert | Arch::Electra | Arch::Deberta | Arch::DebertaV2 | Arch::Xlnet => {
                self.max_position_embeddings
            }
            Arch::Roberta => self
                .max_position_embeddings
                .saturating_sub(self.pad_token_id as usize + 1),
        }
    }

    /// `max_tokens` and where it comes from, for messages.
    pub fn describe_max_tokens(&self) -> String {
        match self.model_type {
            Arch::Bert | Arch::Electra | Arch::Deberta | Arch::DebertaV2 => {
                format!("max_position_embeddings {}", self.max_position_embeddings)
            }
            Arch::Xlnet => format!(
                "XLNet's relative positions have no table, but it was pretrained on \
                 {XLNET_MAX_TOKENS}-token sequences"
            ),
            Arch::Roberta => format!(
                "max_position_embeddings {} less pad_token_id {} + 1: RoBERTa's positions \
                 start after the padding index",
                self.max_position_embeddings, self.pad_token_id
            ),
        }
    }

    /// The embeddings' width (ELECTRA's and DeBERTa's embedding_size, else hidden_size).
    pub fn embedding_width(&self) -> usize {
        self.embedding_size.unwrap_or(self.hidden_size)
    }

    /// Whether the encoder built from this config never reads the tensor `name`
    /// (canonical): DeBERTa's absolute positions without `position_biased_input`, token
    /// types when `type_vocab_size` is 0. transformers skips the first on loading.
    pub fn leaves_out(&self, name: &str) -> bool {
        match name {
            "embeddings.position_embeddings.weight" => self
                .deberta
                .as_ref()
                .is_some_and(|d| !d.position_biased_input),
            "embeddings.token_type_embeddings.weight" => self.type_vocab_size == 0,
            // The query stream's stand-in for a masked token: fine-tuning never reads it.
            "mask_emb" => self.model_type == Arch::Xlnet,
            _ => false,
        }
    }

    /// DeBERTa's settings; an error for the other families (a caller's bug).
    pub fn deberta(&self) -> anyhow::Result<&DebertaConfig> {
        self.deberta
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("{:?} has no DeBERTa settings", self.model_type))
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// The dropout before the classifier: `classifier_dropout`, DeBERTa's `cls_dropout`,
    /// else hidden_dropout_prob.
    pub fn classifier_dropout(&self) -> f64 {
        let own = match &self.deberta {
            Some(d) => d.cls_dropout,
            None => self.classifier_dropout,
        };
        own.unwrap_or(self.hidden_dropout_prob)
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
    fn task_model_names_and_adapter_modules_per_family() {
        assert_eq!(
            Arch::Bert.task_model_name("pooler.dense.weight"),
            "bert.pooler.dense.weight"
        );
        // DeBERTa's ContextPooler sits beside the encoder, as the head does.
        assert_eq!(
            Arch::DebertaV2.task_model_name("pooler.dense.weight"),
            "pooler.dense.weight"
        );
        assert_eq!(
            Arch::Deberta.task_model_name("encoder.rel_embeddings.weight"),
            "deberta.encoder.rel_embeddings.weight"
        );
        assert_eq!(
            Arch::Roberta.task_model_name("qa_outputs.bias"),
            "qa_outputs.bias"
        );
        let module = |a: Arch, t: &str| a.adapter_module(t);
        assert_eq!(module(Arch::Bert, "query").unwrap(), "attention.self.query");
        assert_eq!(
            module(Arch::DebertaV2, "value").unwrap(),
            "attention.self.value_proj"
        );
        assert_eq!(
            module(Arch::DebertaV2, "output.dense").unwrap(),
            "output.dense"
        );
        assert_eq!(
            module(Arch::Deberta, "intermediate.dense").unwrap(),
            "intermediate.dense"
        );
        let err = module(Arch::Deberta, "key").unwrap_err();
        assert!(err.contains("`key`") && err.contains("in_proj"), "{err}");
    }

    #[test]
    fn rejects_unknown_model_type() {
        let err = ModelConfig::parse(&BERT.replace("\"bert\"", "\"gpt2\"")).unwrap_err();
        assert!(
            err.contains("gpt2") && err.contains("\"deberta-v2\""),
            "{err}"
        );
    }

    #[test]
    fn rejects_heads_that_do_not_divide_hidden() {
        let err = ModelConfig::parse(
            &BERT.replace("\"num_attention_heads\":2", "\"num_attention_heads\":3"),
        )
        .unwrap_err();
        assert!(err.contains("num_attention_heads"), "{err}");
    }

    #[test]
    fn refuses_sizes_eps_and_dropouts_that_build_a_broken_encoder() {
        let with =
            |extra: &str| ModelConfig::parse(&BERT.replacen('{', &format!("{{{extra}, "), 1));
        for (extra, key) in [
            (r#""layer_norm_eps": 0"#, "layer_norm_eps"),
            (r#""layer_norm_eps": -1e-12"#, "layer_norm_eps"),
            (r#""classifier_dropout": 5.0"#, "classifier_dropout"),
            (r#""hidden_dropout_prob": 1.0"#, "hidden_dropout_prob"),
            (
                r#""attention_probs_dropout_prob": -0.1"#,
                "attention_probs_dropout_prob",
            ),
            (r#""type_vocab_size": 100000"#, "type_vocab_size"),
            (r#""embedding_size": 0"#, "embedding_size"),
            (r#""pad_token_id": 10"#, "pad_token_id"),
        ] {
            let err = with(extra).unwrap_err();
            assert!(err.contains(key), "{extra}: {err}");
        }
        // Keys BERT sets are replaced (of two equal keys, serde_json keeps the last).
        for (key, bad) in [
            ("vocab_size", "0"),
            ("hidden_size", "0"),
            ("hidden_size", "1000000"),
            ("num_hidden_layers", "0"),
            ("num_attention_heads", "0"),
            ("intermediate_size", "0"),
            ("max_position_embeddings", "0"),
            ("max_position_embeddings", "18446744073709551615"),
        ] {
            let text = set(BERT, key, bad);
            let err = ModelConfig::parse(&text).unwrap_err();
            assert!(
                err.contains(&format!("{key} = {bad}")),
                "{key} {bad}: {err}"
            );
        }
        assert!(with(r#""classifier_dropout": 0.0"#).is_ok());
    }

    /// `BERT` with `key`'s number replaced by `value`.
    fn set(text: &str, key: &str, value: &str) -> String {
        let at = text.find(&format!("\"{key}\":")).unwrap() + key.len() + 3;
        let end = at + text[at..].find([',', '}']).unwrap();
        format!("{}{value}{}", &text[..at], &text[end..])
    }
}

#[cfg(test)]
mod deberta_tests {
    //! DeBERTa's fields, read through ModelConfig as a checkpoint's are.

    use super::*;
    use crate::model::deberta::RelativeConfig;

    /// deberta-v3-base's config.json, as the hub ships it.
    const V3_BASE: &str = r#"{"model_type": "deberta-v2", "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": 768,
        "initializer_range": 0.02, "intermediate_size": 3072, "max_position_embeddings": 512,
        "relative_attention": true, "position_buckets": 256, "norm_rel_ebd": "layer_norm",
        "share_att_key": true, "pos_att_type": "p2c|c2p", "layer_norm_eps": 1e-7,
        "max_relative_positions": -1, "position_biased_input": false,
        "num_attention_heads": 12, "num_hidden_layers": 12, "type_vocab_size": 0,
        "vocab_size": 128100}"#;

    /// deberta-base's (v1).
    const V1_BASE: &str = r#"{"model_type": "deberta", "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": 768,
        "initializer_range": 0.02, "intermediate_size": 3072, "max_position_embeddings": 512,
        "relative_attention": true, "pos_att_type": "c2p|p2c", "layer_norm_eps": 1e-7,
        "max_relative_positions": -1, "position_biased_input": false,
        "num_attention_heads": 12, "num_hidden_layers": 12, "type_vocab_size": 0,
        "vocab_size": 50265}"#;

    fn parse(text: &str) -> Result<ModelConfig, String> {
        ModelConfig::parse(text)
    }

    #[test]
    fn reads_deberta_v3_base() {
        let cfg = parse(V3_BASE).unwrap();
        assert_eq!(cfg.model_type, Arch::DebertaV2);
        let d = cfg.deberta().unwrap();
        assert_eq!(
            d.relative,
            Some(RelativeConfig {
                span: 256,
                buckets: Some((256, 512)),
                layer_norm: true
            })
        );
        assert!(d.c2p && d.p2c && d.share_att_key && !d.position_biased_input);
        assert_eq!(d.scale_factor, 3);
        assert_eq!(d.pooler_act, Activation::Gelu);
        assert_eq!(cfg.type_vocab_size, 0);
        assert_eq!(cfg.classifier_dropout(), 0.1);
    }

    #[test]
    fn reads_deberta_v1_base_without_buckets() {
        let cfg = parse(V1_BASE).unwrap();
        let d = cfg.deberta().unwrap();
        assert_eq!(
            d.relative,
            Some(RelativeConfig {
                span: 512,
                buckets: None,
                layer_norm: false
            })
        );
        assert!(d.c2p && d.p2c && !d.share_att_key);
        // Defaults: DebertaConfig's, not BertConfig's.
        let bare = parse(
            r#"{"model_type": "deberta", "vocab_size": 10, "hidden_size": 8,
            "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16,
            "max_position_embeddings": 20}"#,
        )
        .unwrap();
        assert_eq!(bare.type_vocab_size, 0);
        assert_eq!(bare.layer_norm_eps, 1e-7);
        let d = bare.deberta().unwrap();
        assert_eq!(d.relative, None);
        assert_eq!(d.scale_factor, 1);
        assert!(d.position_biased_input);
    }

    #[test]
    fn refuses_what_is_not_implemented_by_name() {
        let with = |base: &str, extra: &str| {
            let text = base.replacen('{', &format!("{{{extra}, "), 1);
            parse(&text).unwrap_err()
        };
        for (base, extra, name) in [
            (V3_BASE, r#""conv_kernel_size": 3"#, "conv_kernel_size 3"),
            (
                V3_BASE,
                r#""attention_head_size": 32"#,
                "attention_head_size 32",
            ),
            (
                V3_BASE,
                r#""pooler_hidden_size": 1024"#,
                "pooler_hidden_size 1024",
            ),
            (V1_BASE, r#""talking_head": true"#, "talking_head"),
            (V3_BASE, r#""pooler_dropout": 1.5"#, "pooler_dropout"),
        ] {
            let err = with(base, extra);
            assert!(err.contains(name), "{extra}: {err}");
        }
        let err = parse(&V1_BASE.replace("c2p|p2c", "c2p|p2p")).unwrap_err();
        assert!(err.contains("pos_att_type \"p2p\""), "{err}");
        let err = parse(&V3_BASE.replace("\"layer_norm\"", "\"rms\"")).unwrap_err();
        assert!(err.contains("norm_rel_ebd \"rms\""), "{err}");
        let err = parse(&V3_BASE.replace("256", "1")).unwrap_err();
        assert!(err.contains("position_buckets 1"), "{err}");
        // Through the shared fields too: DeBERTa's eps default (1e-7) is replaced, not kept.
        let err = parse(&V3_BASE.replace("\"layer_norm_eps\": 1e-7", "\"layer_norm_eps\": 0"))
            .unwrap_err();
        assert!(err.contains("layer_norm_eps = 0"), "{err}");
        let err = parse(&V1_BASE.replace(
            "\"max_relative_positions\": -1",
            "\"max_relative_positions\": 9223372036854775807",
        ))
        .unwrap_err();
        assert!(
            err.contains("max_relative_positions = 9223372036854775807"),
            "{err}"
        );
        // A convolution of size 0 is none: transformers builds none either.
        assert!(parse(&V3_BASE.replacen('{', r#"{"conv_kernel_size": 0, "#, 1)).is_ok());
    }

    #[test]
    fn pos_att_type_as_a_list_and_one_term() {
        let cfg = parse(&V3_BASE.replace(r#""p2c|c2p""#, r#"["c2p"]"#)).unwrap();
        let d = cfg.deberta().unwrap();
        assert!(d.c2p && !d.p2c);
        assert_eq!(d.scale_factor, 2);
        let cfg = parse(&V3_BASE.replace(r#""p2c|c2p""#, "null")).unwrap();
        assert_eq!(cfg.deberta().unwrap().scale_factor, 1);
    }
}
