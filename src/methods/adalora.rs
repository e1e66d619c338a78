//! AdaLoRA (Zhang et al., 2023), as PEFT's AdaLoraConfig and RankAllocator: LoRA in SVD
//! form on each --adalora-targets layer (model/adapter.rs: A, E, B from
//! --adalora-init-r), an orthogonality penalty on A and B in every step's loss, and after
//! every optimizer step the rank budget PEFT's `update_and_allocate` keeps, run by the
//! training loop itself (PEFT leaves that call to the user's loop):
//!
//! - importance of every element of A, E and B: |θ·∇θ|, smoothed (β1) and with its
//!   uncertainty (β2), both exponential moving averages, updated before the final phase;
//! - the budget: every layer's initial rank until step tinit, then falling as a cube to
//!   target-r per layer at step total − tfinal; every deltaT steps the triplets (a row of
//!   A, its E, a column of B) of lowest importance beyond the budget have their E set to
//!   zero;
//! - at step total − tfinal the pattern is fixed at the target budget, and after it each
//!   step re-applies it.
//!
//! The pattern is written to RUN/rank_pattern.json and, with the schedule, to PEFT's
//! export (`rank_pattern`).

use std::collections::{BTreeMap, HashMap};

use anyhow::Result;
use candle_core::{DType, Tensor, Var};
use serde_json::json;

use super::regime::{Regime, Report};
use super::settings::strings;
use super::{Method, MethodDef, MethodSpec, Scope, Traits};
use crate::error::user;
use crate::model::{AdapterConfig, AdapterKind};

pub struct Adalora;

pub const METHOD: Method = Method(&Adalora);

crate::method_settings! {
    context(m, f);
    used_by = m.has(METHOD);
    /// adalora: each layer's rank at the start (PEFT's init_r).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    adalora_init_r => init_r: usize = default(12);
    /// adalora: the average rank per layer the budget falls to (PEFT's target_r).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    adalora_target_r => target_r: usize = default(8);
    /// adalora: scaling numerator, updates scaled by alpha / init-r (PEFT's lora_alpha).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    adalora_alpha => alpha: f64 = default(8.0);
    /// adalora: dropout on the adapter's input (PEFT's lora_dropout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    adalora_dropout => dropout: f64 = default(0.0);
    /// adalora: modules to wrap, as --lora-targets (PEFT's defaults for BERT).
    #[arg(value_delimiter = ',')]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    adalora_targets => targets: Vec<String> = default(strings(&["query", "value"]));
    /// adalora: steps at the full budget before it falls (PEFT's tinit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    adalora_tinit => tinit: usize = default(0);
    /// adalora: last steps at the final pattern (PEFT's tfinal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    adalora_tfinal => tfinal: usize = default(0);
    /// adalora: steps between two allocations while the budget falls (PEFT's deltaT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    adalora_delta_t => delta_t: usize = default(1);
    /// adalora: smoothing of the importance (PEFT's beta1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    adalora_beta1 => beta1: f64 = default(0.85);
    /// adalora: smoothing of its uncertainty (PEFT's beta2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    adalora_beta2 => beta2: f64 = default(0.85);
    /// adalora: weight of the orthogonality penalty on A and B (PEFT's orth_reg_weight).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    adalora_orth_reg_weight => orth: f64 = default(0.5);
}

impl Settings {
    pub fn check(&self) -> Result<()> {
        if self.init_r == 0 || self.target_r == 0 || self.target_r > self.init_r {
            return Err(user(format!(
                "adalora_target_r {} and adalora_init_r {}: need 1 ≤ target ≤ init",
                self.target_r, self.init_r
            )));
        }
        super::lora::check_low_rank("adalora", 1, self.dropout, &self.targets)?;
        if self.delta_t == 0 {
            return Err(user("adalora_delta_t: must be at least 1"));
        }
        for (key, b) in [("adalora_beta1", self.beta1), ("adalora_beta2", self.beta2)] {
            if !(b > 0.0 && b < 1.0) {
                return Err(user(format!("{key}: {b} is outside (0, 1)")));
            }
        }
        if !(self.orth.is_finite() && self.orth >= 0.0) {
            return Err(user(format!(
                "adalora_orth_reg_weight: {} is not a number ≥ 0",
                self.orth
            )));
        }
        Ok(())
    }

    /// The SVD-form adapters these settings add.
    pub fn adapter(&self) -> AdapterConfig {
        AdapterConfig {
            kind: AdapterKind::Adalora,
            r: self.init_r,
            alpha: self.alpha,
            dropout: self.dropout,
            targets: self.targets.clone(),
            rslora: false,
            init: None,
        }
    }
}

