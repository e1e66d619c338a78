//! The LayerNorm paper's Fisher subset: the top --fraction of LayerNorm elements by Fisher
//! information (per task, or a global Fisher file from `peft fisher --global`); the
//! others never move.

use std::path::PathBuf;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::subset::{self, Keep};
use super::child_d::{self, CHILD_TUNING_FISHER_BATCH};
use super::{is_layernorm, MaskContext, Method, MethodDef, Scope, Traits};
use crate::error::user;
use crate::optim::{Mask, MaskPlan};

pub struct FisherLayernorm;

pub const METHOD: Method = Method(&FisherLayernorm);

/// Training examples for a Fisher estimate made before training, unless told otherwise.
/// On all-MiniLM-L6-v2 and RTE, 1024 examples pick 99% of the LayerNorm elements (and
/// 98.5% of Child-Tuning D's encoder elements) that all 2,490 pick, with the components in
/// the same order, in 30% of the time (docs/results.md, "How many examples a Fisher
/// estimate needs"); beyond a few thousand the estimate costs hours and changes little.
pub const FISHER_SAMPLES: usize = 1024;

/// A number of examples, or all of them (`all` on the command line and in TOML).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Samples {
    All,
    Count(usize),
}

impl Samples {
    /// None for all.
    pub fn limit(self) -> Option<usize> {
        match self {
            Samples::All => None,
            Samples::Count(n) => Some(n),
        }
    }
}

impl std::fmt::Display for Samples {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Samples::All => f.write_str("all"),
            Samples::Count(n) => write!(f, "{n}"),
        }
    }
}

impl std::str::FromStr for Samples {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s.eq_ignore_ascii_case("all") {
            return Ok(Samples::All);
        }
        s.parse()
            .map(Samples::Count)
            .map_err(|_| format!("`{s}` is neither a number of examples nor `all`"))
    }
}

impl Serialize for Samples {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Samples::All => s.serialize_str("all"),
            Samples::Count(n) => s.serialize_u64(*n as u64),
        }
    }
}

impl<'de> Deserialize<'de> for Samples {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(usize),
            Word(String),
        }
        match Raw::deserialize(d)? {
            Raw::Count(n) => Ok(Samples::Count(n)),
            Raw::Word(w) => w.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl super::settings::Shown for Samples {
    fn shown(&self) -> String {
        self.to_string()
    }
}

impl super::settings::Absent for Samples {}

crate::method_settings! {
    context(m, f);
    used_by = m.needs_fisher();
    /// fisher-layernorm, child-d: rank by this fisher.safetensors (from `peft fisher`,
    /// e.g. a --global one) instead of estimating Fisher on the training set first.
    fisher => file: PathBuf = optional();
    /// fisher-layernorm, child-d: training examples (a seeded random sample) for the
    /// Fisher estimate, or `all`.
    #[shown(FISHER_SAMPLES)]
    fisher_samples => samples: Samples = computed(
        f.fisher.is_none().then(|| f.fisher_samples.unwrap_or(Samples::Count(FISHER_SAMPLES)))
    );
    /// fisher-layernorm, child-d: estimate Fisher from batch-mean gradients of this batch
    /// size, as the Child-Tuning reference does.
    #[shown(format!(
        "{CHILD_TUNING_FISHER_BATCH} for child-d, as its reference; per-example gradients \
         for fisher-layernorm"
    ))]
    fisher_batch_mean => batch_mean: usize = computed(
        if m.has(child_d::METHOD) && f.fisher.is_none() {
            Some(f.fisher_batch_mean.unwrap_or(CHILD_TUNING_FISHER_BATCH))
        } else {
            f.fisher_batch_mean
        }
    );
}

impl Settings {
    pub fn check(&self) -> Result<()> {
        if self.samples == Some(Samples::Count(0)) || self.batch_mean == Some(0) {
            return Err(user("fisher_samples/fisher_batch_mean: must be at least 1"));
        }
        Ok(())
    }
}

impl MethodDef for FisherLayernorm {
    fn name(&self) -> &'static str {
        "fisher-layernorm"
    }
    fn help(&self) -> &'static str {
        "the top --fraction of LayerNorm elements by Fisher information, estimated on the \
         training set or read from --fisher"
    }
    fn default_lr(&self) -> f64 {
        1e-3
    }
    fn traits(&self) -> Traits {
        Traits {
            fraction: true,
            fisher: true,
            ..Traits::default()
        }
    }
    fn chooses(&self, name: &str, _scope: &Scope) -> bool {
        is_layernorm(name)
    }
    fn ranks(&self, name: &str) -> bool {
        is_layernorm(name)
    }
    fn masks(&self, cx: &MaskContext) -> Result<MaskPlan> {
        subset::masks(
            cx,
            self.name(),
            is_layernorm,
            subset::fraction(cx.spec),
            Keep::Fisher,
            Mask::Fixed,
        )
    }
}
