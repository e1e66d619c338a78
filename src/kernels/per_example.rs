//! Σ_b (dy_bᵀ x_b)∘²: the sum over examples of a linear layer's squared per-example weight
//! gradients, from the batch's output gradients dy (batch, seq, out) and inputs x (batch,
//! seq, in), without holding them all: per-example Fisher information in batches.
//! Each thread takes a block of the weight's rows and, example by example, forms that
//! block of the example's gradient with one gemm into a buffer it reuses, then adds its
//! squares: the gradients are never all in memory, and each is read once. On other
//! devices, the same sum from candle's ops a few examples at a time.

use candle_core::{Result, Tensor};
use rayon::prelude::*;

use super::common::with_slice;
use super::matmul::gemm_into;

/// Rows of the weight a thread takes at a time.
const BLOCK: usize = 64;
/// Elements of per-example gradients held at once by the fallback (f32: 64 MiB).
const CHUNK: usize = 16 << 20;

/// `acc` (out·in, row-major) += Σ_b (dy_bᵀ x_b)∘², on the CPU.
pub fn add_squared_products(acc: &mut [f32], dy: &Tensor, x: &Tensor) -> Result<()> {
    let (b, t, out) = dy.dims3()?;
    let (bx, tx, d_in) = x.dims3()?;
    if (bx, tx) != (b, t) || acc.len() != out * d_in {
        candle_core::bail!(
            "per-example products: dy {:?}, x {:?}, accumulator of {}",
            dy.dims(),
            x.dims(),
            acc.len()
        );
    }
    with_slice(dy, |dy| {
        with_slice(x, |x| {
            acc.par_chunks_mut(BLOCK * d_in)
                .enumerate()
                .for_each(|(block, acc)| {
                    let rows = acc.len() / d_in;
                    let first = block * BLOCK;
                    let mut g = vec![0f32; rows * d_in];
                    for e in 0..b {
                        // dy_bᵀ's rows first..first+rows: element (o, s) at dy[e, s, first + o].
                        let lhs = (&dy[e * t * out + first..], 1, out);
                        let rhs = (&x[e * t * d_in..][..t * d_in], d_in, 1);
                        gemm_into(
                            &mut g,
                            d_in,
                            rows,
                            t,
                            d_in,
                            lhs,
                            rhs,
                            gemm::Parallelism::None,
                        );
                        acc.iter_mut().zip(&g).for_each(|(a, g)| *a += g * g);
                    }
                });
        })
    })?
}

/// Σ_b (dy_bᵀ x_b)∘² (out, in) from candle's ops, a few examples at a time: any device.
pub fn squared_products(dy: &Tensor, x: &Tensor) -> Result<Tensor> {
    let (b, _, out) = dy.dims3()?;
    let each = out * x.dim(2)?;
    let step = (CHUNK / each.max(1)).clamp(1, b.max(1));
    let mut sum: Option<Tensor> = None;
    for start in (0..b).step_by(step) {
        let n = step.min(b - start);
        let dy = dy.narrow(0, start, n)?.transpose(1, 2)?.contiguous()?;
        let g = dy.matmul(&x.narrow(0, start, n)?.contiguous()?)?;
        let sq = g.sqr()?.sum(0)?;
        sum = Some(match sum {
            Some(s) => (s + sq)?,
            None => sq,
        });
    }
    match sum {
        Some(s) => Ok(s),
        None => Tensor::zeros((out, x.dim(2)?), dy.dtype(), dy.device()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn the_fused_sum_is_the_composed_one() {
        // 3 examples of 5 tokens, 130 rows (three blocks, the last short) by 7.
        let dev = Device::Cpu;
        let dy = Tensor::randn(0f32, 1.0, (3, 5, 130), &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (3, 5, 7), &dev).unwrap();
        let want = squared_products(&dy, &x).unwrap();
        let mut acc = vec![1f32; 130 * 7];
        add_squared_products(&mut acc, &dy, &x).unwrap();
        let got = (Tensor::from_vec(acc, (130, 7), &dev).unwrap() - 1.0).unwrap();
        let diff = (got - &want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let scale = want.max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff <= 1e-5 * scale, "{diff} of {scale}");
        // And example by example, the definition.
        let mut by_hand = vec![0f32; 130 * 7];
        let (dy, x) = (dy.to_vec3::<f32>().unwrap(), x.to_vec3::<f32>().unwrap());
        for e in 0..3 {
            for o in 0..130 {
                for i in 0..7 {
                    let g: f32 = (0..5).map(|s| dy[e][s][o] * x[e][s][i]).sum();
                    by_hand[o * 7 + i] += g * g;
                }
            }
        }
        let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (a, b) in by_hand.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "{a} vs {b}");
        }
    }
}