impl MethodDef for Adalora {
    fn name(&self) -> &'static str {
        "adalora"
    }
    fn help(&self) -> &'static str {
        "AdaLoRA (Zhang et al., 2023): SVD-form adapters whose rank budget falls from --adalora-init-r to --adalora-target-r during training, as PEFT's AdaLoraConfig"
    }
    /// The AdaLoRA paper's GLUE rates (DeBERTa-v3-base) are 5e-4 to 1.2e-3.
    fn default_lr(&self) -> f64 {
        1e-3
    }
    fn traits(&self) -> Traits {
        Traits::ADAPTER
    }
    /// Only its new tensors train (and the head).
    fn chooses(&self, _name: &str, _scope: &Scope) -> bool {
        false
    }
    fn regime(&self, spec: &MethodSpec, total: usize) -> Result<Option<Box<dyn Regime>>> {
        let Some(s) = spec.config.adalora.clone() else {
            return Ok(None);
        };
        if s.tinit >= total.saturating_sub(s.tfinal) {
            return Err(user(format!(
                "--adalora-tinit {} and --adalora-tfinal {} leave no step of the run's {total} \
                 for the budget to fall (PEFT needs tinit < total steps − tfinal)",
                s.tinit, s.tfinal
            )));
        }
        Ok(Some(Box::new(Allocator {
            s,
            total,
            ema: BTreeMap::new(),
            pattern: None,
        })))
    }
}

/// PEFT's RankAllocator over the run's A, E and B.
struct Allocator {
    s: Settings,
    total: usize,
    /// Per tensor: the smoothed importance and its uncertainty.
    ema: BTreeMap<String, (Tensor, Tensor)>,
    /// Per module (the name before `.lora_E`): which triplets the last allocation kept.
    pattern: Option<BTreeMap<String, Vec<bool>>>,
}

fn is_adalora(name: &str) -> bool {
    name.ends_with(".lora_A") || name.ends_with(".lora_E") || name.ends_with(".lora_B")
}

impl Allocator {
    /// The budget at `step`, and whether to allocate there (PEFT's `budget_schedule`).
    fn budget(&self, step: usize, modules: usize) -> (usize, bool) {
        let (init, target) = (self.s.init_r * modules, self.s.target_r * modules);
        let (tinit, tfinal, total) = (self.s.tinit, self.s.tfinal, self.total);
        if step <= tinit {
            (init, false)
        } else if step > total - tfinal {
            (target, true)
        } else {
            let mul = 1.0 - (step - tinit) as f64 / (total - tfinal - tinit) as f64;
            let budget = ((init - target) as f64 * mul.powi(3) + target as f64) as usize;
            (budget, step.is_multiple_of(self.s.delta_t))
        }
    }

    /// PEFT's `update_ipt`: |θ·g| and its two moving averages.
    fn update(&mut self, vars: &BTreeMap<String, Var>, grads: &BTreeMap<String, Tensor>) -> Result<()> {
        let (b1, b2) = (self.s.beta1, self.s.beta2);
        for (name, var) in vars.iter().filter(|(n, _)| is_adalora(n)) {
            let g = grads
                .get(name)
                .ok_or_else(|| anyhow::anyhow!("no gradient for {name}"))?;
            let ipt = var.as_tensor().mul(g)?.abs()?;
            let (avg, unc) = match self.ema.remove(name) {
                Some(p) => p,
                None => (ipt.zeros_like()?, ipt.zeros_like()?),
            };
            let avg = ((avg * b1)? + (&ipt * (1.0 - b1))?)?;
            let unc = ((unc * b2)? + ((&ipt - &avg)?.abs()? * (1.0 - b2))?)?;
            self.ema.insert(name.clone(), (avg, unc));
        }
        Ok(())
    }

    /// A tensor's element scores: smoothed importance times uncertainty.
    fn score(&self, name: &str) -> Result<Tensor> {
        let (avg, unc) = self
            .ema
            .get(name)
            .ok_or_else(|| anyhow::anyhow!("no importance for {name}"))?;
        Ok(avg.mul(unc)?)
    }

