//! Methods decide which parameters train, and under what mask. Nothing else does.
//!
//! A method is one file in this folder: a [`MethodDef`] with its name, its help line, its
//! default learning rate, which tensors of the checkpoint it trains and the masks on them
//! (for the optimizer, [`crate::optim::MaskedAdamW`]). [`REGISTRY`] lists them, in the
//! order `--help`, the README's table and unknown-method messages show them; `--method`
//! parsing, `peft bench --method`, unions and grids all go through it. Two rules hold for
//! every method: the task head (`classifier.*`, `qa_outputs.*`) always trains, and so does
//! any parameter the checkpoint lacks (a freshly initialised head or pooler), since a
//! random frozen layer would be noise.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::Result;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::model::params::Predicate;
use crate::optim::{LrScale, MaskPlan, UpdateRule};

mod config;
pub mod regime;
pub mod settings;
mod subset;

pub use config::{MethodConfig, MethodFlags};
pub use regime::Regime;

/// The methods, in the order they are listed everywhere; a new method is its file and one
/// name here.
macro_rules! registry {
    ($($name:ident),* $(,)?) => {
        $(pub mod $name;)*
        /// Every method `--method` accepts.
        pub const REGISTRY: &[Method] = &[$($name::METHOD),*];
    };
}

registry!(
    full,
    bitfit,
    layernorm,
    fisher_layernorm,
    random_layernorm,
    random,
    child_f,
    child_d,
    lora,
    adalora,
    dora,
    ina,
    ia3,
    hra,
    vera,
    prompt,
    prefix,
    loreft,
    bottleneck,
    head,
    top_layers,
);

/// What `A+B` means, for `--help` and the README.
pub const UNION_HELP: &str = "a union: every element A or B trains, e.g. `lora+layernorm` \
    (LoRA with every LayerNorm, as the InA authors train RoBERTa and SQuAD) or `ina+bitfit`; \
    each part keeps its flags. `full` and Child-Tuning (its own optimizer) combine with \
    nothing, and two adapter kinds or two masked subsets are refused. A union with LoRA is not \
    exported in PEFT's format (its adapter files would miss the rest); `peft merge` writes it \
    whole";

/// The README's table of methods: each registered method's name and help line, then unions.
pub fn table() -> String {
    let mut t = String::from("| `--method` | trains |\n|---|---|\n");
    for m in REGISTRY {
        t.push_str(&format!("| `{}` | {} |\n", m.name(), m.help()));
    }
    t.push_str(&format!("| `A+B` | {UNION_HELP} |\n"));
    t
}

/// What a method is, beside its selection: how it combines with others in a union and
/// which of the shared settings it takes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Traits {
    /// It adds adapters or interventions (at most one kind per run).
    pub adapter: bool,
    /// It trains a --fraction of some elements, under a fixed mask.
    pub fraction: bool,
    /// It takes Child-Tuning's --reserve.
    pub reserve: bool,
    /// Its selection ranks elements by Fisher information.
    pub fisher: bool,
    /// It combines with no other method, for this reason.
    pub alone: Option<&'static str>,
}

impl Traits {
    /// A method that adds adapters or interventions and trains only them (and the head).
    pub const ADAPTER: Traits = Traits {
        adapter: true,
        fraction: false,
        reserve: false,
        fisher: false,
        alone: None,
    };

    /// Child-Tuning F and D: AliceMind's optimizer over every parameter, combining with
    /// nothing.
    pub const CHILD_TUNING: Traits = Traits {
        adapter: false,
        fraction: false,
        reserve: true,
        fisher: false,
        alone: Some("Child-Tuning runs its own optimizer over every parameter"),
    };
}

