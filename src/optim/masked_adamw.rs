//! AdamW with a per-tensor gradient mask: the single optimizer of every method.
//!
//! Each trainable tensor may carry a [`Mask`]; methods differ only in which tensors are
//! trainable, which masks they carry and which [`UpdateRule`] applies. Two families of
//! mask with different semantics:
//!
//! - **Subset masks** ([`Mask::Fixed`]: Fisher and random subsets). A masked-out element
//!   never changes: no gradient (not even into the clipping norm), no Adam update, no
//!   weight decay, no moment drift. After any number of steps it is bit-identical to the
//!   pre-trained value, which is what "train only this subset" promises.
//! - **Child-Tuning's gradient masks** ([`Mask::Gradient`] for Child-Tuning D,
//!   [`Mask::Bernoulli`] for Child-Tuning F), exactly as the AliceMind reference runs them
//!   (`ChildTuningAdamW` behind a Trainer): the trainer clips the *full* gradient by its
//!   global norm; the optimizer then multiplies each gradient by the mask (Bernoulli(p)/p
//!   drawn fresh each step for F, the fixed top-p mask for D); Adam's moments take that
//!   masked gradient, zeros included, so an element dropped this step still moves
//!   through its first moment, and weight decay applies to every decayed element.
//!
//! Order inside a step:
//! 1. subset masks zero the gradients of elements that are not trained;
//! 2. gradients are clipped by their global L2 norm (`max_grad_norm`), as
//!    `torch.nn.utils.clip_grad_norm_`;
//! 3. gradient masks multiply the clipped gradients (Bernoulli ones drawn now, survivors
//!    scaled by 1/p);
//! 4. the moments and the AdamW update, by the configured [`UpdateRule`].

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use candle_core::{DType, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha12Rng;

pub use crate::kernels::adamw::UpdateRule;
use crate::kernels::adamw::{self as fused, Hyper, Keep};

use super::masks::{bernoulli, DrawMask, Mask, MaskPlan};
use super::update::{composed_update, Slot};

#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Clip gradients to this global L2 norm; None disables clipping.
    pub max_grad_norm: Option<f64>,
    pub rule: UpdateRule,
}

impl Default for AdamWConfig {
    /// torch.optim.AdamW's betas and eps, transformers' Trainer clipping at 1.0.
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            max_grad_norm: Some(1.0),
            rule: UpdateRule::Torch,
        }
    }
}

pub struct MaskedAdamW {
    slots: Vec<Slot>,
    cfg: AdamWConfig,
    step: usize,
    /// rand's StdRng algorithm, named so that its stream position can be saved and restored.
    rng: ChaCha12Rng,
    seed: u64,
}

/// The optimizer's resumable state: step count, the per-step mask generator's position,
/// and both moments of every trainable tensor.
pub struct OptimizerState {
    pub step: usize,
    pub rng_seed: u64,
    pub rng_word_pos: u128,
    pub moments: BTreeMap<String, (Tensor, Tensor)>,
}

/// A step refused because a gradient was NaN or infinite; nothing was changed.
#[derive(Debug, Clone)]
pub struct NonFiniteGradient {
    /// The trainable tensor with the largest gradient norm (a NaN one first).
    pub param: String,
    pub norm: f64,
}

impl std::fmt::Display for NonFiniteGradient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the gradient is not finite: {} has gradient norm {}",
            self.param, self.norm
        )
    }
}

impl std::error::Error for NonFiniteGradient {}

/// What one step saw: the gradient norm before clipping, and the factor clipping scaled
/// the gradients by (1 when it did not).
#[derive(Debug, Clone, Copy)]
pub struct StepStats {
    pub grad_norm: f64,
    pub clip: f64,
}

