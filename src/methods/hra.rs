//! HRA (Yuan et al., 2024): r Householder reflections of each --hra-targets layer's input,
//! W becoming W·H, as PEFT's HRAConfig (model/hra.rs); with --hra-orth-weight λ the
//! paper's orthogonality regulariser, as the authors' code adds it to the loss (PEFT has
//! none): λ·Σ over layers of ‖I − ÛᵀÛ‖_F, Û the reflection vectors normalised.

use anyhow::Result;

use super::lora::check_low_rank;
use super::settings::strings;
use std::collections::{BTreeMap, HashMap};

use candle_core::{Tensor, Var};

use super::regime::{Regime, Report};
use super::{Method, MethodDef, MethodSpec, Scope, Traits};
use crate::model::{AdapterConfig, AdapterKind};

pub struct Hra;

pub const METHOD: Method = Method(&Hra);

crate::method_settings! {
    context(m, f);
    used_by = m.has(METHOD);
    /// hra: reflections per layer (PEFT's r; even, so that the start is the base layer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hra_r => r: usize = default(8);
    /// hra: modules whose weight is reflected, as --lora-targets (PEFT's defaults: LoRA's).
    #[arg(value_delimiter = ',')]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hra_targets => targets: Vec<String> = default(strings(&["query", "value"]));
    /// hra: weight λ of the orthogonality regulariser λ·Σ‖I − ÛᵀÛ‖_F in the loss, as the
    /// HRA authors' code adds it [default: none, as PEFT].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hra_orth_weight => orth: f64 = optional();
}

impl Settings {
    pub fn check(&self) -> Result<()> {
        if let Some(w) = self.orth.filter(|w| !(w.is_finite() && *w >= 0.0)) {
            return Err(crate::error::user(format!(
                "hra_orth_weight: {w} is not a number ≥ 0"
            )));
        }
        check_low_rank("hra", self.r, 0.0, &self.targets)
    }

    /// The reflections these settings add.
    pub fn adapter(&self) -> AdapterConfig {
        AdapterConfig {
            kind: AdapterKind::Hra,
            r: self.r,
            alpha: 0.0,
            dropout: 0.0,
            targets: self.targets.clone(),
            rslora: false,
            init: None,
        }
    }
}

impl MethodDef for Hra {
    fn name(&self) -> &'static str {
        "hra"
    }
    fn help(&self) -> &'static str {
        "HRA (Yuan et al., 2024): Householder reflections of --hra-targets layers' inputs, as PEFT's HRAConfig"
    }
    /// The HRA paper's GLUE runs (DeBERTa-v3-base) use rates of this order.
    fn default_lr(&self) -> f64 {
        1e-3
    }
    fn traits(&self) -> Traits {
        Traits::ADAPTER
    }
    /// Only its new tensors train (and the head): new parameters always do.
    fn chooses(&self, _name: &str, _scope: &Scope) -> bool {
        false
    }
    fn regime(&self, spec: &MethodSpec, _total: usize) -> Result<Option<Box<dyn Regime>>> {
        Ok(spec
            .config
            .hra
            .as_ref()
            .and_then(|s| s.orth)
            .filter(|w| *w > 0.0)
            .map(|weight| Box::new(Orthogonal { weight }) as Box<dyn Regime>))
    }
}

/// The HRA authors' regulariser: nothing to do after a step, no state.
struct Orthogonal {
    weight: f64,
}

impl Regime for Orthogonal {
    fn penalty(&self, vars: &BTreeMap<String, Var>) -> Result<Option<Tensor>> {
        let mut sum: Option<Tensor> = None;
        for (_, var) in vars.iter().filter(|(n, _)| n.ends_with(".hra_u")) {
            let u = var.as_tensor();
            let unit = u.broadcast_div(&u.sqr()?.sum_keepdim(0)?.sqrt()?)?;
            let eye = Tensor::eye(unit.dim(1)?, unit.dtype(), unit.device())?;
            let norm = (eye - unit.t()?.matmul(&unit)?)?.sqr()?.sum_all()?.sqrt()?;
            sum = Some(match sum {
                Some(s) => (s + norm)?,
                None => norm,
            });
        }
        Ok(sum.map(|s| s * self.weight).transpose()?)
    }
    fn after_step(
        &mut self,
        _step: usize,
        _vars: &BTreeMap<String, Var>,
        _grads: &BTreeMap<String, Tensor>,
    ) -> Result<()> {
        Ok(())
    }
    fn state(&self) -> Result<HashMap<String, Tensor>> {
        Ok(HashMap::new())
    }
    fn restore(&mut self, _state: &HashMap<String, Tensor>) -> Result<()> {
        Ok(())
    }
    fn report(&self) -> Result<Report> {
        Ok(Report {
            file: None,
            peft_fields: serde_json::json!({}),
        })
    }
}
