//! Full fine-tuning: every parameter trains.

use super::{Method, MethodDef, Scope, Traits};

pub struct Full;

pub const METHOD: Method = Method(&Full);

impl MethodDef for Full {
    fn name(&self) -> &'static str {
        "full"
    }
    fn help(&self) -> &'static str {
        "every parameter"
    }
    /// BERT's fine-tuning range (Devlin et al., 2019).
    fn default_lr(&self) -> f64 {
        2e-5
    }
    fn traits(&self) -> Traits {
        Traits {
            alone: Some("it already trains every parameter"),
            ..Traits::default()
        }
    }
    fn chooses(&self, _name: &str, _scope: &Scope) -> bool {
        true
    }
}
