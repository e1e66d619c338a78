//! LoReFT (Wu et al., 2024), as pyreft's LoreftIntervention: h + Rᵀ(Wh + b − Rh) on chosen
//! layers' outputs at chosen positions (model/reft.rs).

use anyhow::Result;

use super::settings::strings;
use super::{Method, MethodDef, Scope, Traits};
use crate::error::user;
use crate::model::reft::Positions;
use crate::model::{AdapterConfig, AdapterKind};

pub struct Loreft;

pub const METHOD: Method = Method(&Loreft);

crate::method_settings! {
    context(m, f);
    used_by = m.has(METHOD);
    /// loreft: rank of the rotation R (pyreft's low_rank_dimension; its GLUE runs use 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    loreft_r => r: usize = default(1);
    /// loreft: layers whose output is edited, `all` or 0-based indices.
    #[arg(value_delimiter = ',')]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    loreft_layers => layers: Vec<String> = default(strings(&["all"]));
    /// loreft: tokens edited, as pyreft writes them: fN (the first N), lN (the last N real
    /// tokens, the final separator included) or fN+lM, each group with its own
    /// intervention; at most half of a sequence each (pyreft's GLUE runs: f1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    loreft_positions => positions: String = default("f1".to_string());
    /// loreft: dropout on the edited states (pyreft's GLUE runs: 0.05).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    loreft_dropout => dropout: f64 = default(0.05);
}

impl Settings {
    pub fn check(&self) -> Result<()> {
        Positions::parse(&self.positions).map_err(|e| user(format!("loreft_positions: {e}")))?;
        if self.r == 0 {
            return Err(user("loreft_r: the rank must be at least 1"));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(user(format!("loreft_dropout: {} is outside [0, 1)", self.dropout)));
        }
        if self.layers.is_empty() {
            return Err(user("loreft_layers: name at least one layer, or `all`"));
        }
        if let Some(t) = self.layers.iter().find(|t| *t != "all" && t.parse::<usize>().is_err()) {
            return Err(user(format!("loreft_layers: `{t}` is neither `all` nor a layer index")));
        }
        Ok(())
    }

    /// The interventions these settings add (checked: the positions parse).
    pub fn adapter(&self) -> Result<AdapterConfig> {
        let p = Positions::parse(&self.positions).map_err(|e| user(format!("loreft_positions: {e}")))?;
        Ok(AdapterConfig {
            kind: AdapterKind::Loreft {
                first: p.first,
                last: p.last,
            },
            r: self.r,
            alpha: 0.0,
            dropout: self.dropout,
            targets: self.layers.clone(),
            rslora: false,
            init: None,
        })
    }
}

impl MethodDef for Loreft {
    fn name(&self) -> &'static str {
        "loreft"
    }
    fn help(&self) -> &'static str {
        "LoReFT (Wu et al., 2024): low-rank edits of hidden states at --loreft-layers and --loreft-positions, as pyreft"
    }
    /// pyreft's GLUE runs (RoBERTa-base).
    fn default_lr(&self) -> f64 {
        6e-4
    }
    fn traits(&self) -> Traits {
        Traits::ADAPTER
    }
    /// Only its new tensors train (and the head): new parameters always do.
    fn chooses(&self, _name: &str, _scope: &Scope) -> bool {
        false
    }
}
