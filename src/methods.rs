//! Methods decide which parameters train, and under what mask. Nothing else does.
//!
//! A method is a name predicate plus optional per-tensor masks for the one optimizer
//! ([`crate::optim::MaskedAdamW`]). Two rules hold for every method: the task head
//! (`classifier.*`) always trains, and so does any parameter the checkpoint lacks
//! (a freshly initialised head or pooler), since a random frozen layer would be noise.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::{anyhow, Result};
use candle_core::{DType, Device, Tensor};
use clap::ValueEnum;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::error::user;
use crate::model::params::Predicate;
use crate::optim::{Mask, MaskPlan, UpdateRule};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Every parameter.
    Full,
    /// Biases only (Ben Zaken et al., 2022).
    Bitfit,
    /// LayerNorm gains and biases only (ValizadehAslani & Liang, 2024).
    Layernorm,
    /// The top --fraction of LayerNorm elements by Fisher information (per task, or a
    /// global Fisher file from `peft fisher --global`).
    FisherLayernorm,
    /// --fraction of LayerNorm elements chosen uniformly at random: the control for
    /// fisher-layernorm.
    RandomLayernorm,
    /// --fraction of all encoder elements chosen uniformly at random.
    Random,
    /// Child-Tuning F: each step, every gradient element survives with probability
    /// --reserve and survivors are scaled by 1/reserve, as the reference optimizer runs it
    /// (Xu et al., 2021).
    ChildF,
    /// Child-Tuning D: gradients of encoder-layer elements outside the top --reserve by
    /// Fisher information at the pre-trained weights are zeroed, as the reference
    /// optimizer runs it (Xu et al., 2021).
    ChildD,
    /// LoRA adapters on --lora-targets (Hu et al., 2021); only adapters and head train.
    Lora,
    /// DoRA (Liu et al., 2024): LoRA's direction plus a learned magnitude per output row,
    /// as PEFT's use_dora; the --lora-* settings apply.
    Dora,
    /// InA inhibition adapters on --ina-targets (Kang et al., 2024).
    Ina,
    /// IA3 scaling vectors on --ia3-targets (Liu et al., 2022), as PEFT's IA3.
    Ia3,
    /// LoReFT (Wu et al., 2024): low-rank edits of the hidden states at --loreft-layers
    /// and --loreft-positions, as pyreft's LoreftIntervention.
    Loreft,
}

impl Method {
    /// A learning rate that suits the method when neither flag nor config gives one:
    /// full fine-tuning (and Child-Tuning, which updates many weights) in BERT's range;
    /// sparse subsets need far larger steps.
    pub fn default_lr(self) -> f64 {
        match self {
            Method::Full | Method::ChildF | Method::ChildD => 2e-5,
            Method::Lora | Method::Dora | Method::Ina => 5e-4,
            // T-Few's rate for IA3 (Liu et al., 2022).
            Method::Ia3 => 3e-3,
            // pyreft's GLUE runs (RoBERTa-base).
            Method::Loreft => 6e-4,
            _ => 1e-3,
        }
    }

    /// [`default_lr`](Self::default_lr) of every method, for `--help`: `2e-5 for full, ...`.
    pub fn default_lrs() -> String {
        let mut groups: Vec<(f64, Vec<&str>)> = Vec::new();
        for m in <Method as ValueEnum>::value_variants() {
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

    pub fn name(self) -> &'static str {
        match self {
            Method::Full => "full",
            Method::Bitfit => "bitfit",
            Method::Layernorm => "layernorm",
            Method::FisherLayernorm => "fisher-layernorm",
            Method::RandomLayernorm => "random-layernorm",
            Method::Random => "random",
            Method::ChildF => "child-f",
            Method::ChildD => "child-d",
            Method::Lora => "lora",
            Method::Dora => "dora",
            Method::Ina => "ina",
            Method::Ia3 => "ia3",
            Method::Loreft => "loreft",
        }
    }

    /// Whether the method adds adapters (at most one kind per run).
    pub fn is_adapter(self) -> bool {
        matches!(
            self,
            Method::Lora | Method::Dora | Method::Ina | Method::Ia3 | Method::Loreft
        )
    }

    /// Whether the selection ranks parameters by Fisher information.
    pub fn needs_fisher(self) -> bool {
        matches!(self, Method::FisherLayernorm | Method::ChildD)
    }

    /// Which settings the method takes: --fraction, or --reserve.
    pub fn takes_fraction(self) -> bool {
        matches!(
            self,
            Method::FisherLayernorm | Method::RandomLayernorm | Method::Random
        )
    }

    pub fn takes_reserve(self) -> bool {
        matches!(self, Method::ChildF | Method::ChildD)
    }

    /// The selection for a name-only method (full, bitfit, layernorm) over a checkpoint
    /// holding `base_names`. Masked methods go through [`select`].
    pub fn select<'a>(self, base_names: impl IntoIterator<Item = &'a String>) -> Selection {
        let known: HashSet<String> = base_names.into_iter().cloned().collect();
        let chosen: fn(&str) -> bool = match self {
            Method::Bitfit => is_bias,
            Method::Layernorm | Method::FisherLayernorm | Method::RandomLayernorm => is_layernorm,
            // Adapter weights are new to the checkpoint, and new parameters always train.
            Method::Lora | Method::Dora | Method::Ina | Method::Ia3 | Method::Loreft => |_| false,
            _ => |_| true,
        };
        Selection {
            trainable: Box::new(move |n| is_head(n) || !known.contains(n) || chosen(n)),
            masks: MaskPlan::default(),
            rule: self.update_rule(),
        }
    }