impl MaskedAdamW {
    /// `masks.named` may name any subset of `vars`; the others take `masks.rest`.
    /// `decay(name)` says whether weight decay applies (not to biases and LayerNorm).
    pub fn new(
        vars: BTreeMap<String, Var>,
        masks: impl Into<MaskPlan>,
        decay: impl Fn(&str) -> bool,
        cfg: AdamWConfig,
        seed: u64,
    ) -> Result<Self> {
        let MaskPlan {
            named: mut masks,
            rest,
        } = masks.into();
        let mut slots = Vec::with_capacity(vars.len());
        for (name, var) in vars {
            // Masks are built on the CPU; keep each beside its parameter.
            let mask = match masks.remove(&name).unwrap_or_else(|| rest.clone()) {
                Mask::Fixed(m) => Mask::Fixed(m.to_device(var.device())?),
                Mask::Gradient(m) => Mask::Gradient(m.to_device(var.device())?),
                other => other,
            };
            match &mask {
                Mask::Fixed(m) | Mask::Gradient(m) if m.dims() != var.dims() => {
                    bail!(
                        "mask for {name} has shape {:?}, the parameter {:?}",
                        m.dims(),
                        var.dims()
                    )
                }
                Mask::Bernoulli { p } if !(*p > 0.0 && *p <= 1.0) => {
                    bail!("mask for {name}: p = {p} is outside (0, 1]")
                }
                _ => {}
            }
            let m = var.zeros_like()?;
            let v = var.zeros_like()?;
            slots.push(Slot {
                decay: decay(&name),
                lr_scale: 1.0,
                name,
                var,
                mask,
                m,
                v,
            });
        }
        if let Some(name) = masks.keys().next() {
            bail!("a mask names {name}, which is not a trainable parameter");
        }
        Ok(Self {
            slots,
            cfg,
            step: 0,
            rng: ChaCha12Rng::seed_from_u64(seed),
            seed,
        })
    }

    /// Each tensor's learning rate as `scale(name, dims)` times the schedule's.
    pub fn with_lr_scale(mut self, scale: &super::LrScale) -> Self {
        for s in &mut self.slots {
            s.lr_scale = scale(&s.name, s.var.rank());
        }
        self
    }

    pub fn steps_taken(&self) -> usize {
        self.step
    }

    /// One update with learning rate `lr` from per-name gradients. A trainable tensor
    /// with no gradient is left alone, as torch does.
    pub fn step(&mut self, grads: &BTreeMap<String, Tensor>, lr: f64) -> Result<StepStats> {
        let mut rng = std::mem::replace(&mut self.rng, ChaCha12Rng::seed_from_u64(0));
        let out = self.step_inner(grads, lr, &mut |_, shape, p, device| {
            bernoulli(&mut rng, shape, p, device)
        });
        self.rng = rng;
        out
    }

    /// [`step`](Self::step) with this step's Bernoulli masks given (0/1, by tensor name)
    /// instead of drawn: for checking the update against a reference implementation that
    /// drew its own.
    pub fn step_with_masks(
        &mut self,
        grads: &BTreeMap<String, Tensor>,
        lr: f64,
        drawn: &BTreeMap<String, Tensor>,
    ) -> Result<StepStats> {
        self.step_inner(grads, lr, &mut |name, shape, _, device| {
            let m = drawn
                .get(name)
                .ok_or_else(|| anyhow::anyhow!("no mask given for {name}"))?;
            if m.dims() != shape {
                bail!(
                    "the mask given for {name} has shape {:?}, not {shape:?}",
                    m.dims()
                );
            }
            Ok(m.to_device(device)?)
        })
    }

