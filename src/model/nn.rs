//! The building blocks, each with a backward pass candle's autograd really records.
//!
//! candle's fused `LayerNorm` and `softmax_last_dim` record no backward op: gradients
//! upstream of them silently vanish. Everything here is composed of ops whose backward
//! candle implements; the golden gradient tests in `tests/parity.rs` hold it to that.

use std::cell::Cell;

use anyhow::Result;
use candle_core::Tensor;

use super::adapter::{Adapter, AdapterConfig};
use super::config::Activation;
use super::ops;
use super::params::{Init, Path};

/// Per-forward state: training or inference, and the seed of the dropout masks (candle's
/// own CPU generator cannot be seeded). Each dropout call gets the next key, so a run with
/// the same seed draws the same masks, whatever the thread count.
pub struct Ctx {
    train: bool,
    seed: u64,
    calls: Cell<u64>,
}

impl Ctx {
    pub fn eval() -> Self {
        Self {
            train: false,
            seed: 0,
            calls: Cell::new(0),
        }
    }

    pub fn train(seed: u64) -> Self {
        Self {
            train: true,
            seed,
            calls: Cell::new(0),
        }
    }

    pub fn is_train(&self) -> bool {
        self.train
    }

    /// Dropout draws so far: with the seed, all a resumed run needs to draw the same masks.
    pub fn calls(&self) -> u64 {
        self.calls.get()
    }

    pub fn set_calls(&self, calls: u64) {
        self.calls.set(calls);
    }

    fn next_key(&self) -> u64 {
        let n = self.calls.get();
        self.calls.set(n + 1);
        self.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ n
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
        ops::dropout(x, self.p, ctx.next_key())
    }

    /// The mask `forward` would draw, for a fused op to apply itself (None: no dropout).
    pub(crate) fn op(&self, ctx: &Ctx) -> Option<ops::DropoutOp> {
        (ctx.train && self.p != 0.0).then(|| ops::DropoutOp::new(self.p, ctx.next_key()))
    }
}

/// y = x Wᵀ + b over the last dimension, W of shape (out, in) as in torch.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    adapter: Option<Adapter>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight,
            bias,
            adapter: None,
        }
    }

    /// Wrap with a LoRA or InA adapter under `path` (`….lora_A.weight`, `….lora_B.weight`).
    pub fn with_adapter(mut self, path: &Path, cfg: Option<&AdapterConfig>) -> Result<Self> {
        if let Some(cfg) = cfg {
            let (d_out, d_in) = self.weight.dims2()?;
            self.adapter = Some(Adapter::load(path, d_in, d_out, cfg)?);
        }
        Ok(self)
    }

    pub fn adapter(&self) -> Option<&Adapter> {
        self.adapter.as_ref()
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

impl Linear {
    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        self.on_rows(x, |x| {
            let y = ops::linear(x, &self.weight, self.bias.as_ref())?;
            Ok(match &self.adapter {
                Some(a) => (y + a.forward(x, ctx)?)?,
                None => y,
            })
        })
    }

    /// forward(act(z)), with exact GELU inside the linear op where nothing else needs
    /// act(z) (no adapter), so that it is never stored.
    pub fn forward_after(&self, z: &Tensor, act: Activation, ctx: &Ctx) -> Result<Tensor> {
        match (&self.adapter, act, &self.bias) {
            (None, Activation::Gelu, Some(b)) => {
                self.on_rows(z, |z| ops::gelu_linear(z, &self.weight, b))
            }
            _ => self.forward(&activate(z, act)?, ctx),
        }
    }

    /// Fold leading dims into one so that each product is a single 2-D gemm against Wᵀ (a
    /// strided view, no copy) instead of a batched matmul with a broadcast weight.
    fn on_rows(&self, x: &Tensor, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let d_in = dims[dims.len() - 1];
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let y = f(&x.reshape((rows, d_in))?)?;
        let mut out = dims;
        let last = out.len() - 1;
        out[last] = self.weight.dim(0)?;
        Ok(y.reshape(out)?)
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

impl LayerNorm {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

pub fn activate(x: &Tensor, act: Activation) -> Result<Tensor> {
    match act {
        Activation::Gelu => ops::gelu_erf(x),
        Activation::GeluTanh => Ok(x.gelu()?),
        Activation::Relu => Ok(x.relu()?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

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
    fn linear_matches_hand_computation() {
        let w = Tensor::new(&[[1.0f32, 2.0], [3.0, 4.0], [5.0, 6.0]], &Device::Cpu).unwrap();
        let b = Tensor::new(&[0.5f32, 0.0, -1.0], &Device::Cpu).unwrap();
        let x = Tensor::new(&[[[1.0f32, 1.0]], [[2.0, -1.0]]], &Device::Cpu).unwrap();
        let y = Linear::new(w, Some(b)).forward(&x, &Ctx::eval()).unwrap();
        assert_eq!(y.dims(), &[2, 1, 3]);
        assert_eq!(
            y.to_vec3::<f32>().unwrap(),
            vec![vec![vec![3.5, 7.0, 10.0]], vec![vec![0.5, 2.0, 3.0]]]
        );
    }
}
