//! Which elements of each trainable tensor may change, and how: the [`Mask`] of each
//! tensor, the [`MaskPlan`] in which a method hands them to the optimizer, and the
//! per-step Bernoulli draw of Child-Tuning F. What each kind of mask does inside a step is
//! in `masked_adamw.rs`.

use std::collections::BTreeMap;

use anyhow::Result;
use candle_core::Tensor;
use rand::Rng;
use rand_chacha::ChaCha12Rng;

/// Which elements of a trainable tensor may change, and how.
#[derive(Debug, Clone)]
pub enum Mask {
    /// Every element trains.
    Dense,
    /// A fixed 0/1 subset of the parameter's shape (Fisher and random subsets): elements
    /// outside it never move.
    Fixed(Tensor),
    /// Child-Tuning D: a fixed 0/1 tensor multiplying the clipped gradient; moments and
    /// weight decay still apply to every element.
    Gradient(Tensor),
    /// Child-Tuning F: each step a fresh mask in which every element survives with
    /// probability `p` multiplies the clipped gradient, survivors scaled by 1/p; moments
    /// and weight decay still apply to every element.
    Bernoulli { p: f64 },
}

/// The masks of a selection: by tensor name, and one for every other trainable tensor
/// (Child-Tuning F masks them all, including a head made at load time).
#[derive(Debug, Clone)]
pub struct MaskPlan {
    pub named: BTreeMap<String, Mask>,
    pub rest: Mask,
}

impl Default for MaskPlan {
    fn default() -> Self {
        Self {
            named: BTreeMap::new(),
            rest: Mask::Dense,
        }
    }
}

impl From<BTreeMap<String, Mask>> for MaskPlan {
    fn from(named: BTreeMap<String, Mask>) -> Self {
        Self {
            named,
            rest: Mask::Dense,
        }
    }
}

/// Draws a step's Bernoulli mask: (tensor name, shape, keep probability, device) → 0/1.
pub(super) type DrawMask<'a> =
    dyn FnMut(&str, &[usize], f64, &candle_core::Device) -> Result<Tensor> + 'a;

/// A 0/1 mask of `shape` in which each element is 1 with probability `p`, from `rng`.
pub(super) fn bernoulli(
    rng: &mut ChaCha12Rng,
    shape: &[usize],
    p: f64,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|_| if rng.random::<f64>() < p { 1.0 } else { 0.0 })
        .collect();
    Ok(Tensor::from_vec(data, shape, device)?)
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha12Rng;

    #[test]
    fn the_mask_stream_is_rands_std_rng() {
        // Runs recorded before the switch to a seekable generator draw the same masks.
        let mut a = rand::rngs::StdRng::seed_from_u64(7);
        let mut b = ChaCha12Rng::seed_from_u64(7);
        for _ in 0..100 {
            assert_eq!(a.random::<u64>(), b.random::<u64>());
        }
    }
}