/// One method: everything about it that is not a setting of the run.
pub trait MethodDef: Sync {
    /// Its `--method` name.
    fn name(&self) -> &'static str;
    /// One line for `--help` and the README's table: what trains, and whose method it is.
    fn help(&self) -> &'static str;
    /// The learning rate when neither flag nor config gives one.
    fn default_lr(&self) -> f64;
    fn traits(&self) -> Traits {
        Traits::default()
    }
    /// Whether it trains `name`, a tensor of the checkpoint, whole or in part (the head
    /// and tensors the checkpoint lacks train under every method).
    fn chooses(&self, name: &str, scope: &Scope) -> bool;
    /// Refuse settings the checkpoint cannot honour (a layer count beyond its depth).
    fn check(&self, _scope: &Scope) -> Result<()> {
        Ok(())
    }
    /// Masks on the chosen tensors, for a method that trains some only in part.
    fn masks(&self, _cx: &MaskContext) -> Result<MaskPlan> {
        Ok(MaskPlan::default())
    }
    /// The optimizer arithmetic its authors used.
    fn update_rule(&self) -> UpdateRule {
        UpdateRule::Torch
    }
    /// For a Fisher-ranked method: whether it ranks tensor `name` (the Fisher estimate
    /// is taken over these alone).
    fn ranks(&self, _name: &str) -> bool {
        false
    }
    /// Learning rates other than the schedule's for some tensors (LoRA+).
    fn lr_scale(&self, _spec: &MethodSpec) -> Option<LrScale> {
        None
    }
    /// What it adds to a run of `total` optimizer steps beside its selection: a penalty
    /// in the loss, work after each step (AdaLoRA's rank budget).
    fn regime(&self, _spec: &MethodSpec, _total: usize) -> Result<Option<Box<dyn Regime>>> {
        Ok(None)
    }
}

/// A method, as the rest of the crate holds it: a handle to its [`MethodDef`], compared
/// and written by name.
#[derive(Clone, Copy)]
pub struct Method(&'static dyn MethodDef);

impl Method {
    /// The registered method of this name (any case).
    pub fn named(name: &str) -> Option<Method> {
        REGISTRY
            .iter()
            .copied()
            .find(|m| m.name().eq_ignore_ascii_case(name))
    }

    pub fn name(self) -> &'static str {
        self.0.name()
    }

    pub fn help(self) -> &'static str {
        self.0.help()
    }

    pub fn default_lr(self) -> f64 {
        self.0.default_lr()
    }

    /// [`default_lr`](Self::default_lr) of every method, for `--help`: `2e-5 for full, ...`.
    pub fn default_lrs() -> String {
        let mut groups: Vec<(f64, Vec<&str>)> = Vec::new();
        for m in REGISTRY {
            match groups.iter_mut().find(|(lr, _)| *lr == m.default_lr()) {
                Some((_, names)) => names.push(m.name()),
                None => groups.push((m.default_lr(), vec![m.name()])),
            }
        }
        groups
            .iter()
            .map(|(lr, names)| format!("{lr:e} for {}", names.join(", ")))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Every method's name, in registry order: `full, bitfit, ...`.
    pub fn names() -> String {
        REGISTRY
            .iter()
            .map(|m| m.name())
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn traits(self) -> Traits {
        self.0.traits()
    }

    pub fn is_adapter(self) -> bool {
        self.traits().adapter
    }

    pub fn needs_fisher(self) -> bool {
        self.traits().fisher
    }

    pub fn takes_fraction(self) -> bool {
        self.traits().fraction
    }

    pub fn takes_reserve(self) -> bool {
        self.traits().reserve
    }

    pub fn update_rule(self) -> UpdateRule {
        self.0.update_rule()
    }

    /// The tensor-level selection over a checkpoint holding `base_names`: what trains,
    /// whole or in part, with no masks yet ([`select`] adds them).
    pub fn select<'a>(
        self,
        spec: &MethodSpec,
        base_names: impl IntoIterator<Item = &'a String>,
    ) -> Result<Selection> {
        let known: HashSet<String> = base_names.into_iter().cloned().collect();
        let scope = Scope::new(spec, &known);
        self.0.check(&scope)?;
        let chosen: HashSet<String> = known
            .iter()
            .filter(|n| self.0.chooses(n, &scope))
            .cloned()
            .collect();
        Ok(Selection {
            trainable: Box::new(move |n| is_head(n) || !known.contains(n) || chosen.contains(n)),
            masks: MaskPlan::default(),
            rule: self.update_rule(),
            lr_scale: self.0.lr_scale(spec),
        })
    }
}

impl PartialEq for Method {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

impl Eq for Method {}

impl std::fmt::Debug for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a method's selection may ask of the run: its settings and the checkpoint's shape.
pub struct Scope<'a> {
    pub spec: &'a MethodSpec,
    /// Encoder layers in the checkpoint (`encoder.layer.N.`, N below this).
    pub layers: usize,
}

impl<'a> Scope<'a> {
    fn new(spec: &'a MethodSpec, known: &HashSet<String>) -> Self {
        let layers = known
            .iter()
            .filter_map(|n| layer_of(n))
            .map(|i| i + 1)
            .max()
            .unwrap_or(0);
        Scope { spec, layers }
    }
}

