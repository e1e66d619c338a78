//! InA (Kang et al., 2024): LoRA whose low-rank activations lose --ina-inhibition times
//! each token's largest channel before the activation (model/adapter.rs).

use anyhow::Result;

use super::settings::strings;
use super::{Method, MethodDef, Scope, Traits};
use crate::model::{AdapterConfig, AdapterKind, InaActivation};

pub struct Ina;

pub const METHOD: Method = Method(&Ina);

crate::method_settings! {
    context(m, f);
    used_by = m.has(METHOD);
    /// ina: adapter rank.
    ina_r => r: usize = default(4);
    /// ina: scaling numerator, alpha/r.
    ina_alpha => alpha: f64 = default(16.0);
    /// ina: dropout on the adapter's input.
    ina_dropout => dropout: f64 = default(0.1);
    /// ina: modules to wrap (the authors' code: query, key and value).
    #[arg(value_delimiter = ',')]
    ina_targets => targets: Vec<String> = default(strings(&["query", "key", "value"]));
    /// ina: Inh_p, the share of each token's max activation subtracted; 0 is plain LoRA.
    ina_inhibition => inhibition: f64 = default(0.1);
    /// ina: activation after the inhibition (the authors' code: leaky-relu; the paper's
    /// text: gelu).
    #[arg(value_enum)]
    ina_activation => activation: InaActivation = default(InaActivation::LeakyRelu);
}

crate::shown_by_value_enum!(InaActivation);
impl super::settings::Absent for InaActivation {}

impl Settings {
    pub fn check(&self) -> Result<()> {
        super::lora::check_low_rank("ina", self.r, self.dropout, &self.targets)
    }

    /// The adapter these settings add.
    pub fn adapter(&self) -> AdapterConfig {
        AdapterConfig {
            kind: AdapterKind::Ina {
                inhibition: self.inhibition,
                activation: self.activation,
            },
            r: self.r,
            alpha: self.alpha,
            dropout: self.dropout,
            targets: self.targets.clone(),
            rslora: false,
            init: None,
        }
    }
}

impl MethodDef for Ina {
    fn name(&self) -> &'static str {
        "ina"
    }
    fn help(&self) -> &'static str {
        "InA inhibition adapters (Kang et al., 2024) on --ina-targets"
    }
    /// As LoRA; the InA authors' recipe (configs/ina.toml) uses 5e-5 with its own batch size.
    fn default_lr(&self) -> f64 {
        5e-4
    }
    fn traits(&self) -> Traits {
        Traits::ADAPTER
    }
    /// Only its new tensors train (and the head): new parameters always do.
    fn chooses(&self, _name: &str, _scope: &Scope) -> bool {
        false
    }
}
