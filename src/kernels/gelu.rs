//! Exact (erf) GELU, transformers' "gelu", as one CPU op with its own backward, both
//! from the vectorised rows in `simd`; elsewhere candle's `gelu_erf`.

use anyhow::Result;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::common::{ensure, fused, par_fill, records, slice, with_slice};
use super::simd;

pub(super) struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "peft-gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice(s, l)?;
        // SAFETY: chunk i of the output is beside x's elements [4096·i, 4096·i + o.len()),
        // of o's length, and `simd::gelu` writes every element of an o as long as its x.
        let out = unsafe {
            par_fill(x.len(), 4096, |i, o| {
                simd::gelu(o, &x[i * 4096..][..o.len()])
            })
        };
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        ensure(g.shape() == x.shape(), || {
            format!(
                "gelu backward: gradient {:?} against input {:?}",
                g.dims(),
                x.dims()
            )
        })?;
        let dx = with_slice(x, |x| {
            with_slice(g, |g| {
                let mut dx = vec![0f32; x.len()];
                dx.par_chunks_mut(4096)
                    .zip(x.par_chunks(4096).zip(g.par_chunks(4096)))
                    .for_each(|(d, (x, g))| simd::gelu_backward(d, x, g));
                dx
            })
        })??;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// Exact (erf) GELU, transformers' "gelu".
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if fused(x) {
        let x = x.contiguous()?;
        return Ok(if records(&[&x]) {
            x.apply_op1(GeluErf)?
        } else {
            x.apply_op1_no_bwd(&GeluErf)?
        });
    }
    Ok(x.gelu_erf()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::common::testing::{grads, max_diff, rand};

    #[test]
    fn gelu_matches_candle_with_gradient() {
        let x = (rand(&[1000], 7) * 4.0).unwrap();
        let probe = rand(&[1000], 8);
        let (yf, gf) = grads(|x| gelu_erf(x).unwrap(), &x, &probe);
        let (yc, gc) = grads(|x| x.gelu_erf().unwrap(), &x, &probe);
        assert!(max_diff(&yf, &yc) < 1e-6, "{}", max_diff(&yf, &yc));
        assert!(max_diff(&gf, &gc) < 1e-5, "{}", max_diff(&gf, &gc));
    }
}