    /// PEFT's `mask_to_budget`: each triplet's score (E's, plus the means of A's row and
    /// B's column), the k-th lowest of all as threshold for k = initial − `budget`, and
    /// every E at or below it zeroed.
    fn mask(&mut self, vars: &BTreeMap<String, Var>, budget: usize) -> Result<()> {
        let modules = modules(vars);
        let mut scores = BTreeMap::new();
        for m in &modules {
            let a = self.score(&format!("{m}.lora_A"))?.mean(1)?;
            let b = self.score(&format!("{m}.lora_B"))?.mean(0)?;
            let e = self.score(&format!("{m}.lora_E"))?.flatten_all()?;
            scores.insert(m.clone(), (e + (a + b)?)?.to_vec1::<f32>()?);
        }
        let mut all: Vec<f32> = scores.values().flatten().copied().collect();
        all.sort_by(f32::total_cmp);
        // torch's kthvalue(k): the k-th lowest; with nothing to drop, nothing is at or
        // below the threshold (PEFT, which cannot take k = 0, fails there instead).
        let threshold = match self.s.init_r * modules.len() - budget {
            0 => f32::NEG_INFINITY,
            k => all[k - 1],
        };
        let pattern: BTreeMap<String, Vec<bool>> = scores
            .into_iter()
            .map(|(m, s)| (m, s.into_iter().map(|v| v > threshold).collect()))
            .collect();
        self.pattern = Some(pattern);
        self.apply(vars)
    }

    /// Zero the E of every triplet the pattern drops (PEFT's `masked_fill_`).
    fn apply(&self, vars: &BTreeMap<String, Var>) -> Result<()> {
        let Some(pattern) = &self.pattern else {
            return Ok(());
        };
        for (m, keep) in pattern {
            let var = vars
                .get(&format!("{m}.lora_E"))
                .ok_or_else(|| anyhow::anyhow!("no {m}.lora_E"))?;
            let e = var.as_tensor();
            let keep: Vec<u8> = keep.iter().map(|k| *k as u8).collect();
            let keep = Tensor::from_vec(keep, e.dims(), e.device())?;
            var.set(&keep.where_cond(e, &e.zeros_like()?)?)?;
        }
        Ok(())
    }
}

/// The adapted modules, sorted: names before `.lora_E`.
fn modules(vars: &BTreeMap<String, Var>) -> Vec<String> {
    vars.keys()
        .filter_map(|n| n.strip_suffix(".lora_E").map(str::to_string))
        .collect()
}

impl Regime for Allocator {
    /// PEFT's orthogonality penalty: weight × the mean over A and B of ‖AAᵀ − I‖_F and
    /// ‖BᵀB − I‖_F.
    fn penalty(&self, vars: &BTreeMap<String, Var>) -> Result<Option<Tensor>> {
        if self.s.orth == 0.0 {
            return Ok(None);
        }
        let mut sum: Option<Tensor> = None;
        let mut n = 0usize;
        for (name, var) in vars {
            let p = var.as_tensor();
            let cov = if name.ends_with(".lora_A") {
                p.matmul(&p.t()?)?
            } else if name.ends_with(".lora_B") {
                p.t()?.matmul(p)?
            } else {
                continue;
            };
            let eye = Tensor::eye(cov.dim(0)?, cov.dtype(), cov.device())?;
            let norm = (cov - eye)?.sqr()?.sum_all()?.sqrt()?;
            sum = Some(match sum {
                Some(s) => (s + norm)?,
                None => norm,
            });
            n += 1;
        }
        Ok(sum.map(|s| s * (self.s.orth / n as f64)).transpose()?)
    }

    /// PEFT's `update_and_allocate(step)`.
    fn after_step(
        &mut self,
        step: usize,
        vars: &BTreeMap<String, Var>,
        grads: &BTreeMap<String, Tensor>,
    ) -> Result<()> {
        let end = self.total - self.s.tfinal;
        let n = modules(vars).len();
        if step < end {
            self.update(vars, grads)?;
            let (budget, allocate) = self.budget(step, n);
            if allocate {
                self.mask(vars, budget)?;
            }
        } else if step == end {
            let (budget, _) = self.budget(step, n);
            self.mask(vars, budget)?;
            self.ema.clear();
        } else {
            self.apply(vars)?;
        }
        Ok(())
    }

    fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (name, (avg, unc)) in &self.ema {
            out.insert(format!("ipt/{name}"), avg.clone());
            out.insert(format!("unc/{name}"), unc.clone());
        }
        for (m, keep) in self.pattern.iter().flatten() {
            let v: Vec<f32> = keep.iter().map(|k| *k as u8 as f32).collect();
            out.insert(format!("pattern/{m}"), Tensor::new(v, &candle_core::Device::Cpu)?);
        }
        Ok(out)
    }

    fn restore(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        self.ema.clear();
        let mut pattern = BTreeMap::new();
        for (key, t) in state {
            if let Some(name) = key.strip_prefix("ipt/") {
                let unc = state
                    .get(&format!("unc/{name}"))
                    .ok_or_else(|| user(format!("the resume state has ipt/{name} but no unc/{name}")))?;
                self.ema.insert(name.to_string(), (t.clone(), unc.clone()));
            } else if let Some(m) = key.strip_prefix("pattern/") {
                let keep = t.to_dtype(DType::F32)?.to_vec1::<f32>()?;
                pattern.insert(m.to_string(), keep.iter().map(|v| *v != 0.0).collect());
            }
        }
        self.pattern = (!pattern.is_empty()).then_some(pattern);
        Ok(())
    }

    fn report(&self) -> Result<Report> {
        let s = &self.s;
        let pattern = self.pattern.as_ref().map(|p| {
            p.iter()
                .map(|(m, keep)| (m.clone(), json!({"rank": keep.iter().filter(|k| **k).count(), "kept": keep})))
                .collect::<serde_json::Map<_, _>>()
        });
        Ok(Report {
            file: Some((
                "rank_pattern.json",
                json!({"total_step": self.total, "init_r": s.init_r, "target_r": s.target_r, "modules": pattern}),
            )),
            peft_fields: json!({
                "target_r": s.target_r,
                "tinit": s.tinit,
                "tfinal": s.tfinal,
                "deltaT": s.delta_t,
                "beta1": s.beta1,
                "beta2": s.beta2,
                "orth_reg_weight": s.orth,
                "total_step": self.total,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn vars(seed: u64) -> BTreeMap<String, Var> {
        let dev = Device::Cpu;
        let mut out = BTreeMap::new();
        for (i, m) in ["l0.query", "l0.value", "l1.query"].iter().enumerate() {
            let s = seed + i as u64;
            let r = |shape: (usize, usize), k: u64| {
                let n = shape.0 * shape.1;
                let v: Vec<f32> = (0..n).map(|j| (((j as u64 * 7919 + s * 31 + k) % 97) as f32 - 48.0) / 97.0).collect();
                Var::from_tensor(&Tensor::from_vec(v, shape, &dev).unwrap()).unwrap()
            };
            out.insert(format!("{m}.lora_A"), r((4, 6), 1));
            out.insert(format!("{m}.lora_E"), r((4, 1), 2));
            out.insert(format!("{m}.lora_B"), r((6, 4), 3));
        }
        out
    }

    fn settings() -> Settings {
        let flags = Flags {
            adalora_init_r: Some(4),
            adalora_target_r: Some(2),
            adalora_tinit: Some(1),
            ..Default::default()
        };
        flags.resolve(&METHOD.into()).unwrap()
    }

    /// A resumed allocator (its state saved and restored into a fresh one) takes the
    /// next step exactly as the one that never stopped.
    #[test]
    fn restored_state_continues_the_same_allocation() {
        let total = 10;
        let mut a = Allocator { s: settings(), total, ema: BTreeMap::new(), pattern: None };
        let v = vars(0);
        for step in 0..4 {
            let grads = vars(step as u64 + 10)
                .into_iter()
                .map(|(n, g)| (n, g.as_tensor().clone()))
                .collect();
            a.after_step(step, &v, &grads).unwrap();
        }
        let mut b = Allocator { s: settings(), total, ema: BTreeMap::new(), pattern: None };
        b.restore(&a.state().unwrap()).unwrap();
        assert_eq!(a.pattern, b.pattern);
        assert!(a.pattern.is_some());
        let w = vars(0);
        for (n, var) in &w {
            var.set(v[n].as_tensor()).unwrap();
        }
        let grads: BTreeMap<String, Tensor> = vars(99)
            .into_iter()
            .map(|(n, g)| (n, g.as_tensor().clone()))
            .collect();
        a.after_step(4, &v, &grads).unwrap();
        b.after_step(4, &w, &grads).unwrap();
        assert_eq!(a.pattern, b.pattern);
        for (n, var) in &v {
            let x = var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let y = w[n].as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(x, y, "{n}");
        }
        // A fresh allocator without the state would rank from this step's importance
        // alone: its smoothed scores differ from the resumed one's.
        let mut c = Allocator { s: settings(), total, ema: BTreeMap::new(), pattern: None };
        c.update(&w, &grads).unwrap();
        let fresh = c.score("l0.query.lora_A").unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let kept = b.score("l0.query.lora_A").unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_ne!(fresh, kept);
    }

    /// PEFT's cubic budget: full until tinit, the target from total − tfinal on.
    #[test]
    fn the_budget_falls_as_a_cube() {
        let a = Allocator { s: settings(), total: 10, ema: BTreeMap::new(), pattern: None };
        let budgets: Vec<usize> = (0..10).map(|s| a.budget(s, 3).0).collect();
        // init 12, target 6, tinit 1, tfinal 0: int(6·(1 − (s − 1)/9)³ + 6), as Python
        // computes PEFT's formula for s in 0..10.
        assert_eq!(budgets, vec![12, 12, 10, 8, 7, 7, 6, 6, 6, 6]);
    }
}
