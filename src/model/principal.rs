//! PiSSA's and OLoRA's starting adapters (`--lora-init pissa|olora`, PEFT's
//! `init_lora_weights`): A and B taken from the wrapped weight W itself, and the frozen
//! weight replaced by the residual W − s·B₀·A₀, so that the untrained model is the base
//! model. PiSSA (Meng et al., 2024) starts from W's top r singular triplets,
//! A₀ = diag(√(S/s))·Vᵀ, B₀ = U·diag(√(S/s)); OLoRA (Büyükakyüz, 2024) from its QR
//! decomposition, A₀ = R[:r], B₀ = Q[:, :r], not divided by s (PEFT's `pissa_init`,
//! `olora_init`). Either decomposition is unique up to the signs of paired vectors, which
//! change A₀ and B₀ but neither s·B₀·A₀ nor what training does with them (Adam is
//! elementwise in the sign), so the residual a run was trained on is found again from W
//! whenever the run is loaded.

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use nalgebra::DMatrix;
use serde::{Deserialize, Serialize};

/// How LoRA's A and B start (PEFT's `init_lora_weights`; none given: A Kaiming-uniform).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LoraInit {
    /// A ~ N(0, 1/r²), B = 0 (PEFT's "gaussian").
    Gaussian,
    /// The top r singular triplets of W (PEFT's "pissa").
    Pissa,
    /// The first r columns of W's Q and rows of its R (PEFT's "olora").
    Olora,
}

impl LoraInit {
    /// PEFT's `init_lora_weights` value.
    pub fn peft_name(self) -> &'static str {
        match self {
            LoraInit::Gaussian => "gaussian",
            LoraInit::Pissa => "pissa",
            LoraInit::Olora => "olora",
        }
    }

    /// Whether it starts from W and so changes the frozen weight.
    pub fn from_weight(self) -> bool {
        matches!(self, LoraInit::Pissa | LoraInit::Olora)
    }
}

/// (A₀ (r × in), B₀ (out × r)) of `weight` (out × in) for rank `r` and scale `s`.
pub fn start(init: LoraInit, weight: &Tensor, r: usize, s: f64) -> Result<(Tensor, Tensor)> {
    let (out, inp) = weight.dims2()?;
    let k = out.min(inp);
    if r > k {
        bail!("rank {r} is more than the weight's smaller side {k}");
    }
    let values: Vec<f64> = weight
        .to_device(&Device::Cpu)?
        .to_dtype(candle_core::DType::F64)?
        .flatten_all()?
        .to_vec1()?;
    let w = DMatrix::from_row_slice(out, inp, &values);
    let (a, b) = match init {
        LoraInit::Pissa => {
            let svd = w.svd(true, true);
            let (Some(u), Some(vt)) = (svd.u, svd.v_t) else {
                bail!("the SVD gave no singular vectors");
            };
            // Largest singular values first, as torch.linalg.svd orders them.
            let mut order: Vec<usize> = (0..k).collect();
            order.sort_by(|&i, &j| svd.singular_values[j].total_cmp(&svd.singular_values[i]));
            let mut a = DMatrix::zeros(r, inp);
            let mut b = DMatrix::zeros(out, r);
            for (row, &i) in order.iter().take(r).enumerate() {
                let root = (svd.singular_values[i] / s).sqrt();
                a.set_row(row, &(vt.row(i) * root));
                b.set_column(row, &(u.column(i) * root));
            }
            (a, b)
        }
        LoraInit::Olora => {
            let qr = w.qr();
            let (q, rr) = (qr.q(), qr.r());
            (rr.rows(0, r).into_owned(), q.columns(0, r).into_owned())
        }
        LoraInit::Gaussian => bail!("gaussian starts from no weight"),
    };
    let tensor = |m: &DMatrix<f64>| -> Result<Tensor> {
        // nalgebra stores columns first; a transpose's storage is the rows.
        let rows: Vec<f32> = m.transpose().iter().map(|&x| x as f32).collect();
        Ok(Tensor::from_vec(
            rows,
            (m.nrows(), m.ncols()),
            weight.device(),
        )?)
    };
    Ok((tensor(&a)?, tensor(&b)?))
}

/// s·B₀·A₀, what the frozen weight gives up to the adapter.
pub fn shift(a: &Tensor, b: &Tensor, s: f64) -> Result<Tensor> {
    Ok((b.matmul(a)? * s)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w() -> Tensor {
        let v: Vec<f32> = (0..24).map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0).collect();
        Tensor::from_vec(v, (4, 6), &Device::Cpu).unwrap()
    }

    fn diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    /// At full rank either start holds all of W: PiSSA's s·B₀·A₀ = W (its A₀ and B₀ are
    /// divided by s), OLoRA's B₀·A₀ = W (they are not, as in PEFT).
    #[test]
    fn full_rank_starts_give_back_the_weight() {
        for (init, s) in [(LoraInit::Pissa, 2.0), (LoraInit::Olora, 1.0)] {
            let (a, b) = start(init, &w(), 4, 2.0).unwrap();
            assert_eq!((a.dims(), b.dims()), (&[4, 6][..], &[4, 4][..]));
            let d = diff(&shift(&a, &b, s).unwrap(), &w());
            assert!(d < 1e-5, "{init:?}: {d}");
        }
    }

    /// PiSSA at rank r is W's best rank-r approximation: the residual's norm is the root
    /// of the sum of the remaining squared singular values, the smallest any rank-r part
    /// leaves; OLoRA's B₀ has orthonormal columns.
    #[test]
    fn pissa_takes_the_largest_part_and_olora_an_orthonormal_basis() {
        let (a, b) = start(LoraInit::Pissa, &w(), 2, 0.5).unwrap();
        let rest = (w() - shift(&a, &b, 0.5).unwrap()).unwrap();
        let m = DMatrix::from_row_slice(
            4,
            6,
            &w().flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|&x| x as f64)
                .collect::<Vec<_>>(),
        );
        let mut s: Vec<f64> = m.singular_values().iter().copied().collect();
        s.sort_by(|x, y| y.total_cmp(x));
        let tail = (s[2] * s[2] + s[3] * s[3]).sqrt();
        let norm = rest
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .sqrt();
        assert!((norm as f64 - tail).abs() < 1e-4, "{norm} vs {tail}");
        let (_, q) = start(LoraInit::Olora, &w(), 2, 2.0).unwrap();
        let qtq = q.t().unwrap().matmul(&q).unwrap();
        let eye = Tensor::eye(2, candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(diff(&qtq, &eye) < 1e-5);
    }
}