/// The encoder layer a tensor belongs to: `encoder.layer.3.output.dense.weight` → 3
/// (XLNet's `layer.3.ff.layer_1.weight` too).
pub fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("encoder.layer.")
        .or_else(|| name.strip_prefix("layer."))?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// What a masked method reads: its settings, the checkpoint's tensors (for shapes) and
/// Fisher information where it ranks by it.
pub struct MaskContext<'a> {
    pub spec: &'a MethodSpec,
    pub base: &'a HashMap<String, Tensor>,
    pub fisher: Option<&'a BTreeMap<String, Tensor>>,
}

/// What `--method` names: one method, or a union of methods joined by `+`
/// (`lora+layernorm`: the adapters, LayerNorm and the head train). A union trains every
/// element any of its methods trains. Combinations that make no sense are refused when
/// parsed: `full` (already everything) or Child-Tuning (its own optimizer) with anything,
/// two adapter kinds, two masked subsets (they would mask the same tensors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Methods(Vec<Method>);

impl Methods {
    pub fn one(m: Method) -> Self {
        Methods(vec![m])
    }

    /// The methods, in the order given.
    pub fn parts(&self) -> &[Method] {
        &self.0
    }

    pub fn has(&self, m: Method) -> bool {
        self.0.contains(&m)
    }

    /// Whether a part is LoRA or DoRA, which share the --lora-* settings.
    pub fn lora(&self) -> bool {
        self.has(lora::METHOD) || self.has(dora::METHOD)
    }

    pub fn needs_fisher(&self) -> bool {
        self.0.iter().any(|m| m.needs_fisher())
    }

    /// Whether a part ranks tensor `name` by Fisher information.
    pub fn ranks(&self, name: &str) -> bool {
        self.0.iter().any(|m| m.0.ranks(name))
    }

    pub fn takes_fraction(&self) -> bool {
        self.0.iter().any(|m| m.takes_fraction())
    }

    pub fn takes_reserve(&self) -> bool {
        self.0.iter().any(|m| m.takes_reserve())
    }

    /// The first method's: `lora+layernorm` trains at LoRA's rate unless told otherwise.
    pub fn default_lr(&self) -> f64 {
        self.0[0].default_lr()
    }

    fn check(parts: Vec<Method>) -> std::result::Result<Self, String> {
        let joined = || parts.iter().map(|m| m.name()).collect::<Vec<_>>().join("+");
        if parts.len() > 1 {
            for (i, m) in parts.iter().enumerate() {
                if parts[..i].contains(m) {
                    return Err(format!("{}: {m} is listed twice", joined()));
                }
                if let Some(why) = m.traits().alone {
                    return Err(format!(
                        "{}: {m} does not combine with other methods ({why})",
                        joined()
                    ));
                }
            }
            let count = |f: fn(&Method) -> bool| parts.iter().filter(|m| f(m)).count();
            if count(|m| m.is_adapter()) > 1 {
                return Err(format!("{}: one adapter kind at a time", joined()));
            }
            if count(|m| m.takes_fraction()) > 1 {
                return Err(format!(
                    "{}: two masked subsets would mask the same tensors",
                    joined()
                ));
            }
        }
        Ok(Methods(parts))
    }
}

impl From<Method> for Methods {
    fn from(m: Method) -> Self {
        Methods::one(m)
    }
}

impl std::fmt::Display for Methods {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|m| m.name()).collect();
        f.write_str(&names.join("+"))
    }
}

impl std::str::FromStr for Methods {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let parts = s
            .split('+')
            .map(|p| {
                Method::named(p.trim()).ok_or_else(|| {
                    format!(
                        "unknown method `{}`; valid methods: {}, or several joined by + \
                         (lora+layernorm)",
                        p.trim(),
                        Method::names()
                    )
                })
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Methods::check(parts)
    }
}

impl Serialize for Methods {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Methods {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A method (or a union of them) with its settings, each method's own read by its file,
/// and the seed its random choices draw from.
#[derive(Debug, Clone)]
pub struct MethodSpec {
    pub config: MethodConfig,
    pub seed: u64,
}

impl MethodSpec {
    /// `method` with `flags` (its own settings; the rest default), drawing from `seed`.
    pub fn new(method: impl Into<Methods>, flags: MethodFlags, seed: u64) -> Result<Self> {
        Ok(flags.resolve(method.into())?.spec(seed))
    }