    fn step_inner(
        &mut self,
        grads: &BTreeMap<String, Tensor>,
        lr: f64,
        draw: &mut DrawMask,
    ) -> Result<StepStats> {
        // 1. fixed masks first: untrained elements carry no gradient, not even into the norm.
        let mut gs: Vec<Option<Tensor>> = Vec::with_capacity(self.slots.len());
        for slot in &self.slots {
            gs.push(match grads.get(&slot.name) {
                None => None,
                Some(g) => Some(match &slot.mask {
                    Mask::Fixed(m) => (g * m)?,
                    _ => g.clone(),
                }),
            });
        }
        // 2. global-norm clipping, as torch.nn.utils.clip_grad_norm_ (eps 1e-6).
        let mut sq = 0f64;
        let mut worst: Option<(usize, f64)> = None;
        for (i, s) in squared_norms(&gs)?.into_iter().enumerate() {
            let Some(s) = s else { continue };
            sq += s;
            // The first NaN tensor is the culprit, else the largest.
            if worst.is_none_or(|(_, w)| !w.is_nan() && (s.is_nan() || s > w)) {
                worst = Some((i, s));
            }
        }
        let grad_norm = sq.sqrt();
        if !grad_norm.is_finite() {
            let (i, s) = worst.unwrap_or((0, f64::NAN));
            return Err(NonFiniteGradient {
                param: self.slots[i].name.clone(),
                norm: s.sqrt(),
            }
            .into());
        }
        let clip = match self.cfg.max_grad_norm {
            Some(max) if grad_norm > max => max / (grad_norm + 1e-6),
            _ => 1.0,
        };

        self.step += 1;
        let t = self.step as i32;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let bc1 = 1.0 - b1.powi(t);
        let bc2 = 1.0 - b2.powi(t);
        let wd = self.cfg.weight_decay;
        for (slot, g) in self.slots.iter_mut().zip(gs) {
            let Some(g) = g else { continue };
            // 3. which elements may move at all, or the gradient mask of this step.
            let (keep, scale) = match &slot.mask {
                Mask::Dense => (Keep::All, clip),
                Mask::Fixed(m) => (Keep::Subset(m.clone()), clip),
                Mask::Gradient(m) => (Keep::Multiply(m.clone()), clip),
                Mask::Bernoulli { p } => (
                    Keep::Multiply(draw(&slot.name, g.dims(), *p, g.device())?),
                    clip / p,
                ),
            };
            let hyper = Hyper {
                b1,
                b2,
                bc1,
                bc2,
                eps: self.cfg.eps,
                lr: lr * slot.lr_scale,
                weight_decay: if slot.decay { wd } else { 0.0 },
                scale,
                rule: self.cfg.rule,
            };
            if fused::applies(slot.var.as_tensor(), &g) {
                fused::update(slot.var.as_tensor(), &slot.m, &slot.v, &g, &keep, &hyper)?;
            } else {
                composed_update(slot, g, &keep, &hyper)?;
            }
        }
        Ok(StepStats { grad_norm, clip })
    }

    /// The first and second moments by name, for checkpoints that resume.
    /// Copies: the moments are updated in place, and a caller's view must not move.
    pub fn moments(&self) -> Result<BTreeMap<String, (Tensor, Tensor)>> {
        self.slots
            .iter()
            .map(|s| Ok((s.name.clone(), (s.m.copy()?, s.v.copy()?))))
            .collect()
    }

    /// Everything besides the parameters that the next step depends on.
    pub fn state(&self) -> Result<OptimizerState> {
        Ok(OptimizerState {
            step: self.step,
            rng_seed: self.seed,
            rng_word_pos: self.rng.get_word_pos(),
            moments: self.moments()?,
        })
    }

    /// Continue from a saved [`OptimizerState`]: the same steps follow as if never stopped.
    pub fn restore(&mut self, mut state: OptimizerState) -> Result<()> {
        for slot in &mut self.slots {
            let Some((m, v)) = state.moments.remove(&slot.name) else {
                bail!("the checkpoint has no optimizer moments for {}", slot.name);
            };
            if m.dims() != slot.m.dims() || v.dims() != slot.v.dims() {
                bail!(
                    "the checkpoint's moments for {} have another shape",
                    slot.name
                );
            }
            // Own copies: they are updated in place.
            slot.m = m.to_device(slot.m.device())?.copy()?;
            slot.v = v.to_device(slot.v.device())?.copy()?;
        }
        if let Some(name) = state.moments.keys().next() {
            bail!("the checkpoint has moments for {name}, which is not trained in this run");
        }
        self.step = state.step;
        self.seed = state.rng_seed;
        self.rng = ChaCha12Rng::seed_from_u64(state.rng_seed);
        self.rng.set_word_pos(state.rng_word_pos);
        Ok(())
    }
}

