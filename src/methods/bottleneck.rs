//! Bottleneck adapters (Houlsby et al., 2019; Pfeiffer et al., 2021) as AdapterHub's
//! `adapters` library builds them (`SeqBnConfig`, `DoubleSeqBnConfig`; model/bottleneck.rs):
//! small down-activation-up networks in each layer's sublayers, the encoder frozen.

use anyhow::Result;

use super::{Method, MethodDef, Scope, Traits};
use crate::error::user;
use crate::model::adapter::{BnActivation, Placement};
use crate::model::{AdapterConfig, AdapterKind};

pub struct Bottleneck;

pub const METHOD: Method = Method(&Bottleneck);

crate::method_settings! {
    context(m, f);
    used_by = m.has(METHOD);
    /// adapter: pfeiffer (after each feed-forward output, AdapterHub's SeqBnConfig) or
    /// houlsby (after each attention output too, its DoubleSeqBnConfig).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    adapter_placement => placement: Placement = default(Placement::Pfeiffer);
    /// adapter: the encoder's width over the adapter's (the library's reduction_factor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    adapter_reduction => reduction: usize = default(16);
    /// adapter: the activation between the projections, relu or swish [default: the
    /// placement's, relu for pfeiffer and swish for houlsby, as the library's].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    adapter_activation => activation: BnActivation = optional();
}

crate::shown_by_value_enum!(Placement);
impl super::settings::Absent for Placement {}
impl super::settings::Absent for BnActivation {}

impl Settings {
    pub fn check(&self) -> Result<()> {
        if self.reduction == 0 {
            return Err(user("adapter_reduction: must be at least 1"));
        }
        Ok(())
    }

    /// The adapters these settings add.
    pub fn adapter(&self) -> AdapterConfig {
        AdapterConfig {
            kind: AdapterKind::Bottleneck {
                reduction: self.reduction,
                placement: self.placement,
                activation: self
                    .activation
                    .unwrap_or_else(|| self.placement.activation()),
            },
            r: 0,
            alpha: 0.0,
            dropout: 0.0,
            targets: Vec::new(),
            rslora: false,
            init: None,
        }
    }
}

impl MethodDef for Bottleneck {
    fn name(&self) -> &'static str {
        "adapter"
    }
    fn help(&self) -> &'static str {
        "bottleneck adapters (Houlsby et al., 2019; Pfeiffer et al., 2021) at --adapter-placement, as AdapterHub builds them"
    }
    /// AdapterHub's and Pfeiffer et al.'s GLUE rate.
    fn default_lr(&self) -> f64 {
        1e-4
    }
    fn traits(&self) -> Traits {
        Traits::ADAPTER
    }
    /// Only its new tensors train (and the head): new parameters always do.
    fn chooses(&self, _name: &str, _scope: &Scope) -> bool {
        false
    }
}
