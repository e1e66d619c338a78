//! Bottleneck adapters as AdapterHub's `adapters` library builds them (`SeqBnConfig`,
//! Pfeiffer et al., 2021; `DoubleSeqBnConfig`, Houlsby et al., 2019): a down projection to
//! d/reduction, an activation and an up projection, `A(z) = W_u·act(W_d·z + b_d) + b_u`,
//! inside a layer's dense → dropout → residual → LayerNorm sublayers. With h the
//! sublayer's dense output after its dropout, r its residual input and LN its own frozen
//! LayerNorm (adapters 1.3.0, `bottleneck_layer_forward`):
//!
//! - Pfeiffer (after the feed-forward output only, ReLU): `LN(h + r + A(LN(h + r)))`; the
//!   adapter reads the normalised sum (`original_ln_before`), its residual is h
//!   (`residual_before_ln`), and the same LayerNorm comes again after it
//!   (`original_ln_after`).
//! - Houlsby (after the attention output and the feed-forward output, SiLU):
//!   `LN(h + A(h) + r)`.
//!
//! Weights start from N(0, 0.02²) and biases from zero (`init_weights="bert"`), so a new
//! adapter already moves the output a little, as in the library.

use anyhow::Result;
use candle_core::Tensor;

pub use super::adapter::{BnActivation, Placement};
use super::ctx::Ctx;
use super::nn::{LayerNorm, Linear};
use super::params::Path;

/// AdapterHub's adapter name in a tensor's path: `….output.adapters.default.adapter_up…`.
pub const NAME: &str = "default";

/// One adapter in one sublayer.
#[derive(Clone)]
pub struct Bottleneck {
    down: Linear,
    up: Linear,
    act: BnActivation,
    placement: Placement,
}

impl Bottleneck {
    /// The adapter of the sublayer at `path` (width `d`), `d / reduction` wide (at least 1).
    pub fn load(
        path: &Path,
        d: usize,
        reduction: usize,
        placement: Placement,
        act: BnActivation,
    ) -> Result<Self> {
        let m = (d / reduction.max(1)).max(1);
        let p = path.pp("adapters").pp(NAME);
        Ok(Self {
            down: Linear::load_or_init(&p.pp("adapter_down").pp("0"), d, m, 0.02)?,
            up: Linear::load_or_init(&p.pp("adapter_up"), m, d, 0.02)?,
            act,
            placement,
        })
    }

    fn adapt(&self, z: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let y = self.down.forward(z, ctx)?;
        let y = match self.act {
            BnActivation::Relu => y.relu()?,
            BnActivation::Swish => y.silu()?,
        };
        self.up.forward(&y, ctx)
    }

    /// The sublayer's output from `h` (its dense output after dropout) and `residual`,
    /// with `ln` its LayerNorm.
    pub fn forward(
        &self,
        h: &Tensor,
        residual: &Tensor,
        ln: &LayerNorm,
        ctx: &Ctx,
    ) -> Result<Tensor> {
        let sum = match self.placement {
            Placement::Pfeiffer => {
                let normed = ln.forward(&(h + residual)?, ctx)?;
                ((h + residual)? + self.adapt(&normed, ctx)?)?
            }
            Placement::Houlsby => ((h + self.adapt(h, ctx)?)? + residual)?,
        };
        ln.forward(&sum, ctx)
    }
}
