//! BitFit (Ben Zaken et al., 2022): biases only.

use super::{is_bias, Method, MethodDef, Scope};

pub struct Bitfit;

pub const METHOD: Method = Method(&Bitfit);

impl MethodDef for Bitfit {
    fn name(&self) -> &'static str {
        "bitfit"
    }
    fn help(&self) -> &'static str {
        "biases (Ben Zaken et al., 2022)"
    }
    /// Sparse subsets need far larger steps than full fine-tuning.
    fn default_lr(&self) -> f64 {
        1e-3
    }
    fn chooses(&self, name: &str, _scope: &Scope) -> bool {
        is_bias(name)
    }
}
