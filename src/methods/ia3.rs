//! IA3 (Liu et al., 2022), as PEFT's IA3Config: learned vectors scaling key and value
//! outputs and the dense output layers' inputs (model/adapter.rs).

use anyhow::Result;

use super::settings::strings;
use super::{Method, MethodDef, Scope, Traits};
use crate::error::user;
use crate::model::adapter::{IA3_TARGETS, TARGETS};
use crate::model::{AdapterConfig, AdapterKind};

pub struct Ia3;

pub const METHOD: Method = Method(&Ia3);

crate::method_settings! {
    context(m, f);
    used_by = m.has(METHOD);
    /// ia3: modules to scale, matched by suffix as PEFT matches them (`output.dense` is
    /// both dense output layers, which scale their input; the rest scale their output).
    #[arg(value_delimiter = ',')]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ia3_targets => targets: Vec<String> = default(strings(IA3_TARGETS));
}

impl Settings {
    pub fn check(&self) -> Result<()> {
        if let Some(t) = self
            .targets
            .iter()
            .find(|t| !IA3_TARGETS.contains(&t.as_str()) && !TARGETS.contains(&t.as_str()))
        {
            return Err(user(format!(
                "ia3_targets: unknown module `{t}` (expected one of {})",
                TARGETS.join(", ")
            )));
        }
        if self.targets.is_empty() {
            return Err(user("ia3_targets: name at least one module"));
        }
        Ok(())
    }

    /// The adapter these settings add.
    pub fn adapter(&self) -> AdapterConfig {
        AdapterConfig {
            kind: AdapterKind::Ia3,
            r: 0,
            alpha: 0.0,
            dropout: 0.0,
            targets: self.targets.clone(),
            rslora: false,
            init: None,
        }
    }
}

impl MethodDef for Ia3 {
    fn name(&self) -> &'static str {
        "ia3"
    }
    fn help(&self) -> &'static str {
        "IA3 scaling vectors (Liu et al., 2022) on --ia3-targets, as PEFT's IA3"
    }
    /// T-Few's rate for IA3 (Liu et al., 2022).
    fn default_lr(&self) -> f64 {
        3e-3
    }
    fn traits(&self) -> Traits {
        Traits::ADAPTER
    }
    /// Only its new tensors train (and the head): new parameters always do.
    fn chooses(&self, _name: &str, _scope: &Scope) -> bool {
        false
    }
}