    /// Child-Tuning trains through its reference optimizer's arithmetic
    /// (`ChildTuningAdamW`, transformers' original AdamW); everything else through torch's.
    pub fn update_rule(self) -> UpdateRule {
        match self {
            Method::ChildF | Method::ChildD => UpdateRule::ChildTuning,
            _ => UpdateRule::Torch,
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
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
        self.has(Method::Lora) || self.has(Method::Dora)
    }

    pub fn needs_fisher(&self) -> bool {
        self.0.iter().any(|m| m.needs_fisher())
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
                if matches!(m, Method::Full | Method::ChildF | Method::ChildD) {
                    return Err(format!(
                        "{}: {m} does not combine with other methods ({})",
                        joined(),
                        match m {
                            Method::Full => "it already trains every parameter",
                            _ => "Child-Tuning runs its own optimizer over every parameter",
                        }
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
                <Method as ValueEnum>::from_str(p.trim(), true).map_err(|_| {
                    let valid: Vec<&str> =
                        Method::value_variants().iter().map(|m| m.name()).collect();
                    format!(
                        "unknown method `{}`; valid methods: {}, or several joined by + \
                         (lora+layernorm)",
                        p.trim(),
                        valid.join(", ")
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

/// A method (or a union of them) with its settings.
#[derive(Debug, Clone)]
pub struct MethodSpec {
    pub method: Methods,
    /// Share of eligible elements for the subset methods.
    pub fraction: f64,
    /// Child-Tuning's reserve_p.
    pub reserve: f64,
    pub seed: u64,
}

/// The selection of any method or union of methods. `base` holds the checkpoint's
/// tensors (for shapes); `fisher` is required by the Fisher-ranked methods.
pub fn select(
    spec: &MethodSpec,
    base: &HashMap<String, Tensor>,
    fisher: Option<&BTreeMap<String, Tensor>>,
) -> Result<Selection> {
    let parts: Vec<Selection> = spec
        .method
        .parts()
        .iter()
        .map(|&m| select_one(m, spec, base, fisher))
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
    let predicates: Vec<Predicate> = parts.into_iter().map(|p| p.trainable).collect();
    Selection {
        trainable: Box::new(move |n| predicates.iter().any(|p| p(n))),
        masks,
        rule: UpdateRule::Torch,
    }
}

fn select_one(
    method: Method,
    spec: &MethodSpec,
    base: &HashMap<String, Tensor>,
    fisher: Option<&BTreeMap<String, Tensor>>,
) -> Result<Selection> {
    let spec = &MethodSpec {
        method: Methods::one(method),
        ..spec.clone()
    };
    let mut sel = method.select(base.keys());
    // Elements eligible for the mask, in a fixed (name) order.
    let eligible: Vec<(&String, &Tensor)> = {
        let mut v: Vec<(&String, &Tensor)> = base
            .iter()
            .filter(|(n, _)| match method {
                Method::FisherLayernorm | Method::RandomLayernorm => is_layernorm(n),
                Method::Random => !is_head(n),
                Method::ChildF | Method::ChildD => is_encoder_layer(n),
                _ => false,
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        v
    };
    let total: usize = eligible.iter().map(|(_, t)| t.elem_count()).sum();
    let keep_of = |share: f64| ((share * total as f64).round() as usize).clamp(1, total.max(1));
    let keep: Vec<bool> = match method {
        Method::Full
        | Method::Bitfit
        | Method::Layernorm
        | Method::Lora
        | Method::Dora
        | Method::Ina
        | Method::Ia3
        | Method::Loreft => return Ok(sel),
        // Every tensor the optimizer holds, the head and pooler included.
        Method::ChildF => {
            sel.masks.rest = Mask::Bernoulli { p: spec.reserve };
            return Ok(sel);
        }
        Method::RandomLayernorm | Method::Random => {
            let k = keep_of(spec.fraction);
            let mut idx: Vec<usize> = (0..total).collect();
            idx.shuffle(&mut StdRng::seed_from_u64(spec.seed));
            let mut keep = vec![false; total];
            idx[..k].iter().for_each(|&i| keep[i] = true);
            keep
        }
        Method::FisherLayernorm | Method::ChildD => {
            let fisher = fisher.ok_or_else(|| anyhow!("{method} needs Fisher information"))?;
            let share = if method == Method::ChildD {
                spec.reserve
            } else {
                spec.fraction
            };
            let mut scores = Vec::with_capacity(total);
            for (name, t) in &eligible {
                let f = fisher
                    .get(*name)
                    .ok_or_else(|| user(format!("the Fisher information has no `{name}`")))?;
                if f.dims() != t.dims() {
                    return Err(user(format!(
                        "Fisher of `{name}` has shape {:?}, the model {:?}",
                        f.dims(),
                        t.dims()
                    )));
                }
                scores.extend(f.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?);
            }
            top_k(&scores, keep_of(share))
        }
    };
    let mut at = 0;
    for (name, t) in eligible {
        let n = t.elem_count();
        let m: Vec<f32> = keep[at..at + n]
            .iter()
            .map(|&k| if k { 1.0 } else { 0.0 })
            .collect();
        at += n;
        let m = Tensor::from_vec(m, t.dims(), &Device::Cpu)?;
        // Child-Tuning D's mask gates the gradient, as its reference optimizer does;
        // the subset methods' elements outside the mask never move.
        let mask = match method {
            Method::ChildD => Mask::Gradient(m),
            _ => Mask::Fixed(m),
        };
        sel.masks.named.insert(name.clone(), mask);
    }
    Ok(sel)
}

/// Exactly k largest scores (ties broken by position, NaN counted as smallest).
fn top_k(scores: &[f32], k: usize) -> Vec<bool> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    let key = |i: usize| {
        if scores[i].is_nan() {
            f32::NEG_INFINITY
        } else {
            scores[i]
        }
    };
    idx.sort_by(|&a, &b| key(b).total_cmp(&key(a)).then(a.cmp(&b)));
    let mut keep = vec![false; scores.len()];
    idx[..k.min(scores.len())]
        .iter()
        .for_each(|&i| keep[i] = true);
    keep
}

/// Which tensors train, the masks of those that train only in part, and the optimizer
/// arithmetic the method's authors used.
pub struct Selection {
    pub trainable: Predicate,
    pub masks: MaskPlan,
    pub rule: UpdateRule,
}

pub fn is_head(name: &str) -> bool {
    name.starts_with("classifier.") || name.starts_with("qa_outputs.")
}

pub fn is_layernorm(name: &str) -> bool {
    name.contains("LayerNorm.")
}

/// Child-Tuning D's scope: only encoder-layer parameters take a mask; embeddings, pooler
/// and head always train fully (AliceMind ChildTuning, `calculate_fisher` masks the
/// parameters whose name contains `layer`).
pub fn is_encoder_layer(name: &str) -> bool {
    name.starts_with("encoder.layer.")
}

/// A bias: `….bias`, and DeBERTa v1's query and value biases (`attention.self.q_bias`,
/// `v_bias`), which sit beside its fused, bias-free `in_proj`.
pub fn is_bias(name: &str) -> bool {
    name.ends_with(".bias") || name.ends_with("_bias")
}

/// transformers' convention: no weight decay on biases and LayerNorm parameters.
pub fn decays(name: &str) -> bool {
    !(is_bias(name) || is_layernorm(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: &[&str] = &[
        "embeddings.word_embeddings.weight",
        "embeddings.LayerNorm.weight",
        "encoder.layer.0.attention.self.query.bias",
        "encoder.layer.0.output.LayerNorm.bias",
        "pooler.dense.weight",
    ];

    fn trains(m: Method) -> Vec<&'static str> {
        let known: Vec<String> = NAMES.iter().map(|s| s.to_string()).collect();
        let sel = m.select(&known);
        let mut out: Vec<&str> = NAMES
            .iter()
            .copied()
            .filter(|n| (sel.trainable)(n))
            .collect();
        for extra in [
            "classifier.weight",
            "classifier.out_proj.bias",
            "pooler.dense.bias",
        ] {
            if (sel.trainable)(extra) {
                out.push(extra);
            }
        }
        out
    }

    #[test]
    fn selections() {
        assert_eq!(trains(Method::Full).len(), NAMES.len() + 3);
        assert_eq!(
            trains(Method::Bitfit),
            vec![
                "encoder.layer.0.attention.self.query.bias",
                "encoder.layer.0.output.LayerNorm.bias",
                "classifier.weight",
                "classifier.out_proj.bias",
                "pooler.dense.bias"
            ]
        );
        // pooler.dense.bias is not in the checkpoint here: new parameters always train.
        assert_eq!(
            trains(Method::Layernorm),
            vec![
                "embeddings.LayerNorm.weight",
                "encoder.layer.0.output.LayerNorm.bias",
                "classifier.weight",
                "classifier.out_proj.bias",
                "pooler.dense.bias"
            ]
        );
    }

    fn base() -> HashMap<String, Tensor> {
        let t = |n: usize| Tensor::zeros(n, DType::F32, &Device::Cpu).unwrap();
        [
            ("embeddings.LayerNorm.weight", t(4)),
            ("encoder.layer.0.output.LayerNorm.weight", t(4)),
            ("encoder.layer.0.output.dense.weight", t(8)),
            ("classifier.weight", t(2)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    fn ones(sel: &Selection) -> BTreeMap<String, Vec<f32>> {
        sel.masks
            .named
            .iter()
            .map(|(k, m)| match m {
                Mask::Fixed(t) | Mask::Gradient(t) => (k.clone(), t.to_vec1::<f32>().unwrap()),
                _ => (k.clone(), vec![]),
            })
            .collect()
    }

    #[test]
    fn fisher_layernorm_keeps_the_top_fraction_of_layernorm() {
        let mut fisher = BTreeMap::new();
        fisher.insert(
            "embeddings.LayerNorm.weight".to_string(),
            Tensor::new(&[9f32, 1., 2., 8.], &Device::Cpu).unwrap(),
        );
        fisher.insert(
            "encoder.layer.0.output.LayerNorm.weight".to_string(),
            Tensor::new(&[3f32, 7., 0., 4.], &Device::Cpu).unwrap(),
        );
        let spec = MethodSpec {
            method: Method::FisherLayernorm.into(),
            fraction: 0.5,
            reserve: 0.3,
            seed: 0,
        };
        let sel = select(&spec, &base(), Some(&fisher)).unwrap();
        let m = ones(&sel);
        assert_eq!(m["embeddings.LayerNorm.weight"], vec![1., 0., 0., 1.]);
        assert_eq!(
            m["encoder.layer.0.output.LayerNorm.weight"],
            vec![0., 1., 0., 1.]
        );
        assert!(!(sel.trainable)("encoder.layer.0.output.dense.weight"));
        assert!(
            (sel.trainable)("classifier.weight")
                && !sel.masks.named.contains_key("classifier.weight")
        );
        assert!(matches!(sel.masks.rest, Mask::Dense));
        assert!(matches!(
            sel.masks.named["embeddings.LayerNorm.weight"],
            Mask::Fixed(_)
        ));
        assert_eq!(sel.rule, UpdateRule::Torch);
    }

    #[test]
    fn random_layernorm_keeps_the_same_count_seeded() {
        let spec = MethodSpec {
            method: Method::RandomLayernorm.into(),
            fraction: 0.25,
            reserve: 0.3,
            seed: 5,
        };
        let a = ones(&select(&spec, &base(), None).unwrap());
        let kept: f32 = a.values().flatten().sum();
        assert_eq!(kept, 2.0);
        assert_eq!(a, ones(&select(&spec, &base(), None).unwrap()));
    }

    #[test]
    fn child_tuning_masks_as_the_reference_optimizer() {
        // F: a fresh Bernoulli mask on every trainable tensor, head and embeddings included.
        let spec = MethodSpec {
            method: Method::ChildF.into(),
            fraction: 1.0,
            reserve: 0.3,
            seed: 0,
        };
        let sel = select(&spec, &base(), None).unwrap();
        assert!(sel.masks.named.is_empty());
        assert!(matches!(sel.masks.rest, Mask::Bernoulli { p } if p == 0.3));
        assert_eq!(sel.rule, UpdateRule::ChildTuning);
        assert!((sel.trainable)("embeddings.LayerNorm.weight"));
        // D: a gradient mask on encoder-layer tensors only, top 30% of their Fisher.
        let spec = MethodSpec {
            method: Method::ChildD.into(),
            ..spec
        };
        assert!(
            select(&spec, &base(), None).is_err(),
            "child-d without Fisher"
        );
        let fisher: BTreeMap<String, Tensor> = base()
            .iter()
            .map(|(k, t)| {
                let n = t.elem_count();
                let v: Vec<f32> = (0..n).map(|i| i as f32).collect();
                (k.clone(), Tensor::from_vec(v, n, &Device::Cpu).unwrap())
            })
            .collect();
        let sel = select(&spec, &base(), Some(&fisher)).unwrap();
        let names: Vec<&String> = sel.masks.named.keys().collect();
        assert_eq!(
            names,
            vec![
                "encoder.layer.0.output.LayerNorm.weight",
                "encoder.layer.0.output.dense.weight"
            ]
        );
        assert!(sel
            .masks
            .named
            .values()
            .all(|m| matches!(m, Mask::Gradient(_))));
        assert!(matches!(sel.masks.rest, Mask::Dense));
        let kept: f32 = ones(&sel).values().flatten().sum();
        assert_eq!(kept, 4.0, "30% of 12 encoder-layer elements");
        assert_eq!(sel.rule, UpdateRule::ChildTuning);
    }

    #[test]
    fn decay_rule() {
        assert!(decays("encoder.layer.0.attention.self.query.weight"));
        assert!(!decays("encoder.layer.0.attention.self.query.bias"));
        assert!(!decays("encoder.layer.0.attention.self.q_bias"));
        assert!(is_bias("encoder.layer.0.attention.self.v_bias"));
        assert!(!decays("embeddings.LayerNorm.weight"));
    }

    #[test]
    fn unions_parse_and_senseless_ones_are_refused() {
        let m: Methods = "lora+LayerNorm".parse().unwrap();
        assert_eq!(m.to_string(), "lora+layernorm");
        assert!(m.has(Method::Lora) && m.has(Method::Layernorm) && !m.needs_fisher());
        assert_eq!(m.default_lr(), Method::Lora.default_lr());
        let err = |s: &str| s.parse::<Methods>().unwrap_err();
        assert!(err("full+bitfit").contains("already trains every parameter"));
        assert!(err("layernorm+child-f").contains("its own optimizer"));
        assert!(err("lora+ina").contains("one adapter kind"));
        assert!(err("random+fisher-layernorm").contains("two masked subsets"));
        assert!(err("bitfit+bitfit").contains("listed twice"));
        assert!(err("lora+bias").contains("unknown method `bias`"));
        assert_eq!(
            "child-d".parse::<Methods>().unwrap(),
            Methods::one(Method::ChildD)
        );
    }

    /// A union trains what either part trains; a tensor one part trains whole keeps no
    /// mask from the other (bitfit's LayerNorm biases under random-layernorm).
    #[test]
    fn a_union_trains_what_either_part_trains() {
        let t = |n: usize| Tensor::zeros(n, DType::F32, &Device::Cpu).unwrap();
        let base: HashMap<String, Tensor> = [
            ("embeddings.LayerNorm.weight", t(4)),
            ("embeddings.LayerNorm.bias", t(4)),
            ("encoder.layer.0.output.dense.bias", t(4)),
            ("encoder.layer.0.output.dense.weight", t(8)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let spec = MethodSpec {
            method: "bitfit+random-layernorm".parse().unwrap(),
            fraction: 0.5,
            reserve: 1.0,
            seed: 3,
        };
        let sel = select(&spec, &base, None).unwrap();
        for (name, trains) in [
            ("embeddings.LayerNorm.weight", true),
            ("embeddings.LayerNorm.bias", true),
            ("encoder.layer.0.output.dense.bias", true),
            ("encoder.layer.0.output.dense.weight", false),
            ("classifier.weight", true),
        ] {
            assert_eq!((sel.trainable)(name), trains, "{name}");
        }
        let masks = ones(&sel);
        assert_eq!(
            masks.keys().collect::<Vec<_>>(),
            ["embeddings.LayerNorm.weight"]
        );
        assert!(matches!(sel.rule, UpdateRule::Torch));
    }
}
