//! Layer freezing: the embeddings and all but the top --layers K encoder layers frozen;
//! the top K layers (every tensor in them), the pooler above them and the head train: "only
//! a subset of its layers, the earlier ones frozen". Tensors that every layer shares (a
//! DeBERTa's relative-position embeddings and their LayerNorm) sit below the layers and
//! stay frozen.

use anyhow::Result;

use super::{layer_of, Method, MethodDef, Scope};
use crate::error::user;

pub struct TopLayers;

pub const METHOD: Method = Method(&TopLayers);

crate::method_settings! {
    context(m, f);
    used_by = m.has(METHOD);
    /// top-layers: how many of the top encoder layers train (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    layers => layers: usize = required("1");
}

impl Settings {
    /// The count is checked against the checkpoint's depth (`check` below), once known.
    pub fn check(&self) -> Result<()> {
        Ok(())
    }
}

impl TopLayers {
    fn k(scope: &Scope) -> usize {
        scope.spec.config.top_layers.as_ref().map_or(0, |s| s.layers)
    }
}

impl MethodDef for TopLayers {
    fn name(&self) -> &'static str {
        "top-layers"
    }
    fn help(&self) -> &'static str {
        "the top --layers K encoder layers, the pooler and the head; embeddings and lower \
         layers frozen"
    }
    /// Whole layers train, as in full fine-tuning: BERT's range.
    fn default_lr(&self) -> f64 {
        2e-5
    }
    fn chooses(&self, name: &str, scope: &Scope) -> bool {
        match layer_of(name) {
            Some(i) => i + Self::k(scope) >= scope.layers,
            None => name.starts_with("pooler."),
        }
    }
    fn check(&self, scope: &Scope) -> Result<()> {
        let k = Self::k(scope);
        if k == 0 || k > scope.layers {
            return Err(user(format!(
                "--layers {k}: top-layers trains 1 to {} layers of this model (its \
                 num_hidden_layers)",
                scope.layers
            )));
        }
        Ok(())
    }
}