/// `squared_norm` of each tensor present, with one copy to the host for all those the
/// CPU kernel does not take (a GPU's): reading each norm on its own synchronised the
/// device once per parameter.
pub fn squared_norms(gs: &[Option<Tensor>]) -> Result<Vec<Option<f64>>> {
    let mut out = vec![None; gs.len()];
    let mut pending = Vec::new();
    for (i, g) in gs.iter().enumerate() {
        let Some(g) = g else { continue };
        match fused::squared_norm(g)? {
            Some(s) => out[i] = Some(s),
            None => pending.push((i, g.to_dtype(DType::F64)?.sqr()?.sum_all()?)),
        }
    }
    if !pending.is_empty() {
        let sums: Vec<Tensor> = pending.iter().map(|(_, t)| t.clone()).collect();
        let sums = Tensor::stack(&sums, 0)?.to_vec1::<f64>()?;
        for ((i, _), s) in pending.iter().zip(sums) {
            out[*i] = Some(s);
        }
    }
    Ok(out)
}

/// Σ g², accumulated in f64 (one pass on the CPU, in fixed chunks so the sum is the same
/// run after run).
pub fn squared_norm(g: &Tensor) -> Result<f64> {
    if let Some(s) = fused::squared_norm(g)? {
        return Ok(s);
    }
    Ok(g.to_dtype(DType::F64)?
        .sqr()?
        .sum_all()?
        .to_scalar::<f64>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::update::tests::vals;
    use candle_core::Device;

    fn var(v: &[f32]) -> Var {
        Var::from_tensor(&Tensor::new(v, &Device::Cpu).unwrap()).unwrap()
    }

    fn t(v: &[f32]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    #[test]
    fn norms_off_the_cpu_kernel_are_read_together_and_equal() {
        // f64 gradients skip the CPU kernel, as a GPU's do: the batched read must give
        // each tensor its own sum, in place, and leave absent ones absent.
        let a = Tensor::new(&[3f32, 4.0], &Device::Cpu).unwrap();
        let b = Tensor::new(&[[1f64, 2.0], [2.0, 0.5]], &Device::Cpu).unwrap();
        let c = Tensor::new(&[0.5f64], &Device::Cpu).unwrap();
        let n = squared_norms(&[Some(a.clone()), None, Some(b), Some(c)]).unwrap();
        assert_eq!(n, vec![Some(25.0), None, Some(9.25), Some(0.25)]);
        assert_eq!(squared_norm(&a).unwrap(), 25.0);
        assert!(squared_norms(&[None]).unwrap()[0].is_none());
    }

    fn opt(vars: &[(&str, &Var)], masks: BTreeMap<String, Mask>, cfg: AdamWConfig) -> MaskedAdamW {
        let vars = vars
            .iter()
            .map(|(n, v)| (n.to_string(), (*v).clone()))
            .collect();
        MaskedAdamW::new(vars, masks, |n| n.ends_with("weight"), cfg, 0).unwrap()
    }

    fn grads(list: &[(&str, &[f32])]) -> BTreeMap<String, Tensor> {
        list.iter().map(|(n, g)| (n.to_string(), t(g))).collect()
    }

    #[test]
    fn two_steps_match_hand_computed_adamw() {
        // θ=1, g=0.5 then g=-1, lr=0.1, wd=0.1, no clipping.
        let w = var(&[1.0]);
        let cfg = AdamWConfig {
            weight_decay: 0.1,
            max_grad_norm: None,
            ..Default::default()
        };
        let mut o = opt(&[("a.weight", &w)], BTreeMap::new(), cfg);
        o.step(&grads(&[("a.weight", &[0.5])]), 0.1).unwrap();
        // m=0.05, v=0.00025, m̂=0.5, v̂=0.25 → update = 0.5/(0.5+1e-8) = 1 (−1e-8·2) ; decay 0.1·1
        let expect1 = 1.0 - 0.1 * (0.5 / (0.5 + 1e-8) + 0.1 * 1.0);
        assert!(
            (vals(&w)[0] as f64 - expect1).abs() < 1e-6,
            "{} vs {expect1}",
            vals(&w)[0]
        );
        o.step(&grads(&[("a.weight", &[-1.0])]), 0.1).unwrap();
        let m: f64 = 0.9 * 0.05 - 0.1;
        let v: f64 = 0.999 * 0.00025 + 0.001 * 1.0;
        let m_hat = m / (1.0 - 0.81);
        let v_hat = v / (1.0 - 0.999f64.powi(2));
        let expect2 = expect1 - 0.1 * (m_hat / (v_hat.sqrt() + 1e-8) + 0.1 * expect1);
        assert!(
            (vals(&w)[0] as f64 - expect2).abs() < 1e-6,
            "{} vs {expect2}",
            vals(&w)[0]
        );
    }

    /// A tensor with a learning-rate scale (LoRA+'s B) steps as AdamW at lr × scale, its
    /// decay included (torch applies a group's lr to both); the others at lr.
    #[test]
    fn lr_scale_multiplies_one_tensors_rate() {
        let (a, b) = (var(&[1.0]), var(&[1.0]));
        let cfg = AdamWConfig {
            weight_decay: 0.1,
            max_grad_norm: None,
            ..Default::default()
        };
        let scale: crate::optim::LrScale = Box::new(|n, dims| {
            if n.starts_with("b.") && dims == 1 {
                4.0
            } else {
                1.0
            }
        });
        let mut o =
            opt(&[("a.weight", &a), ("b.weight", &b)], BTreeMap::new(), cfg).with_lr_scale(&scale);
        o.step(&grads(&[("a.weight", &[0.5]), ("b.weight", &[0.5])]), 0.1)
            .unwrap();
        let step = |lr: f64| 1.0 - lr * (0.5 / (0.5 + 1e-8) + 0.1 * 1.0);
        assert!(
            (vals(&a)[0] as f64 - step(0.1)).abs() < 1e-6,
            "{:?}",
            vals(&a)
        );
        assert!(
            (vals(&b)[0] as f64 - step(0.4)).abs() < 1e-6,
            "{:?}",
            vals(&b)
        );
    }

    #[test]
    fn no_decay_for_biases() {
        let b = var(&[2.0]);
        let cfg = AdamWConfig {
            weight_decay: 0.5,
            max_grad_norm: None,
            ..Default::default()
        };
        let mut o = opt(&[("a.bias", &b)], BTreeMap::new(), cfg);
        o.step(&grads(&[("a.bias", &[0.0])]), 0.1).unwrap();
        assert_eq!(vals(&b), vec![2.0]);
    }

    #[test]
    fn clipping_scales_by_global_norm() {
        // Norm of (3, 4) is 5; clipped to 1 the gradients become (0.6, 0.8); after one
        // Adam step the update is sign-like (≈ lr each) either way, so check the moments.
        let w = var(&[0.0, 0.0]);
        let cfg = AdamWConfig {
            max_grad_norm: Some(1.0),
            ..Default::default()
        };
        let mut o = opt(&[("a.weight", &w)], BTreeMap::new(), cfg);
        let s = o.step(&grads(&[("a.weight", &[3.0, 4.0])]), 0.1).unwrap();
        assert!((s.grad_norm - 5.0).abs() < 1e-9);
        let m = o.moments().unwrap()["a.weight"].0.to_vec1::<f32>().unwrap();
        assert!(
            (m[0] - 0.06).abs() < 1e-6 && (m[1] - 0.08).abs() < 1e-6,
            "{m:?}"
        );
    }

    #[test]
    fn fixed_mask_elements_never_move() {
        let w = var(&[1.0, -2.0, 3.0, 0.5]);
        let mut masks = BTreeMap::new();
        masks.insert("a.weight".into(), Mask::Fixed(t(&[1.0, 0.0, 1.0, 0.0])));
        let cfg = AdamWConfig {
            weight_decay: 0.1,
            ..Default::default()
        };
        let mut o = opt(&[("a.weight", &w)], masks, cfg);
        for i in 0..20 {
            o.step(
                &grads(&[("a.weight", &[0.3, -0.7, 1.0 + i as f32, 2.0])]),
                0.01,
            )
            .unwrap();
        }
        let after = vals(&w);
        assert_eq!(after[1].to_bits(), (-2.0f32).to_bits());
        assert_eq!(after[3].to_bits(), 0.5f32.to_bits());
        assert!(after[0] != 1.0 && after[2] != 3.0);
        let (m, v) = &o.moments().unwrap()["a.weight"];
        assert_eq!(m.to_vec1::<f32>().unwrap()[1], 0.0);
        assert_eq!(v.to_vec1::<f32>().unwrap()[3], 0.0);
    }

    #[test]
    fn masked_gradients_do_not_count_towards_the_norm() {
        let w = var(&[0.0, 0.0]);
        let mut masks = BTreeMap::new();
        masks.insert("a.weight".into(), Mask::Fixed(t(&[1.0, 0.0])));
        let mut o = opt(&[("a.weight", &w)], masks, AdamWConfig::default());
        let s = o.step(&grads(&[("a.weight", &[0.5, 100.0])]), 0.1).unwrap();
        assert!((s.grad_norm - 0.5).abs() < 1e-9);
    }

    #[test]
    fn bernoulli_mask_keeps_about_p_and_scales_by_one_over_p() {
        let n = 20_000;
        let w = Var::from_tensor(&Tensor::zeros(n, DType::F32, &Device::Cpu).unwrap()).unwrap();
        let mut masks = BTreeMap::new();
        let p = 0.3;
        masks.insert("a.weight".into(), Mask::Bernoulli { p });
        let cfg = AdamWConfig {
            max_grad_norm: None,
            ..Default::default()
        };
        let mut o = opt(&[("a.weight", &w)], masks, cfg);
        let g = Tensor::ones(n, DType::F32, &Device::Cpu).unwrap();
        let mut gs = BTreeMap::new();
        gs.insert("a.weight".to_string(), g);
        o.step(&gs, 0.1).unwrap();
        let m = o.moments().unwrap()["a.weight"].0.to_vec1::<f32>().unwrap();
        let kept = m.iter().filter(|x| **x != 0.0).count() as f64;
        let sd = (n as f64 * p * (1.0 - p)).sqrt();
        assert!((kept - n as f64 * p).abs() < 3.0 * sd, "kept {kept}");
        // m = (1 − β1) · g / p for survivors.
        let survivor = m.iter().find(|x| **x != 0.0).unwrap();
        assert!((*survivor as f64 - 0.1 / p).abs() < 1e-6, "{survivor}");
        // From zero moments, elements dropped in the first step have nothing to move by.
        let moved = vals(&w).iter().filter(|x| **x != 0.0).count() as f64;
        assert_eq!(moved, kept);
    }

    /// Child-Tuning's reference optimizer updates the moments with the masked gradient,
    /// zeros included: an element kept in step 1 and dropped in step 2 still moves in
    /// step 2 (through its first moment), and its moments decay. A subset mask's
    /// elements would not move at all.
    #[test]
    fn a_child_tuning_element_dropped_this_step_still_moves() {
        let w = var(&[1.0, 1.0]);
        let mut masks = BTreeMap::new();
        masks.insert("a.weight".to_string(), Mask::Bernoulli { p: 0.5 });
        let cfg = AdamWConfig {
            max_grad_norm: None,
            weight_decay: 0.1,
            rule: UpdateRule::ChildTuning,
            ..Default::default()
        };
        let mut o = opt(&[("a.weight", &w)], masks, cfg);
        let g = grads(&[("a.weight", &[1.0, 1.0])]);
        let drawn = |a: f32, b: f32| -> BTreeMap<String, Tensor> {
            [("a.weight".to_string(), t(&[a, b]))].into_iter().collect()
        };
        o.step_with_masks(&g, 0.1, &drawn(1.0, 0.0)).unwrap();
        let after1 = vals(&w);
        assert!(
            after1[0] < 0.95,
            "kept element moved by the step: {after1:?}"
        );
        // Dropped, zero moments: only weight decay moves it, θ·(1 − lr·wd).
        assert!((after1[1] - 0.99).abs() < 1e-7, "{after1:?}");
        o.step_with_masks(&g, 0.1, &drawn(0.0, 0.0)).unwrap();
        let after2 = vals(&w);
        let (m, v) = &o.moments().unwrap()["a.weight"];
        let (m, v) = (m.to_vec1::<f32>().unwrap(), v.to_vec1::<f32>().unwrap());
        // m = 0.9 · 0.1 · (1/0.5) after a zero gradient.
        assert!((m[0] - 0.18).abs() < 1e-6 && v[0] > 0.0, "{m:?} {v:?}");
        assert!(
            after2[0] < after1[0] * 0.99 - 0.01,
            "{after1:?} -> {after2:?}"
        );
    }

    #[test]
    fn restored_state_continues_the_same_trajectory() {
        let cfg = AdamWConfig {
            weight_decay: 0.1,
            ..Default::default()
        };
        let masks = || {
            let mut m = BTreeMap::new();
            m.insert("a.weight".into(), Mask::Bernoulli { p: 0.5 });
            m
        };
        let g = |i: usize| grads(&[("a.weight", &[0.3, -0.7, 1.0 + i as f32, 2.0, -1.0, 0.1])]);
        let start = [1.0, -2.0, 3.0, 0.5, 0.25, 4.0];
        let w = var(&start);
        let mut o = opt(&[("a.weight", &w)], masks(), cfg);
        for i in 0..10 {
            o.step(&g(i), 0.01).unwrap();
        }
        // Stop after 4 steps, restore into a fresh optimizer (differently seeded), go on.
        let w2 = var(&start);
        let mut first = opt(&[("a.weight", &w2)], masks(), cfg);
        for i in 0..4 {
            first.step(&g(i), 0.01).unwrap();
        }
        let state = first.state().unwrap();
        let w3 = var(&vals(&w2));
        let vars = [("a.weight".to_string(), w3.clone())].into_iter().collect();
        let mut second =
            MaskedAdamW::new(vars, masks(), |n| n.ends_with("weight"), cfg, 99).unwrap();
        second.restore(state).unwrap();
        for i in 4..10 {
            second.step(&g(i), 0.01).unwrap();
        }
        let bits = |v: &Var| vals(v).iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&w), bits(&w3));
        assert_eq!(o.steps_taken(), second.steps_taken());
    }

    #[test]
    fn a_nan_gradient_names_the_tensor_and_changes_nothing() {
        let a = var(&[1.0, 2.0]);
        let b = var(&[3.0, 4.0]);
        let mut o = opt(
            &[("a.weight", &a), ("b.weight", &b)],
            BTreeMap::new(),
            AdamWConfig::default(),
        );
        o.step(
            &grads(&[("a.weight", &[0.1, 0.2]), ("b.weight", &[0.1, 0.1])]),
            0.1,
        )
        .unwrap();
        let (a0, b0) = (vals(&a), vals(&b));
        let err = o
            .step(
                &grads(&[("a.weight", &[1e3, 1e3]), ("b.weight", &[f32::NAN, 0.0])]),
                0.1,
            )
            .unwrap_err();
        let nf = err
            .downcast_ref::<NonFiniteGradient>()
            .expect("typed error");
        assert_eq!(nf.param, "b.weight");
        assert_eq!((vals(&a), vals(&b)), (a0, b0));
        assert_eq!(o.steps_taken(), 1);
        let m = o.moments().unwrap()["a.weight"].0.to_vec1::<f32>().unwrap()[0];
        assert!((m - 0.01).abs() < 1e-7, "the moments moved: {m}");
    }

    use crate::kernels::common::testing::max_diff;

    /// Child-Tuning D and F against the reference: `scripts/child_tuning_reference.py`
    /// runs AliceMind's `ChildTuningAdamW` update rule behind torch's global-norm clipping
    /// for five steps on fixed gradients (F with its Bernoulli masks written out), and
    /// every parameter after every step must agree within 1e-6.
    #[test]
    fn child_tuning_matches_the_reference_optimizer() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/child-tuning/reference.safetensors"
        );
        let bytes = std::fs::read(path).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let meta = meta.metadata().clone().unwrap();
        let num = |k: &str| -> f64 { meta[k].parse().unwrap() };
        let lrs: Vec<f64> = meta["lr"].split(',').map(|x| x.parse().unwrap()).collect();
        let steps = num("steps") as usize;
        assert_eq!(lrs.len(), steps);
        let fx = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
        let get = |k: String| -> Tensor {
            fx.get(&k)
                .unwrap_or_else(|| panic!("fixture lacks {k}"))
                .clone()
        };
        let names: Vec<String> = fx
            .keys()
            .filter_map(|k| k.strip_prefix("init.").map(str::to_string))
            .collect();
        let cfg = AdamWConfig {
            beta1: num("beta1"),
            beta2: num("beta2"),
            eps: num("eps"),
            weight_decay: num("weight_decay"),
            max_grad_norm: Some(num("max_grad_norm")),
            rule: UpdateRule::ChildTuning,
        };
        let p = num("reserve_p");
        // The reference's groups: no decay for biases and LayerNorm.
        let decays = |n: &str| !(n.ends_with(".bias") || n.contains("LayerNorm."));
        for mode in ["d", "f"] {
            let vars: BTreeMap<String, Var> = names
                .iter()
                .map(|n| {
                    (
                        n.clone(),
                        Var::from_tensor(&get(format!("init.{n}")).copy().unwrap()).unwrap(),
                    )
                })
                .collect();
            let plan = match mode {
                "d" => MaskPlan::from(
                    names
                        .iter()
                        .filter(|n| n.starts_with("encoder.layer."))
                        .map(|n| (n.clone(), Mask::Gradient(get(format!("dmask.{n}")))))
                        .collect::<BTreeMap<_, _>>(),
                ),
                _ => MaskPlan {
                    named: BTreeMap::new(),
                    rest: Mask::Bernoulli { p },
                },
            };
            let mut o = MaskedAdamW::new(vars.clone(), plan, decays, cfg, 0).unwrap();
            for (s, &lr) in lrs.iter().enumerate() {
                let g: BTreeMap<String, Tensor> = names
                    .iter()
                    .map(|n| (n.clone(), get(format!("grad.{s}.{n}"))))
                    .collect();
                let drawn: BTreeMap<String, Tensor> = names
                    .iter()
                    .map(|n| (n.clone(), get(format!("fmask.{s}.{n}"))))
                    .collect();
                o.step_with_masks(&g, lr, &drawn).unwrap();
                for n in &names {
                    let want = get(format!("{mode}.{s}.{n}"));
                    let diff = max_diff(vars[n].as_tensor(), &want);
                    assert!(diff <= 1e-6, "{mode} step {s} {n}: off by {diff}");
                }
            }
            let moments = o.moments().unwrap();
            for n in &names {
                for (which, got) in [("m", &moments[n].0), ("v", &moments[n].1)] {
                    let want = get(format!("{mode}.{which}.{n}"));
                    let diff = max_diff(got, &want);
                    assert!(diff <= 1e-6, "{mode} {which} of {n}: off by {diff}");
                }
            }
        }
    }
}
