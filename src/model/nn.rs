//! The building blocks, each with a backward pass candle's autograd really records.
//!
//! candle's fused `LayerNorm` and `softmax_last_dim` record no backward op: gradients
//! upstream of them silently vanish. Everything here is composed of ops whose backward
//! candle implements; the golden gradient tests in `tests/it/parity.rs` hold it to that.

use anyhow::Result;
use candle_core::Tensor;

use super::activation::Activation;
use super::adapter::{Adapter, AdapterConfig, AdapterKind, Ia3};
pub use super::ctx::{Ctx, Dropout, Precision, Probe, ProbeKind, Probes};
use super::hra::Hra;
use super::params::{Init, Path};
use crate::kernels::{gelu, layernorm, linear};

/// y = x Wᵀ + b over the last dimension, W of shape (out, in) as in torch.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    // Boxed: most layers have none, and an adapter is several tensors.
    adapter: Option<Box<Adapter>>,
    ia3: Option<Ia3>,
    /// HRA's reflections of the input (`hra.rs`).
    hra: Option<Hra>,
    /// In a stacked model (`stack.rs`), each part's own layer; `weight` is then the one
    /// they share, if they do.
    parts: Option<Vec<Linear>>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight,
            bias,
            adapter: None,
            ia3: None,
            hra: None,
            parts: None,
        }
    }

    /// One layer over `parts` of a stacked model: the first part itself when none adds
    /// anything to the same weight and bias, else each part applied to its own rows.
    pub(crate) fn stack(parts: &[&Linear]) -> Result<Self> {
        let plain = |l: &&Linear| {
            l.adapter.is_none() && l.ia3.is_none() && l.hra.is_none() && l.parts.is_none()
        };
        if parts.iter().all(plain)
            && super::segments::same(parts.iter().map(|l| &l.weight))
            && super::segments::same_opt(parts.iter().map(|l| l.bias.as_ref()))
        {
            return Ok(parts[0].clone());
        }
        if parts.iter().any(|l| l.parts.is_some()) {
            anyhow::bail!("a stacked layer cannot be stacked again");
        }
        Ok(Self {
            parts: Some(parts.iter().map(|l| (*l).clone()).collect()),
            ..Self::new(parts[0].weight.clone(), None)
        })
    }

    /// Wrap with a LoRA or InA adapter under `path` (`….lora_A.weight`, `….lora_B.weight`),
    /// or an IA3 vector (`….ia3_l`).
    pub fn with_adapter(mut self, path: &Path, cfg: Option<&AdapterConfig>) -> Result<Self> {
        if let Some(cfg) = cfg {
            let (d_out, d_in) = self.weight.dims2()?;
            match cfg.kind {
                AdapterKind::Ia3 => self.ia3 = Some(Ia3::load(path, d_in, d_out)?),
                AdapterKind::Hra => self.hra = Some(Hra::load(path, d_in, cfg.r)?),
                _ => {
                    let adapter = Adapter::load(path, &self.weight, cfg)?;
                    // PiSSA and OLoRA: the layer keeps the residual W − s·B₀·A₀.
                    if let Some(shift) = adapter.shift() {
                        self.weight = (&self.weight - shift)?;
                    }
                    self.adapter = Some(Box::new(adapter));
                }
            }
        }
        Ok(self)
    }

    /// Whether each part of a stacked model applies its own.
    pub(crate) fn is_stacked(&self) -> bool {
        self.parts.is_some()
    }

    pub fn adapter(&self) -> Option<&Adapter> {
        self.adapter.as_deref()
    }

    /// Load `{path}.weight` and `{path}.bias` from the checkpoint.
    pub fn load(path: &Path, d_in: usize, d_out: usize) -> Result<Self> {
        let weight = path.get_matrix("weight", &[d_out, d_in])?;
        let bias = path.get("bias", &[d_out])?;
        Ok(Self::new(weight, Some(bias)))
    }

    /// Load `{path}.weight` of a layer built without bias (DeBERTa's `in_proj`, `pos_proj`,
    /// `embed_proj`).
    pub fn load_without_bias(path: &Path, d_in: usize, d_out: usize) -> Result<Self> {
        Ok(Self::new(path.get_matrix("weight", &[d_out, d_in])?, None))
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
        let y = self.forward_unprobed(x, ctx)?;
        self.probed(x, y, ctx)
    }

    /// The output with a probe on it when the forward probes (see [`Ctx::probing`]). With
    /// an adapter or IA3 vectors the output's gradient is not the weight product's (DoRA
    /// renormalises the weight, IA3 scales), so the layer's tensors are left to the
    /// one-example-at-a-time estimate.
    fn probed(&self, x: &Tensor, y: Tensor, ctx: &Ctx) -> Result<Tensor> {
        if self.adapter.is_some()
            || self.ia3.is_some()
            || self.hra.is_some()
            || self.parts.is_some()
        {
            self.mark_shared(ctx);
            return Ok(y);
        }
        let kind = ProbeKind::Linear {
            weight: self.weight.id(),
            bias: self.bias.as_ref().map(|b| b.id()),
        };
        ctx.probe(kind, x, y)
    }

    fn mark_shared(&self, ctx: &Ctx) {
        ctx.shared(&[self.weight.id()]);
        if let Some(b) = &self.bias {
            ctx.shared(&[b.id()]);
        }
    }

    /// Over an input the whole batch shares (DeBERTa's relative embeddings): no probe, and
    /// the layer's tensors marked as out of a probe's reach.
    pub fn forward_shared(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        if self.parts.is_some() {
            anyhow::bail!("a layer the stacked adapters hold apart, on an input they share");
        }
        self.mark_shared(ctx);
        self.forward_unprobed(x, ctx)
    }

    fn forward_unprobed(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let per_row = x.dims().iter().skip(1).rev().skip(1).product();
        self.on_rows(x, |x| match &self.parts {
            Some(parts) => self.stacked(parts, x, per_row, ctx),
            None => {
                let x = self.input(x)?;
                let y = self.product(&x, self.bias.as_ref(), ctx)?;
                self.output(&x, y, ctx)
            }
        })
    }

    /// The input as the weight reads it: HRA's reflection, IA3's scaling of it.
    fn input(&self, x: &Tensor) -> Result<Tensor> {
        let x = match &self.hra {
            Some(h) => h.reflect(x)?,
            None => x.clone(),
        };
        match &self.ia3 {
            Some(s) => s.before(&x),
            None => Ok(x),
        }
    }

    fn product(&self, x: &Tensor, bias: Option<&Tensor>, ctx: &Ctx) -> Result<Tensor> {
        match ctx.precision() {
            Precision::F32 => linear::linear(x, &self.weight, bias),
            Precision::Bf16 => linear::linear_bf16(x, &self.weight, bias),
        }
    }

    /// The output after the weight's product `y` of `x` (as [`input`](Self::input) made
    /// it): an adapter's part added, IA3's scaling of the output.
    fn output(&self, x: &Tensor, y: Tensor, ctx: &Ctx) -> Result<Tensor> {
        let y = match &self.adapter {
            Some(a) => a.add_to(x, y, &self.weight, self.bias.as_ref(), ctx)?,
            None => y,
        };
        match &self.ia3 {
            Some(s) => s.after(&y),
            None => Ok(y),
        }
    }

    /// A stacked layer on `x` (rows, in), `per_row` rows per batch row: one product for
    /// every row when the parts share their weight, then each part's bias and pieces on
    /// its own rows.
    fn stacked(&self, parts: &[Linear], x: &Tensor, per_row: usize, ctx: &Ctx) -> Result<Tensor> {
        if !super::segments::same(parts.iter().map(|l| &l.weight)) {
            // PiSSA's or OLoRA's residual weights: nothing to share.
            return super::segments::per_segment(parts, &[x], per_row, ctx, |l, xs| {
                let x = l.input(&xs[0])?;
                let y = l.product(&x, l.bias.as_ref(), ctx)?;
                l.output(&x, y, ctx)
            });
        }
        let transforms = parts.iter().any(|l| l.hra.is_some() || l.ia3.is_some());
        let input = match transforms {
            true => {
                super::segments::per_segment(parts, &[x], per_row, ctx, |l, xs| l.input(&xs[0]))?
            }
            false => x.clone(),
        };
        let y = self.product(&input, None, ctx)?;
        super::segments::per_segment(parts, &[&input, &y], per_row, ctx, |l, xs| {
            let y = match &l.bias {
                Some(b) => xs[1].broadcast_add(b)?,
                None => xs[1].clone(),
            };
            l.output(&xs[0], y, ctx)
        })
    }

    /// forward(act(z)), with exact GELU inside the linear op where nothing else needs
    /// act(z) (no adapter, no probe on the weight's input), so that it is never stored.
    pub fn forward_after(&self, z: &Tensor, act: Activation, ctx: &Ctx) -> Result<Tensor> {
        match (&self.adapter, act, &self.bias) {
            (None, Activation::Gelu, Some(b))
                if self.ia3.is_none()
                    && self.hra.is_none()
                    && self.parts.is_none()
                    && ctx.precision() == Precision::F32
                    && !ctx.probes(self.weight.id()) =>
            {
                let y = self.on_rows(z, |z| linear::gelu_linear(z, &self.weight, b))?;
                // Only the bias's gradients can be wanted of this probe: its input, z
                // rather than act(z), is never read.
                self.probed(z, y, ctx)
            }
            _ => self.forward(&activate(z, act)?, ctx),
        }
    }

    /// Fold leading dims into one so that each product is a single 2-D gemm against Wᵀ (a
    /// strided view, no copy) instead of a batched matmul with a broadcast weight.
    fn on_rows(&self, x: &Tensor, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
        let Some((&d_in, lead)) = x.dims().split_last() else {
            anyhow::bail!(
                "linear: a scalar input; expected (..., {})",
                self.weight.dim(1)?
            );
        };
        let rows: usize = lead.iter().product();
        let y = f(&x.reshape((rows, d_in))?)?;
        let mut out = lead.to_vec();
        out.push(self.weight.dim(0)?);
        Ok(y.reshape(out)?)
    }
}

