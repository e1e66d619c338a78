//! LayerNorm-only fine-tuning (ValizadehAslani & Liang, 2024): every LayerNorm gain and
//! bias trains, nothing else of the encoder.

use super::{is_layernorm, Method, MethodDef, Scope};

pub struct Layernorm;

pub const METHOD: Method = Method(&Layernorm);

impl MethodDef for Layernorm {
    fn name(&self) -> &'static str {
        "layernorm"
    }
    fn help(&self) -> &'static str {
        "LayerNorm gains and biases (ValizadehAslani & Liang, 2024)"
    }
    fn default_lr(&self) -> f64 {
        1e-3
    }
    fn chooses(&self, name: &str, _scope: &Scope) -> bool {
        is_layernorm(name)
    }
}
