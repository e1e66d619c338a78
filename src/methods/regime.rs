//! What a method adds to the training loop beside its selection: a penalty on its
//! parameters in every step's loss, and work after every optimizer step (AdaLoRA's rank
//! budget). The loop calls these for whatever method it runs, never asking which.

use std::collections::{BTreeMap, HashMap};

use anyhow::Result;
use candle_core::{Tensor, Var};

use super::MethodSpec;

pub trait Regime: Send {
    /// A term added to the loss from the trainable variables (in the graph, so that its
    /// gradient joins the loss's); None when it adds nothing.
    fn penalty(&self, vars: &BTreeMap<String, Var>) -> Result<Option<Tensor>>;
    /// After optimizer step `step` (counted from 0) changed `vars`, with the gradients the
    /// step applied (clipped, as they stand in torch's `.grad` after clipping).
    fn after_step(
        &mut self,
        step: usize,
        vars: &BTreeMap<String, Var>,
        grads: &BTreeMap<String, Tensor>,
    ) -> Result<()>;
    /// Its state, for `--resume` (saved beside the optimizer's moments).
    fn state(&self) -> Result<HashMap<String, Tensor>>;
    /// Its state as [`state`](Self::state) gave it.
    fn restore(&mut self, state: &HashMap<String, Tensor>) -> Result<()>;
    /// What the run directory keeps of it when training ends (`RUN/<file>`), and the
    /// fields it adds to PEFT's `adapter_config.json`.
    fn report(&self) -> Result<Report>;
}

/// A regime's record of a finished run.
pub struct Report {
    /// The file it writes in the run directory, and its JSON.
    pub file: Option<(&'static str, serde_json::Value)>,
    /// Fields of PEFT's `adapter_config.json`.
    pub peft_fields: serde_json::Value,
}

/// The regime of the run's methods over `total` optimizer steps, if one of them has one.
pub fn of(spec: &MethodSpec, total: usize) -> Result<Option<Box<dyn Regime>>> {
    for m in spec.config.name.parts() {
        if let Some(r) = m.0.regime(spec, total)? {
            return Ok(Some(r));
        }
    }
    Ok(None)
}