/// LayerNorm over the last dimension, written out so its backward is recorded.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
    /// In a stacked model, each part's own, applied to its rows.
    parts: Option<Vec<LayerNorm>>,
}

impl LayerNorm {
    pub fn new(weight: Tensor, bias: Tensor, eps: f64) -> Self {
        Self {
            weight,
            bias,
            eps,
            parts: None,
        }
    }

    /// One LayerNorm over `parts` of a stacked model: shared when they hold the same gain
    /// and bias, else each part's on its rows.
    pub(crate) fn stack(parts: &[&LayerNorm]) -> Result<Self> {
        if parts.iter().any(|l| l.parts.is_some()) {
            anyhow::bail!("a stacked LayerNorm cannot be stacked again");
        }
        let mut out = parts[0].clone();
        if !(super::segments::same(parts.iter().map(|l| &l.weight))
            && super::segments::same(parts.iter().map(|l| &l.bias)))
        {
            out.parts = Some(parts.iter().map(|l| (*l).clone()).collect());
        }
        Ok(out)
    }

    /// The gain and the bias.
    pub(crate) fn tensors(&self) -> [&Tensor; 2] {
        [&self.weight, &self.bias]
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
    /// Over an input the whole batch shares (DeBERTa's relative embeddings): no probe,
    /// since no example's gradient can be told apart there.
    pub fn forward_shared(&self, x: &Tensor) -> Result<Tensor> {
        if self.parts.is_some() {
            anyhow::bail!("a LayerNorm the stacked adapters hold apart, on an input they share");
        }
        layernorm::layer_norm(x, &self.weight, &self.bias, self.eps)
    }

    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        if let Some(parts) = &self.parts {
            return super::segments::per_segment(parts, &[x], 1, ctx, |l, xs| {
                l.forward_shared(&xs[0])
            });
        }
        let y = self.forward_shared(x)?;
        let kind = ProbeKind::LayerNorm {
            weight: self.weight.id(),
            bias: self.bias.id(),
            eps: self.eps,
        };
        ctx.probe(kind, x, y)
    }
}

