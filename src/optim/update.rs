//! One tensor's AdamW update from tensor ops, for any device: what runs where the fused
//! CPU kernel (`kernels::adamw`) does not take the tensor, and what that kernel is checked
//! against.

use anyhow::Result;
use candle_core::{Tensor, Var};

use super::masks::Mask;
use crate::kernels::adamw::{Hyper, Keep, UpdateRule};

/// One trainable tensor as the optimizer holds it: its variable, mask, whether it decays,
/// and its two moments.
pub(super) struct Slot {
    pub(super) name: String,
    pub(super) var: Var,
    pub(super) mask: Mask,
    pub(super) decay: bool,
    /// Its learning rate as a multiple of the schedule's (LoRA+'s B matrices).
    pub(super) lr_scale: f64,
    pub(super) m: Tensor,
    pub(super) v: Tensor,
}

/// The update from tensor ops, for any device. With a subset mask the moments move only
/// where kept, m += keep ⊙ (1−β1)(g − m), and the update is multiplied by keep; a
/// gradient mask only multiplies the gradient.
pub(super) fn composed_update(slot: &mut Slot, g: Tensor, keep: &Keep, h: &Hyper) -> Result<()> {
    let g = if h.scale != 1.0 { (g * h.scale)? } else { g };
    let subset = match keep {
        Keep::All => None,
        Keep::Subset(k) => Some(k),
        Keep::Multiply(_) => None,
    };
    let g = match keep {
        Keep::All => g,
        Keep::Subset(k) | Keep::Multiply(k) => (g * k)?,
    };
    if h.rule == UpdateRule::ChildTuning && subset.is_none() {
        // torch's exp_avg.mul_(β1).add_(g, alpha=1−β1), as the reference computes it.
        slot.m = ((&slot.m * h.b1)? + (&g * (1.0 - h.b1))?)?;
        slot.v = ((&slot.v * h.b2)? + (g.sqr()? * (1.0 - h.b2))?)?;
    } else {
        let dm = ((&g - &slot.m)? * (1.0 - h.b1))?;
        let dv = ((g.sqr()? - &slot.v)? * (1.0 - h.b2))?;
        let (dm, dv) = match subset {
            Some(k) => ((dm * k)?, (dv * k)?),
            None => (dm, dv),
        };
        slot.m = (&slot.m + dm)?;
        slot.v = (&slot.v + dv)?;
    }
    let theta = slot.var.as_tensor();
    let mut theta_new = match h.rule {
        UpdateRule::Torch => {
            let m_hat = (&slot.m / h.bc1)?;
            let denom = ((&slot.v / h.bc2)?.sqrt()? + h.eps)?;
            let mut update = (m_hat / denom)?;
            if h.weight_decay != 0.0 {
                update = (update + (theta * h.weight_decay)?)?;
            }
            if let Some(k) = subset {
                update = (update * k)?;
            }
            (theta - (update * h.lr)?)?
        }
        UpdateRule::ChildTuning => {
            let step_size = h.lr * h.bc2.sqrt() / h.bc1;
            let mut update = ((&slot.m / (slot.v.sqrt()? + h.eps)?)? * step_size)?;
            if let Some(k) = subset {
                update = (update * k)?;
            }
            (theta - update)?
        }
    };
    if h.rule == UpdateRule::ChildTuning && h.weight_decay != 0.0 {
        let mut decay = (&theta_new * (h.lr * h.weight_decay))?;
        if let Some(k) = subset {
            decay = (decay * k)?;
        }
        theta_new = (theta_new - decay)?;
    }
    slot.var.set(&theta_new)?;
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::kernels::adamw as fused;
    use candle_core::{DType, Device};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha12Rng;

    /// The CPU path updates in place in one fused kernel; other devices compose tensor
    /// ops. Both must agree to rounding, and leave masked elements bit-identical.
    #[test]
    fn the_fused_cpu_update_matches_the_composed_one() {
        let n = 40_000; // several parallel chunks
        let mut rng = ChaCha12Rng::seed_from_u64(3);
        let mut r = |lo: f32, hi: f32| -> Tensor {
            let v: Vec<f32> = (0..n)
                .map(|_| lo + (hi - lo) * rng.random::<f32>())
                .collect();
            Tensor::from_vec(v, n, &Device::Cpu).unwrap()
        };
        let (theta, g, m, v) = (r(-1.0, 1.0), r(-0.1, 0.1), r(-0.01, 0.01), r(0.0, 1e-4));
        let keep = r(0.0, 1.0).ge(0.5).unwrap().to_dtype(DType::F32).unwrap();
        let cases = [
            (Keep::All, 0.01, 1.0, UpdateRule::Torch),
            (
                Keep::Subset(keep.clone()),
                0.0,
                0.37 / 0.3,
                UpdateRule::Torch,
            ),
            (
                Keep::Subset(keep.clone()),
                0.1,
                0.37,
                UpdateRule::ChildTuning,
            ),
            (
                Keep::Multiply(keep.clone()),
                0.1,
                0.37 / 0.3,
                UpdateRule::ChildTuning,
            ),
            (Keep::All, 0.1, 1.0, UpdateRule::ChildTuning),
        ];
        for (keep, wd, scale, rule) in &cases {
            let (wd, scale, rule) = (*wd, *scale, *rule);
            let h = Hyper {
                b1: 0.9,
                b2: 0.999,
                bc1: 1.0 - 0.9f64.powi(3),
                bc2: 1.0 - 0.999f64.powi(3),
                eps: 1e-8,
                lr: 1e-3,
                weight_decay: wd,
                scale,
                rule,
            };
            let mut slot = Slot {
                name: "w".into(),
                var: Var::from_tensor(&theta.copy().unwrap()).unwrap(),
                mask: Mask::Dense,
                decay: wd != 0.0,
                lr_scale: 1.0,
                m: m.copy().unwrap(),
                v: v.copy().unwrap(),
            };
            composed_update(&mut slot, g.clone(), keep, &h).unwrap();
            let (ft, fm, fv) = (
                Var::from_tensor(&theta.copy().unwrap()).unwrap(),
                m.copy().unwrap(),
                v.copy().unwrap(),
            );
            fused::update(ft.as_tensor(), &fm, &fv, &g, keep, &h).unwrap();
            // θ is compared at the scale it had: an update that cancels it to near zero
            // rounds differently in the last bits of the operands, not of the result.
            for (a, b, scale, what) in [
                (slot.var.as_tensor(), ft.as_tensor(), &theta, "theta"),
                (&slot.m, &fm, &m, "m"),
                (&slot.v, &fv, &v, "v"),
            ] {
                let (a, b) = (a.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap());
                let scale = scale.to_vec1::<f32>().unwrap();
                for i in 0..n {
                    let tol = 1e-6 * a[i].abs().max(scale[i].abs()).max(1e-6);
                    assert!(
                        (a[i] - b[i]).abs() <= tol,
                        "{what}[{i}]: {} vs {}",
                        a[i],
                        b[i]
                    );
                }
            }
            if let Keep::Subset(k) = keep {
                let k = k.to_vec1::<f32>().unwrap();
                let (t0, t1) = (theta.to_vec1::<f32>().unwrap(), vals(&ft));
                let (m0, m1) = (m.to_vec1::<f32>().unwrap(), fm.to_vec1::<f32>().unwrap());
                let moved = (0..n).filter(|&i| k[i] == 0.0 && (t0[i] != t1[i] || m0[i] != m1[i]));
                assert_eq!(moved.count(), 0, "a masked element moved");
            }
        }
    }

    pub(crate) fn vals(v: &Var) -> Vec<f32> {
        v.as_tensor().to_vec1::<f32>().unwrap()
    }
}
