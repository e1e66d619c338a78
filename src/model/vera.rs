//! VeRA (Kopiczko et al., 2024), as PEFT's `VeraConfig` builds it: one pair of frozen random
//! projections shared by every wrapped layer, A (r × max_in) and B (max_out × r) for the
//! largest input and output among them, each layer reading A[:, :in] and B[:out, :]; per
//! layer two trained vectors, λ_d (r, starting at `d_initial`) and λ_b (out, starting at
//! zero): y = W₀x + b₀ + λ_b ⊙ (B_s·(λ_d ⊙ (A_s·dropout(x)))).
//!
//! The projections are drawn as PEFT draws them from `projection_prng_key`: torch's CPU
//! generator (MT19937 seeded with the key), A then B, each Kaiming-uniform with gain √2
//! (bound √(6/fan_in), fan_in their second dimension), one 32-bit draw per element whose
//! low 24 bits make a float in [0, 1), as torch's `uniform_` makes it. So they are never
//! stored: a run holds its key, and the projections are the same each time it is loaded,
//! here and in PEFT.

use std::collections::HashMap;

use anyhow::Result;
use candle_core::{Device, Tensor};
use rand_mt::Mt;

/// PEFT's `_kaiming_init` of a (rows, cols) tensor from `rng`, row-major.
fn kaiming(rng: &mut Mt, rows: usize, cols: usize) -> Vec<f32> {
    let bound = 3f64.sqrt() * (2f64.sqrt() / (cols as f64).sqrt());
    let (from, to) = (-bound as f32, bound as f32);
    // torch's `uniform_real`: 24 bits to [0, 1), scaled and shifted in its accumulation
    // type (double on the CPU), the width `to − from` taken in float.
    let width = f64::from(to - from);
    (0..rows * cols)
        .map(|_| {
            let x = f64::from(rng.next_u32() & 0xFF_FFFF) / 16_777_216.0;
            (x * width + f64::from(from)) as f32
        })
        .collect()
}

/// The shared projections for `key`: A (r, max_in) and B (max_out, r).
pub fn projections(
    key: u64,
    r: usize,
    (max_in, max_out): (usize, usize),
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    // torch seeds its MT19937 with the key's low 32 bits.
    let mut rng = Mt::new(key as u32);
    let a = kaiming(&mut rng, r, max_in);
    let b = kaiming(&mut rng, max_out, r);
    Ok((
        Tensor::from_vec(a, (r, max_in), device)?,
        Tensor::from_vec(b, (max_out, r), device)?,
    ))
}

/// The largest (in, out) among the weights (out, in) of the modules `weights` holds VeRA
/// vectors for (`….vera_lambda_d`): the same, from a run's tensors.
pub fn max_dims_of(weights: &HashMap<String, Tensor>) -> Result<(usize, usize)> {
    let mut max = (0, 0);
    for k in weights.keys() {
        if let Some(module) = k.strip_suffix(".vera_lambda_d") {
            if let Some(w) = weights.get(&format!("{module}.weight")) {
                let (o, i) = w.dims2()?;
                max = (max.0.max(i), max.1.max(o));
            }
        }
    }
    Ok(max)
}

/// One layer's slices: A[:, :d_in] and B[:d_out, :].
pub fn slices(
    key: u64,
    r: usize,
    max: (usize, usize),
    (d_in, d_out): (usize, usize),
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let (a, b) = projections(key, r, max, device)?;
    Ok((
        a.narrow(1, 0, d_in)?.contiguous()?,
        b.narrow(0, 0, d_out)?.contiguous()?,
    ))
}
