//! HRA (Yuan et al., 2024), as PEFT's `HRAConfig` builds it with `apply_GS` false: a
//! wrapped linear layer's weight becomes W·H, H = H₀·H₁·…·H_{r−1} with H_i = I − 2·û_i·û_iᵀ
//! the Householder reflection of the i-th column of `hra_u` (in × r), normalised. PEFT
//! forms W·H and multiplies; here the reflections act on the input instead,
//! x·(W·H)ᵀ = (x·H_{r−1}·…·H₀)·Wᵀ (each H_i is symmetric), r rank-one updates of x rather
//! than an in × in matrix per forward. The start is PEFT's symmetric one: for even r, half
//! the columns drawn Kaiming-uniform and each repeated once, so that each pair of equal
//! reflections cancels and the untrained layer is the base layer.

use anyhow::Result;
use candle_core::{Tensor, D};

use super::params::{Init, Path};

/// One layer's reflections.
#[derive(Debug, Clone)]
pub struct Hra {
    /// (in, r), as PEFT's `hra_u`.
    u: Tensor,
}

impl Hra {
    /// `{path}.hra_u` for a layer with `d_in` inputs, `r` reflections.
    pub fn load(path: &Path, d_in: usize, r: usize) -> Result<Self> {
        let u = path.get_or_compute("hra_u", &[d_in, r], || start(path, d_in, r))?;
        Ok(Self { u })
    }

    /// Reflections by the columns of `u` (in, r).
    pub fn from_u(u: Tensor) -> Self {
        Self { u }
    }

    /// The columns normalised: (in, r).
    fn unit(&self) -> Result<Tensor> {
        let norms = self.u.sqr()?.sum_keepdim(0)?.sqrt()?;
        Ok(self.u.broadcast_div(&norms)?)
    }

    /// `x` (rows, in) through Hᵀ: the last reflection first.
    pub fn reflect(&self, x: &Tensor) -> Result<Tensor> {
        let u = self.unit()?;
        let mut x = x.clone();
        for i in (0..u.dim(1)?).rev() {
            let ui = u.narrow(1, i, 1)?; // (in, 1)
            let along = x.matmul(&ui)?; // (rows, 1)
            x = (x - (along.matmul(&ui.t()?)? * 2.0)?)?;
        }
        Ok(x)
    }

    /// H itself (in × in), for folding into the weight: W·H.
    pub fn matrix(&self) -> Result<Tensor> {
        let u = self.unit()?;
        let d = u.dim(0)?;
        let mut h = Tensor::eye(d, u.dtype(), u.device())?;
        for i in 0..u.dim(1)? {
            let ui = u.narrow(1, i, 1)?;
            h = (&h - (h.matmul(&ui)?.matmul(&ui.t()?)? * 2.0)?)?;
        }
        Ok(h)
    }
}

/// PEFT's `reset_hra_parameters`: for even r, (in, r/2) drawn as torch's
/// `kaiming_uniform_(a=√5)` draws it (bound 1/√fan_in, fan_in = r/2 columns), each column
/// then repeated once in place (`repeat_interleave(2, dim=1)`); for odd r, (in, r) drawn
/// whole (PEFT warns that the start then changes the layer).
fn start(path: &Path, d_in: usize, r: usize) -> Result<Tensor> {
    if r % 2 == 1 {
        return path.draw(&[d_in, r], Init::Uniform(1.0 / (r as f64).sqrt()));
    }
    let half = path.draw(&[d_in, r / 2], Init::Uniform(1.0 / ((r / 2) as f64).sqrt()))?;
    let twice = Tensor::stack(&[&half, &half], D::Minus1)?; // (in, r/2, 2)
    Ok(twice.reshape((d_in, r))?)
}
