//! Grouping parameters into the components the LayerNorm paper compares: embeddings,
//! query/key/value, attention output, the two LayerNorms of each layer, the FFN, the
//! pooler and the head. Used to rank Fisher information (`peft fisher`) and weight
//! change (`peft diff`).

use std::collections::BTreeMap;

/// A parameter's component, and its layer if it belongs to one.
pub fn component(name: &str) -> (&'static str, Option<usize>) {
    let layer = name
        .strip_prefix("encoder.layer.")
        .or_else(|| name.strip_prefix("layer."))
        .and_then(|rest| rest.split('.').next())
        .and_then(|n| n.parse::<usize>().ok());
    if let Some(kind) = xlnet(name) {
        return (kind, layer);
    }
    let kind = if name.starts_with("embeddings.word_embeddings") {
        "word embeddings"
    } else if name.starts_with("embeddings.position_embeddings") {
        "position embeddings"
    } else if name.starts_with("embeddings.token_type_embeddings") {
        "token type embeddings"
    } else if name.starts_with("embeddings.LayerNorm") {
        "embeddings LayerNorm"
    } else if name.starts_with("embeddings.embed_proj") {
        "embeddings projection"
    } else if name.starts_with("encoder.rel_embeddings") {
        "relative embeddings"
    } else if name.starts_with("encoder.LayerNorm") {
        "relative embeddings LayerNorm"
    } else if in_attention(name, &["query", "query_proj", "q_bias"]) {
        "query"
    } else if in_attention(name, &["key", "key_proj"]) {
        "key"
    } else if in_attention(name, &["value", "value_proj", "v_bias"]) {
        "value"
    } else if in_attention(name, &["in_proj"]) {
        "query, key and value"
    } else if in_attention(
        name,
        &["pos_key_proj", "pos_query_proj", "pos_proj", "pos_q_proj"],
    ) {
        "position projections"
    } else if name.contains(".attention.output.dense.") {
        "attention output dense"
    } else if name.contains(".attention.output.LayerNorm.") {
        "attention output LayerNorm"
    } else if name.contains(".intermediate.dense.") {
        "intermediate dense"
    } else if name.contains(".output.dense.") {
        "output dense"
    } else if name.contains(".output.LayerNorm.") {
        "output LayerNorm"
    } else if name.starts_with("pooler.") {
        "pooler"
    } else if crate::model::family::is_head(name) {
        "head"
    } else {
        "other"
    };
    (kind, layer)
}

/// XLNet's names in the same components: its q, k, v and o projections, `r` (the relative
/// encoding's projection), the three attention biases and segment embeddings, the
/// feed-forward's `layer_1` and `layer_2` and the two `layer_norm`s.
fn xlnet(name: &str) -> Option<&'static str> {
    if name.starts_with("word_embedding.") {
        return Some("word embeddings");
    }
    let rest = name.strip_prefix("layer.")?.split_once('.')?.1;
    Some(match rest {
        "rel_attn.q" => "query",
        "rel_attn.k" => "key",
        "rel_attn.v" => "value",
        "rel_attn.o" => "attention output dense",
        "rel_attn.r" => "position projections",
        "rel_attn.r_w_bias" | "rel_attn.r_r_bias" | "rel_attn.r_s_bias" | "rel_attn.seg_embed" => {
            "relative attention biases"
        }
        _ if rest.starts_with("rel_attn.layer_norm.") => "attention output LayerNorm",
        _ if rest.starts_with("ff.layer_1.") => "intermediate dense",
        _ if rest.starts_with("ff.layer_2.") => "output dense",
        _ if rest.starts_with("ff.layer_norm.") => "output LayerNorm",
        _ => "other",
    })
}

/// Whether `name` is one of `modules` of a layer's `attention.self` (BERT's `query`,
/// DeBERTa's `query_proj` and its v1 `q_bias`), or a parameter of one.
fn in_attention(name: &str, modules: &[&str]) -> bool {
    name.split_once(".attention.self.")
        .is_some_and(|(_, rest)| {
            let module = rest
                .strip_suffix(".weight")
                .or(rest.strip_suffix(".bias"))
                .unwrap_or(rest);
            modules.contains(&module)
        })
}

/// Totals of one statistic over a component: sum, element count, mean.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Aggregate {
    pub total: f64,
    pub count: usize,
    pub mean: f64,
}

/// Per (component, layer) and per component over all layers (layer None).
pub type Table = BTreeMap<(String, Option<usize>), Aggregate>;

