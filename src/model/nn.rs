//! The building blocks, each with a backward pass candle's autograd really records.
//!
//! candle's fused `LayerNorm` and `softmax_last_dim` record no backward op: gradients
//! upstream of them silently vanish. Everything here is composed of ops whose backward
//! candle implements; the golden gradient tests in `tests/parity.rs` hold it to that.

use std::cell::RefCell;

use anyhow::Result;
use candle_core::{Device, Module, Tensor, D};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::config::Activation;
use super::params::{Init, Path};

/// Per-forward state: training or inference, and the seeded source of dropout masks
/// (candle's own CPU generator cannot be seeded).
pub struct Ctx {
    train: bool,
    rng: RefCell<StdRng>,
}

impl Ctx {
    pub fn eval() -> Self {
        Self {
            train: false,
            rng: RefCell::new(StdRng::seed_from_u64(0)),
        }
    }

    pub fn train(seed: u64) -> Self {
        Self {
            train: true,
            rng: RefCell::new(StdRng::seed_from_u64(seed)),
        }
    }

    pub fn is_train(&self) -> bool {
        self.train
    }

    /// A dropout mask: 0 with probability p, else 1/(1-p), as torch's inverted dropout.
    fn dropout_mask(&self, shape: &[usize], p: f64, device: &Device) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let keep = 1.0 - p;
        let scale = (1.0 / keep) as f32;
        let mut rng = self.rng.borrow_mut();
        let data: Vec<f32> = (0..n)
            .map(|_| {
                if rng.random::<f64>() < keep {
                    scale
                } else {
                    0.0
                }
            })
            .collect();
        Ok(Tensor::from_vec(data, shape, device)?)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Dropout {
    p: f64,
}

impl Dropout {
    pub fn new(p: f64) -> Self {
        Self { p }
    }

    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        if !ctx.train || self.p == 0.0 {
            return Ok(x.clone());
        }
        let mask = ctx.dropout_mask(x.dims(), self.p, x.device())?;
        Ok((x * mask)?)
    }
}

/// y = x Wᵀ + b over the last dimension, W of shape (out, in) as in torch.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    /// Load `{path}.weight` and `{path}.bias` from the checkpoint.
    pub fn load(path: &Path, d_in: usize, d_out: usize) -> Result<Self> {
        let weight = path.get("weight", &[d_out, d_in])?;
        let bias = path.get("bias", &[d_out])?;
        Ok(Self::new(weight, Some(bias)))
    }

    /// Load if present, else initialise as transformers does for a new head.
    pub fn load_or_init(path: &Path, d_in: usize, d_out: usize, std: f64) -> Result<Self> {
        let weight = path.get_or_init("weight", &[d_out, d_in], Init::Normal(std))?;
        let bias = path.get_or_init("bias", &[d_out], Init::Zeros)?;
        Ok(Self::new(weight, Some(bias)))
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // Fold leading dims into one so candle runs a single 2-D gemm against Wᵀ
        // (a strided view, no copy) instead of a batched matmul with a broadcast weight.
        let dims = x.dims().to_vec();
        let d_in = dims[dims.len() - 1];
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let y = x.reshape((rows, d_in))?.matmul(&self.weight.t()?)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out = dims;
        let last = out.len() - 1;
        out[last] = self.weight.dim(0)?;
        y.reshape(out)
    }
}

/// LayerNorm over the last dimension, written out so its backward is recorded.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub fn new(weight: Tensor, bias: Tensor, eps: f64) -> Self {
        Self { weight, bias, eps }
    }

    pub fn load(path: &Path, size: usize, eps: f64) -> Result<Self> {
        Ok(Self::new(
            path.get("weight", &[size])?,
            path.get("bias", &[size])?,
            eps,
        ))
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let xn = xc.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        xn.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)
    }
}

/// Softmax over the last dimension. The max is detached: softmax is shift-invariant, so
/// its gradient through the max is zero, and detaching skips that work.
pub fn softmax_last(x: &Tensor) -> candle_core::Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&sum)
}

pub fn activate(x: &Tensor, act: Activation) -> candle_core::Result<Tensor> {
    match act {
        Activation::Gelu => x.gelu_erf(),
        Activation::GeluTanh => x.gelu(),
        Activation::Relu => x.relu(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Var};

    #[test]
    fn dropout_is_identity_in_eval_and_seeded_in_train() {
        let x = Tensor::ones((64, 64), DType::F32, &Device::Cpu).unwrap();
        let d = Dropout::new(0.25);
        let y = d.forward(&x, &Ctx::eval()).unwrap();
        assert_eq!(y.sum_all().unwrap().to_scalar::<f32>().unwrap(), 4096.0);
        let a = d
            .forward(&x, &Ctx::train(3))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let b = d
            .forward(&x, &Ctx::train(3))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(a, b);
        let zeros = a.iter().filter(|v| **v == 0.0).count() as f64 / 4096.0;
        assert!((zeros - 0.25).abs() < 0.03, "dropped {zeros}");
        assert!(a.iter().all(|v| *v == 0.0 || (*v - 4.0 / 3.0).abs() < 1e-6));
    }

    #[test]
    fn layer_norm_and_softmax_propagate_gradients() {
        // The fused candle versions return no gradient for x; ours must.
        let x = Var::from_tensor(
            &Tensor::new(&[[1.0f32, 2.0, 4.0], [0.5, -1.0, 3.0]], &Device::Cpu).unwrap(),
        )
        .unwrap();
        let ln = LayerNorm::new(
            Tensor::new(&[1.0f32, 2.0, 3.0], &Device::Cpu).unwrap(),
            Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
            1e-5,
        );
        let w = Tensor::new(&[[1.0f32, -2.0, 0.5], [0.3, 0.2, -0.1]], &Device::Cpu).unwrap();
        let loss = (softmax_last(&ln.forward(x.as_tensor()).unwrap()).unwrap() * &w)
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let g = grads.get(x.as_tensor()).expect("no gradient reached x");
        // Finite differences on the first element.
        let f = |x0: f32| {
            let mut v = x.as_tensor().to_vec2::<f32>().unwrap();
            v[0][0] = x0;
            let t = Tensor::new(v, &Device::Cpu).unwrap();
            (softmax_last(&ln.forward(&t).unwrap()).unwrap() * &w)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let h = 1e-3;
        let fd = (f(1.0 + h) - f(1.0 - h)) / (2.0 * h);
        let an = g.to_vec2::<f32>().unwrap()[0][0];
        assert!(
            (fd - an).abs() < 1e-2 * fd.abs().max(1.0),
            "fd {fd} analytic {an}"
        );
    }

    #[test]
    fn linear_matches_hand_computation() {
        let w = Tensor::new(&[[1.0f32, 2.0], [3.0, 4.0], [5.0, 6.0]], &Device::Cpu).unwrap();
        let b = Tensor::new(&[0.5f32, 0.0, -1.0], &Device::Cpu).unwrap();
        let x = Tensor::new(&[[[1.0f32, 1.0]], [[2.0, -1.0]]], &Device::Cpu).unwrap();
        let y = Linear::new(w, Some(b)).forward(&x).unwrap();
        assert_eq!(y.dims(), &[2, 1, 3]);
        assert_eq!(
            y.to_vec3::<f32>().unwrap(),
            vec![vec![vec![3.5, 7.0, 10.0]], vec![vec![0.5, 2.0, 3.0]]]
        );
    }
}