pub fn activate(x: &Tensor, act: Activation) -> Result<Tensor> {
    match act {
        Activation::Gelu => gelu::gelu_erf(x),
        Activation::GeluTanh => Ok(x.gelu()?),
        Activation::Relu => Ok(x.relu()?),
        Activation::Tanh => Ok(x.tanh()?),
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
    fn layer_norm_refuses_an_input_its_gain_and_bias_do_not_fit() {
        let dev = &Device::Cpu;
        let t = |shape: &[usize]| Tensor::ones(shape, DType::F32, dev).unwrap();
        let ln = LayerNorm::new(t(&[4]), t(&[4]), 1e-12);
        // The kernel wrote rows of 4: 8 of these 10 outputs, the rest uninitialised.
        let err = ln.forward_shared(&t(&[2, 5])).unwrap_err().to_string();
        assert!(err.contains("[2, 5]") && err.contains("[4]"), "{err}");
        // As many elements as two rows of 4, in rows of 8: normalised over the wrong rows.
        assert!(ln.forward_shared(&t(&[2, 8])).is_err());
        assert!(ln.forward_shared(&Tensor::new(1f32, dev).unwrap()).is_err());
        // A bias shorter than the gain left each row's tail unwritten.
        let short_bias = LayerNorm::new(t(&[5]), t(&[4]), 1e-12);
        assert!(short_bias.forward_shared(&t(&[2, 5])).is_err());
        let empty = LayerNorm::new(t(&[0]), t(&[0]), 1e-12);
        assert!(empty.forward_shared(&t(&[2, 0])).is_err());
        // A gain of another dtype, and one that trains (the recording path).
        let f64_gain = LayerNorm::new(Tensor::ones(4, DType::F64, dev).unwrap(), t(&[4]), 1e-12);
        assert!(f64_gain.forward_shared(&t(&[2, 4])).is_err());
        let var = candle_core::Var::ones(4, DType::F32, dev).unwrap();
        let trained = LayerNorm::new(var.as_tensor().clone(), t(&[4]), 1e-12);
        assert!(trained.forward_shared(&t(&[3, 5])).is_err());
        assert_eq!(trained.forward_shared(&t(&[3, 4])).unwrap().dims(), &[3, 4]);
        // A non-contiguous gain is made contiguous, not refused.
        let strided = Tensor::ones((4, 2), DType::F32, dev).unwrap();
        let ln = LayerNorm::new(
            strided.narrow(1, 0, 1).unwrap().squeeze(1).unwrap(),
            t(&[4]),
            1e-12,
        );
        assert_eq!(ln.forward_shared(&t(&[2, 4])).unwrap().dims(), &[2, 4]);
    }

    #[test]
    fn linear_refuses_inputs_of_another_width_and_scalars() {
        let dev = &Device::Cpu;
        let lin = Linear::new(
            Tensor::ones((3, 2), DType::F32, dev).unwrap(),
            Some(Tensor::zeros(3, DType::F32, dev).unwrap()),
        );
        let x = Tensor::ones((4, 5), DType::F32, dev).unwrap();
        assert!(lin.forward(&x, &Ctx::eval()).is_err());
        let z = Tensor::ones((4, 5), DType::F32, dev).unwrap();
        assert!(lin
            .forward_after(&z, Activation::Gelu, &Ctx::eval())
            .is_err());
        let scalar = Tensor::new(1f32, dev).unwrap();
        assert!(lin.forward(&scalar, &Ctx::eval()).is_err());
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