    /// `method` with each required setting at its example value (a tenth of the elements,
    /// the top layer): what `peft bench` times.
    pub fn example(method: impl Into<Methods>, seed: u64) -> Result<Self> {
        let method = method.into();
        let flags = MethodFlags::examples_for(&method);
        Self::new(method, flags, seed)
    }

    pub fn method(&self) -> &Methods {
        &self.config.name
    }
}

/// The selection of any method or union of methods. `base` holds the checkpoint's
/// tensors (for shapes); `fisher` is required by the Fisher-ranked methods.
pub fn select(
    spec: &MethodSpec,
    base: &HashMap<String, Tensor>,
    fisher: Option<&BTreeMap<String, Tensor>>,
) -> Result<Selection> {
    let cx = MaskContext { spec, base, fisher };
    let parts: Vec<Selection> = spec
        .method()
        .parts()
        .iter()
        .map(|&m| {
            let mut sel = m.select(spec, base.keys())?;
            sel.masks = m.0.masks(&cx)?;
            Ok(sel)
        })
        .collect::<Result<_>>()?;
    Ok(union(parts))
}

/// Every element any part trains: a tensor one part trains whole loses the mask another
/// part gave it. (Parsing refused the unions where two parts would mask one tensor, and
/// Child-Tuning's rule, which never combines.)
fn union(mut parts: Vec<Selection>) -> Selection {
    if parts.len() == 1 {
        return parts.remove(0);
    }
    let mut masks = MaskPlan::default();
    for (i, p) in parts.iter().enumerate() {
        for (name, mask) in &p.masks.named {
            let whole_elsewhere = parts
                .iter()
                .enumerate()
                .any(|(j, q)| j != i && (q.trainable)(name) && !q.masks.named.contains_key(name));
            if !whole_elsewhere {
                masks.named.insert(name.clone(), mask.clone());
            }
        }
    }
    // One part at most sets learning rates (LoRA's); it sets them for every tensor, as
    // PEFT's LoRA+ groups every trainable tensor of the model.
    let lr_scale = parts.iter_mut().find_map(|p| p.lr_scale.take());
    let predicates: Vec<Predicate> = parts.into_iter().map(|p| p.trainable).collect();
    Selection {
        trainable: Box::new(move |n| predicates.iter().any(|p| p(n))),
        masks,
        rule: UpdateRule::Torch,
        lr_scale,
    }
}

/// Which tensors train, the masks of those that train only in part, and the optimizer
/// arithmetic the method's authors used.
pub struct Selection {
    pub trainable: Predicate,
    pub masks: MaskPlan,
    pub rule: UpdateRule,
    /// Per-tensor learning rates (LoRA+); None: the schedule's for all.
    pub lr_scale: Option<LrScale>,
}

pub use crate::model::family::is_head;

/// A LayerNorm's gain or bias: `LayerNorm.` in BERT's names, `layer_norm.` in XLNet's.
pub fn is_layernorm(name: &str) -> bool {
    name.contains("LayerNorm.") || name.contains("layer_norm.")
}

/// Child-Tuning D's scope: only encoder-layer parameters take a mask; embeddings, pooler
/// and head always train fully (AliceMind ChildTuning, `calculate_fisher` masks the
/// parameters whose name contains `layer`).
pub fn is_encoder_layer(name: &str) -> bool {
    layer_of(name).is_some()
}

/// A bias: `….bias`, DeBERTa v1's query and value biases (`attention.self.q_bias`,
/// `v_bias`), which sit beside its fused, bias-free `in_proj`, and XLNet's attention
/// biases (`rel_attn.r_w_bias`, `r_r_bias`, `r_s_bias`), added to its bias-free query.
pub fn is_bias(name: &str) -> bool {
    name.ends_with(".bias") || name.ends_with("_bias")
}

/// transformers' convention: no weight decay on biases and LayerNorm parameters. Nor on
/// LoReFT's interventions: pyreft's trainer never decays them, whatever its weight decay
/// (transformers picks decayed parameters by name, and pyvene names them otherwise), and
/// decay would pull R's Householder vectors off the orthonormal R they stand for.
pub fn decays(name: &str) -> bool {
    !(is_bias(name) || is_layernorm(name) || name.contains(".loreft."))
}

#[cfg(test)]
mod tests;