/// Sum `values` (name → (sum of the statistic, element count)) by component.
pub fn aggregate(values: &BTreeMap<String, (f64, usize)>) -> Table {
    let mut out: Table = BTreeMap::new();
    for (name, &(total, count)) in values {
        let (kind, layer) = component(name);
        let keys = if layer.is_some() {
            vec![layer, None]
        } else {
            vec![None]
        };
        for l in keys {
            let a = out.entry((kind.to_string(), l)).or_default();
            a.total += total;
            a.count += count;
        }
    }
    for a in out.values_mut() {
        a.mean = if a.count > 0 {
            a.total / a.count as f64
        } else {
            0.0
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_components() {
        assert_eq!(
            component("encoder.layer.3.output.LayerNorm.weight"),
            ("output LayerNorm", Some(3))
        );
        assert_eq!(
            component("encoder.layer.11.attention.output.LayerNorm.bias"),
            ("attention output LayerNorm", Some(11))
        );
        assert_eq!(
            component("encoder.layer.0.attention.output.dense.weight"),
            ("attention output dense", Some(0))
        );
        assert_eq!(
            component("encoder.layer.0.output.dense.bias"),
            ("output dense", Some(0))
        );
        assert_eq!(
            component("embeddings.LayerNorm.weight"),
            ("embeddings LayerNorm", None)
        );
        assert_eq!(component("classifier.out_proj.weight"), ("head", None));
        assert_eq!(component("pooler.dense.weight"), ("pooler", None));
        assert_eq!(
            component("encoder.layer.2.attention.self.query.bias"),
            ("query", Some(2))
        );
    }

    #[test]
    fn xlnet_names_map_to_components() {
        for (name, kind, layer) in [
            ("word_embedding.weight", "word embeddings", None),
            ("layer.1.rel_attn.q", "query", Some(1)),
            ("layer.0.rel_attn.o", "attention output dense", Some(0)),
            (
                "layer.0.rel_attn.r_s_bias",
                "relative attention biases",
                Some(0),
            ),
            (
                "layer.2.rel_attn.layer_norm.bias",
                "attention output LayerNorm",
                Some(2),
            ),
            ("layer.0.ff.layer_1.weight", "intermediate dense", Some(0)),
            ("layer.0.ff.layer_norm.weight", "output LayerNorm", Some(0)),
            ("logits_proj.weight", "head", None),
            ("sequence_summary.summary.bias", "head", None),
        ] {
            assert_eq!(component(name), (kind, layer), "{name}");
        }
    }

    #[test]
    fn deberta_names_map_to_components() {
        for (name, kind) in [
            ("encoder.layer.1.attention.self.query_proj.weight", "query"),
            ("encoder.layer.1.attention.self.q_bias", "query"),
            ("encoder.layer.1.attention.self.key_proj.bias", "key"),
            ("encoder.layer.1.attention.self.value_proj.weight", "value"),
            ("encoder.layer.1.attention.self.v_bias", "value"),
            (
                "encoder.layer.1.attention.self.in_proj.weight",
                "query, key and value",
            ),
            (
                "encoder.layer.1.attention.self.pos_key_proj.bias",
                "position projections",
            ),
            (
                "encoder.layer.1.attention.self.pos_q_proj.weight",
                "position projections",
            ),
        ] {
            assert_eq!(component(name), (kind, Some(1)), "{name}");
        }
        assert_eq!(
            component("encoder.rel_embeddings.weight"),
            ("relative embeddings", None)
        );
        assert_eq!(
            component("encoder.LayerNorm.bias"),
            ("relative embeddings LayerNorm", None)
        );
        assert_eq!(
            component("embeddings.embed_proj.weight"),
            ("embeddings projection", None)
        );
    }

    #[test]
    fn aggregates_per_layer_and_overall() {
        let mut v = BTreeMap::new();
        v.insert(
            "encoder.layer.0.output.LayerNorm.weight".to_string(),
            (4.0, 2),
        );
        v.insert(
            "encoder.layer.1.output.LayerNorm.weight".to_string(),
            (2.0, 2),
        );
        let t = aggregate(&v);
        let all = &t[&("output LayerNorm".to_string(), None)];
        assert_eq!((all.total, all.count, all.mean), (6.0, 4, 1.5));
        assert_eq!(t[&("output LayerNorm".to_string(), Some(0))].mean, 2.0);
    }
}
