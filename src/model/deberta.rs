//! DeBERTa's fields of config.json (v1 `deberta`, v2 and v3 `deberta-v2`), with the
//! defaults transformers' code gives them, read into what the encoder builds. Options
//! this encoder does not implement are refused by name rather than ignored.

use serde::Deserialize;

use super::activation::Activation;

/// What a DeBERTa encoder and its classification head do beyond BERT's.
#[derive(Debug, Clone, PartialEq)]
pub struct DebertaConfig {
    /// Relative position attention; None when `relative_attention` is false.
    pub relative: Option<RelativeConfig>,
    /// Content-to-position: each query against the relative embedding of its distance to
    /// each key (`"c2p"` in `pos_att_type`).
    pub c2p: bool,
    /// Position-to-content: each key against the relative embedding of the query's
    /// distance to it (`"p2c"`).
    pub p2c: bool,
    /// Scores are divided by sqrt(head_dim · scale_factor): 1 + one per disentangled term
    /// (v1 counts the entries of `pos_att_type`, v2 the terms it names; the same here,
    /// since other entries are refused).
    pub scale_factor: usize,
    /// v2: the relative embeddings go through the layer's own `query_proj`/`key_proj`
    /// (else `pos_query_proj`/`pos_key_proj`). v1 always has its own `pos_q_proj` and
    /// `pos_proj`.
    pub share_att_key: bool,
    /// Absolute position embeddings added to the word embeddings (v3: none).
    pub position_biased_input: bool,
    /// ContextPooler's activation, `pooler_hidden_act`.
    pub pooler_act: Activation,
    /// ContextPooler's dropout on the first token, `pooler_dropout`.
    pub pooler_dropout: f64,
    /// The dropout before the classifier; hidden_dropout_prob when None.
    pub cls_dropout: Option<f64>,
}

/// Where the relative embeddings come from and how distances index them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelativeConfig {
    /// `encoder.rel_embeddings` has 2·span rows; distance d (query − key, bucketed)
    /// reads row clamp(d + span, 0, 2·span − 1). v2: position_buckets if positive, else
    /// max_relative_positions; v1: max_relative_positions (v1's narrower window for
    /// short sequences reads the same rows).
    pub span: usize,
    /// v2's log buckets: (position_buckets, max_relative_positions) as
    /// `make_log_bucket_position` takes them; None for plain distances.
    pub buckets: Option<(i64, i64)>,
    /// v2's `norm_rel_ebd` "layer_norm": `encoder.LayerNorm` over the relative embeddings.
    pub layer_norm: bool,
}

/// What the DeBERTa fields are read against: the family, and the sizes every family's
/// config has.
#[derive(Debug, Clone, Copy)]
pub struct Dims {
    /// `deberta-v2` (else v1, `deberta`).
    pub v2: bool,
    pub hidden_size: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
}

/// config.json as transformers' DebertaConfig and DebertaV2Config read it.
#[derive(Deserialize)]
struct Raw {
    #[serde(default)]
    relative_attention: bool,
    #[serde(default = "unset")]
    max_relative_positions: i64,
    #[serde(default = "unset")]
    position_buckets: i64,
    #[serde(default)]
    share_att_key: bool,
    #[serde(default)]
    pos_att_type: Option<PosAttType>,
    #[serde(default)]
    norm_rel_ebd: Option<String>,
    #[serde(default = "yes")]
    position_biased_input: bool,
    #[serde(default = "gelu")]
    pooler_hidden_act: Activation,
    #[serde(default)]
    pooler_dropout: f64,
    #[serde(default)]
    cls_dropout: Option<f64>,
    #[serde(default)]
    pooler_hidden_size: Option<usize>,
    #[serde(default)]
    conv_kernel_size: Option<i64>,
    #[serde(default)]
    talking_head: Option<bool>,
    #[serde(default)]
    attention_head_size: Option<usize>,
}

/// `pos_att_type`: a list, or the "p2c|c2p" string of older configs.
#[derive(Deserialize)]
#[serde(untagged)]
enum PosAttType {
    List(Vec<String>),
    Joined(String),
}

/// The most relative positions (or buckets) a config may ask for: config.rs's bound on
/// max_position_embeddings.
const MAX_RELATIVE: i64 = 1 << 20;

fn unset() -> i64 {
    -1
}
fn yes() -> bool {
    true
}
fn gelu() -> Activation {
    Activation::Gelu
}

