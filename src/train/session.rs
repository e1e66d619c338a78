//! A model ready to train, built one way for every caller (the training loop, the Fisher
//! estimate, `peft bench`): a method's selection decides which checkpoint tensors become
//! trainable variables, the model (with the method's adapters) is built over them, and the
//! masked AdamW holds the trainable ones under the selection's masks and update rule.

use std::collections::{BTreeMap, HashMap};

use anyhow::Result;
use candle_core::{Device, Tensor, Var};

use crate::methods::{self, Selection};
use crate::model::params::Predicate;
use crate::model::{AdapterConfig, HeadKind, Model, ModelConfig, ParamStore};
use crate::optim::{AdamWConfig, Mask, MaskPlan, MaskedAdamW};

/// Parameters (frozen tensors and trainable variables) and the model built over them.
pub struct Trainable {
    pub store: ParamStore,
    pub model: Model,
    pub vars: BTreeMap<String, Var>,
}

/// A [`Trainable`] with its optimizer, as a training run uses it.
pub struct Session {
    pub trainable: Trainable,
    pub opt: MaskedAdamW,
    /// Elements a gradient reaches (what "trainable parameters" counts).
    pub trainable_params: usize,
}

impl Trainable {
    /// `weights` become the model's parameters, those `trainable` names as variables; a
    /// parameter the checkpoint lacks (a new head) is initialised from `seed`.
    pub fn new(
        weights: HashMap<String, Tensor>,
        cfg: &ModelConfig,
        head: Option<HeadKind>,
        trainable: Predicate,
        adapter: Option<&AdapterConfig>,
        device: &Device,
        seed: u64,
    ) -> Result<Self> {
        let store = ParamStore::new(weights, device.clone(), seed, trainable);
        let model = Model::load_with_adapters(&store, cfg, head, adapter)?;
        let vars = store.vars();
        Ok(Self { store, model, vars })
    }

    /// Every parameter trainable: what the Fisher information is taken over.
    pub fn everything(
        weights: HashMap<String, Tensor>,
        cfg: &ModelConfig,
        head: Option<HeadKind>,
        device: &Device,
        seed: u64,
    ) -> Result<Self> {
        Self::new(weights, cfg, head, Box::new(|_| true), None, device, seed)
    }
}

impl Session {
    /// The selection's model (of `cfg`, with a `head`) and optimizer
    /// (`adam`'s rule gives way to the selection's).
    pub fn new(
        weights: HashMap<String, Tensor>,
        (cfg, head): (&ModelConfig, HeadKind),
        selection: Selection,
        adapter: Option<&AdapterConfig>,
        device: &Device,
        (seed, mask_seed): (u64, u64),
        adam: AdamWConfig,
    ) -> Result<Self> {
        let Selection {
            trainable,
            masks,
            rule,
            lr_scale,
        } = selection;
        let trainable = Trainable::new(weights, cfg, Some(head), trainable, adapter, device, seed)?;
        let trainable_params = trainable_count(&trainable.vars, &masks)?;
        let adam = AdamWConfig { rule, ..adam };
        let opt = MaskedAdamW::new(
            trainable.vars.clone(),
            masks,
            methods::decays,
            adam,
            mask_seed,
        )?;
        let opt = match &lr_scale {
            Some(scale) => opt.with_lr_scale(scale),
            None => opt,
        };
        Ok(Self {
            trainable,
            opt,
            trainable_params,
        })
    }
}

/// Elements a gradient reaches: all of a dense tensor (or of one under Child-Tuning F's
/// per-step mask), the ones of a fixed subset or of Child-Tuning D's gradient mask.
fn trainable_count(vars: &BTreeMap<String, Var>, masks: &MaskPlan) -> Result<usize> {
    let mut n = 0;
    for (name, var) in vars {
        n += match masks.named.get(name).unwrap_or(&masks.rest) {
            Mask::Fixed(m) | Mask::Gradient(m) => m.sum_all()?.to_scalar::<f32>()? as usize,
            _ => var.elem_count(),
        };
    }
    Ok(n)
}