impl DebertaConfig {
    /// `raw`: config.json; `cfg`: what the other fields of it say.
    pub fn parse(raw: serde_json::Value, cfg: Dims) -> Result<Self, String> {
        let r: Raw = serde_json::from_value(raw).map_err(|e| e.to_string())?;
        let v2 = cfg.v2;
        let refuse = |what: String| Err(format!("{what} is not supported"));
        // transformers lower-cases and splits the string form, and keeps a list as it is.
        let kinds: Vec<String> = match r.pos_att_type {
            None => Vec::new(),
            Some(PosAttType::List(v)) => v,
            Some(PosAttType::Joined(s)) => s
                .to_lowercase()
                .split('|')
                .map(|x| x.trim().to_string())
                .collect(),
        };
        if let Some(k) = kinds.iter().find(|k| *k != "c2p" && *k != "p2c") {
            return refuse(format!(
                "pos_att_type \"{k}\" (only the c2p and p2c terms that transformers computes)"
            ));
        }
        let (c2p, p2c) = (
            kinds.iter().any(|k| k == "c2p"),
            kinds.iter().any(|k| k == "p2c"),
        );
        let scale_factor = if v2 {
            1 + c2p as usize + p2c as usize
        } else {
            1 + kinds.len()
        };
        if v2 {
            if let Some(k) = r.conv_kernel_size.filter(|k| *k > 0) {
                return refuse(format!(
                    "conv_kernel_size {k} (the convolution beside the first layer of \
                     deberta-v2-xlarge and -xxlarge)"
                ));
            }
            if let Some(d) = r.attention_head_size.filter(|d| *d != cfg.head_dim) {
                return refuse(format!(
                    "attention_head_size {d} (other than hidden_size / num_attention_heads \
                     = {})",
                    cfg.head_dim
                ));
            }
        } else if r.talking_head == Some(true) {
            return refuse("talking_head (DeBERTa v1's head-mixing projections)".into());
        }
        if let Some(p) = r.pooler_hidden_size.filter(|p| *p != cfg.hidden_size) {
            return refuse(format!(
                "pooler_hidden_size {p} (other than hidden_size {})",
                cfg.hidden_size
            ));
        }
        // v2 lower-cases, splits and strips `norm_rel_ebd`; v1 has no such option.
        let norms: Vec<String> = match (&r.norm_rel_ebd, v2) {
            (Some(s), true) => s
                .to_lowercase()
                .split('|')
                .map(|x| x.trim().into())
                .collect(),
            _ => Vec::new(),
        };
        if let Some(n) = norms.iter().find(|n| *n != "none" && *n != "layer_norm") {
            return refuse(format!("norm_rel_ebd \"{n}\""));
        }
        for (key, p) in [
            ("pooler_dropout", Some(r.pooler_dropout)),
            ("cls_dropout", r.cls_dropout),
        ] {
            if let Some(p) = p.filter(|p| !(0.0..1.0).contains(p)) {
                return Err(format!("{key} = {p} is outside [0, 1)"));
            }
        }
        let relative = match r.relative_attention {
            false => None,
            true => {
                let max_rel = match r.max_relative_positions {
                    m if m < 1 => cfg.max_position_embeddings as i64,
                    m => m,
                };
                // v1 has no buckets: its code never reads position_buckets.
                let buckets = (v2 && r.position_buckets > 0).then_some(r.position_buckets);
                // rel_embeddings holds twice the span in rows: a span past any position
                // table is a typo or a hostile file (and 2·span could overflow).
                for (key, v) in [
                    ("max_relative_positions", max_rel),
                    ("position_buckets", buckets.unwrap_or(0)),
                ] {
                    if v > MAX_RELATIVE {
                        return Err(format!("{key} = {v} is above {MAX_RELATIVE}"));
                    }
                }
                if let Some(b) = buckets {
                    // The log formula divides by mid − 1's neighbours and log((max − 1) / mid).
                    if b < 2 || max_rel - 1 <= b / 2 {
                        return refuse(format!(
                            "position_buckets {b} with max_relative_positions {max_rel} \
                             (the log buckets need at least 2 buckets and more positions \
                             than half of them)"
                        ));
                    }
                }
                Some(RelativeConfig {
                    span: buckets.unwrap_or(max_rel) as usize,
                    buckets: buckets.map(|b| (b, max_rel)),
                    layer_norm: norms.iter().any(|n| n == "layer_norm"),
                })
            }
        };
        Ok(Self {
            relative,
            c2p,
            p2c,
            scale_factor,
            share_att_key: v2 && r.share_att_key,
            position_biased_input: r.position_biased_input,
            pooler_act: r.pooler_hidden_act,
            pooler_dropout: r.pooler_dropout,
            cls_dropout: r.cls_dropout,
        })
    }
}
