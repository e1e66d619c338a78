//! Low-rank adapters on a frozen linear layer: LoRA and InA.
//!
//! LoRA (Hu et al., 2021; as Hugging Face PEFT builds it): y = W₀x + b₀ + (α/r)·B·A·dropout(x),
//! or with rsLoRA (Kalajdzievski, 2023; PEFT's `use_rslora`) scaled by α/√r instead, so
//! that the update's size does not shrink as the rank grows,
//! A (r × in) Kaiming-uniform (bound 1/√in, torch's `kaiming_uniform_(a=√5)`), B (out × r)
//! zero, so an untrained adapter changes nothing.
//!
//! InA (Kang et al., "InA: Inhibition Adaption on pre-trained language models", Neural
//! Networks 178, 2024; code github.com/ChengKang520/inhibited-lora): the low-rank
//! activations h = dropout(x)·Aᵀ pass an inhibition before the up-projection:
//! th = Inh_p · max over the r channels of h (one threshold per token, gradient through the
//! max), y = W₀x + b₀ + (α/r)·B·f(h − th). The paper's text uses f = GELU on query and key;
//! the authors' current code uses f = LeakyReLU(0.01) on query, key and value and falls
//! back to plain LoRA (no f) when Inh_p = 0. Both are available.
//!
//! IA3 (Liu et al., 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper
//! than In-Context Learning"; as PEFT's `IA3Config` builds it): a learned vector per wrapped
//! layer, starting at one, that scales its output (key, value: y = (W₀x + b₀)·l) or, for
//! the feed-forward layers, its input (y = W₀(x·l) + b₀). PEFT's defaults for BERT wrap
//! `key`, `value` and `output.dense`, matched by suffix, so the attention's output dense
//! layer too; `feedforward_modules = ["output.dense"]` makes both dense output layers scale
//! their input. The vectors are `….ia3_l`, shaped as PEFT's: (out, 1) or (1, in).
//!
//! DoRA (Liu et al., 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation"; PEFT's
//! `use_dora`): LoRA's direction with a learned magnitude per output row,
//! y = m ⊙ (W₀ + s·B·A)x / ‖W₀ + s·B·A‖ + b₀, the row norms treated as constants in the
//! backward (the paper's section 4.3, as PEFT does) and m starting at ‖W₀‖, so that an
//! untrained adapter again changes nothing. PEFT computes it as a correction to the frozen
//! layer's output y₀: y₀ + (g − 1)·(y₀ − b₀) + g·s·B·A·x with g = m/‖W₀ + s·B·A‖; with
//! dropout on, x is the dropped input in both terms (PEFT's `lora_dropout` path).
//!
//! Parameters hang under the wrapped layer with PEFT's names:
//! `encoder.layer.0.attention.self.query.lora_A.weight`, `... .lora_B.weight`.

use anyhow::{bail, Result};
use candle_core::{Tensor, D};
use serde::{Deserialize, Serialize};

use super::ctx::{Ctx, Dropout};
use super::params::{Init, Path};
pub use super::principal::LoraInit;

/// Modules an adapter may wrap, by their path inside a layer. `in_proj` is DeBERTa v1's
/// fused query-key-value projection (`attention.self.in_proj`), which PEFT wraps whole.
pub const TARGETS: &[&str] = &[
    "query",
    "key",
    "value",
    "in_proj",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
];

/// Where bottleneck adapters sit (`model::bottleneck`), by the library's config that puts them there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// `SeqBnConfig`: after the feed-forward output, reading its normalised sum.
    Pfeiffer,
    /// `DoubleSeqBnConfig`: after the attention output and the feed-forward output.
    Houlsby,
}

impl Placement {
    /// Whether the sublayer at `rel` (`attention.output`, `output`) takes an adapter.
    pub fn adapts(self, rel: &str) -> bool {
        rel == "output" || (self == Placement::Houlsby && rel == "attention.output")
    }

    /// The library's default activation for it.
    pub fn activation(self) -> BnActivation {
        match self {
            Placement::Pfeiffer => BnActivation::Relu,
            Placement::Houlsby => BnActivation::Swish,
        }
    }
}

/// The activation between the projections (the library's `non_linearity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BnActivation {
    Relu,
    /// x·sigmoid(x) (torch's SiLU).
    Swish,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum InaActivation {
    Gelu,
    LeakyRelu,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum AdapterKind {
    Lora,
    Ina {
        inhibition: f64,
        activation: InaActivation,
    },
    /// Scaling vectors; r, alpha and dropout do not apply.
    Ia3,
    /// LoRA plus a magnitude vector, `….lora_magnitude_vector`.
    Dora,
    /// Interventions on layer outputs (`model::reft`), not on linear layers: `targets`
    /// are layers (`all` or indices), `r` the rank, at the first and last tokens.
    Loreft {
        first: usize,
        last: usize,
    },
    /// HRA's Householder reflections of a linear layer's input (`model::hra`), `r` of
    /// them.
    Hra,
    /// Prompt tuning: `tokens` learned embeddings before every sequence
    /// (`prompt_embeddings`), as PEFT's `PromptTuningConfig`.
    Prompt {
        tokens: usize,
    },
    /// AdaLoRA (Zhang et al., 2023): LoRA in SVD form, B·diag(E)·A with `r` the initial
    /// rank, whose singular values E a budget schedule zeroes during training
    /// (`methods::adalora`); `….lora_A`, `….lora_E`, `….lora_B` as PEFT names them.
    Adalora,
    /// Prefix tuning: `tokens` learned keys and values before every layer's own
    /// (`model::prefix`), computed through a projection of width `hidden` if given, as
    /// PEFT's `PrefixTuningConfig`.
    Prefix {
        tokens: usize,
        hidden: Option<usize>,
    },
    /// VeRA's trained scaling vectors around shared frozen projections drawn from `key`
    /// (`model::vera`), `r` wide; `max` the largest (in, out) among the wrapped layers,
    /// which the projections span (filled in when the model is built).
    Vera {
        key: u64,
        d_initial: f64,
        max: (usize, usize),
    },
    /// AdapterHub's bottleneck adapters in the layers' sublayers (`model::bottleneck`),
    /// `reduction` times narrower than the encoder.
    Bottleneck {
        reduction: usize,
        placement: Placement,
        activation: BnActivation,
    },
}

/// PEFT's IA3 targets for BERT-family models (matched by suffix, as PEFT matches them).
pub const IA3_TARGETS: &[&str] = &["key", "value", "output.dense"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    #[serde(flatten)]
    pub kind: AdapterKind,
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// From [`TARGETS`].
    pub targets: Vec<String>,
    /// Scale by alpha/√r (rsLoRA) rather than alpha/r.
    #[serde(default)]
    pub rslora: bool,
    /// How LoRA's A and B start (PEFT's `init_lora_weights`); None: PEFT's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<LoraInit>,
}

impl AdapterConfig {
    /// Whether the module at `rel` (its path inside a layer, e.g. `attention.self.query`)
    /// takes an adapter.
    pub fn wraps(&self, rel: &str) -> bool {
        self.targets.iter().any(|t| match self.kind {
            // PEFT matches IA3 targets by suffix: `output.dense` is both dense outputs.
            AdapterKind::Ia3 => rel == t || rel.ends_with(&format!(".{t}")),
            AdapterKind::Loreft { .. }
            | AdapterKind::Bottleneck { .. }
            | AdapterKind::Prompt { .. }
            | AdapterKind::Prefix { .. } => false,
            _ => rel == t || rel.strip_prefix("attention.self.") == Some(t.as_str()),
        })
    }

    /// VeRA's settings with the projections spanning `max` (in, out); others as they are.
    pub fn spanning(&self, max: (usize, usize)) -> Self {
        let mut out = self.clone();
        if let AdapterKind::Vera { key, d_initial, .. } = self.kind {
            out.kind = AdapterKind::Vera {
                key,
                d_initial,
                max,
            };
        }
        out
    }

    pub fn scale(&self) -> f64 {
        match self.rslora {
            true => self.alpha / (self.r as f64).sqrt(),
            false => self.alpha / self.r as f64,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Adapter {
    a: Tensor,
    b: Tensor,
    scale: f64,
    dropout: Dropout,
    kind: AdapterKind,
    /// DoRA's m, (out,).
    magnitude: Option<Tensor>,
    /// PiSSA's and OLoRA's s·B₀·A₀, taken out of the frozen weight (`principal.rs`).
    shift: Option<Tensor>,
    /// VeRA's λ_d (r,) and λ_b (out,); `a` and `b` are then its projections' slices.
    lambdas: Option<(Tensor, Tensor)>,
    /// AdaLoRA's singular values E (r, 1), between A and B.
    singular: Option<Tensor>,
}

impl Adapter {
    /// The adapter on the frozen `weight` (out × in) under `path`.
    pub fn load(path: &Path, weight: &Tensor, cfg: &AdapterConfig) -> Result<Self> {
        let (d_out, d_in) = weight.dims2()?;
        if let AdapterKind::Vera {
            key,
            d_initial,
            max,
        } = cfg.kind
        {
            return Self::vera(path, (d_in, d_out), cfg, key, d_initial, max);
        }
        if cfg.kind == AdapterKind::Adalora {
            return Self::adalora(path, (d_in, d_out), cfg);
        }
        // B·A has rank at most min(in, out): a larger r adds no capacity, only memory
        // (r = 10^8 on a 32-wide layer asks for 15 GB). Checked before A and B exist.
        if cfg.r > d_in.min(d_out) {
            let flag = match cfg.kind {
                AdapterKind::Ina { .. } => "--ina-r (ina_r)",
                _ => "--lora-r (lora_r)",
            };
            return Err(crate::error::user(format!(
                "{flag} {} is more than {}, the smaller side of `{}` ({d_out} × {d_in}): an \
                 adapter's update B·A has at most that rank",
                cfg.r,
                d_in.min(d_out),
                path.name("weight")
            )));
        }
        let bound = 1.0 / (d_in as f64).sqrt();
        let scale = cfg.scale();
        // PiSSA and OLoRA start from the weight; found again on every load, for the
        // residual the run trained on.
        let start = match cfg.init.filter(|i| i.from_weight()) {
            Some(init) => Some(super::principal::start(init, weight, cfg.r, scale)?),
            None => None,
        };
        let shift = match &start {
            Some((a, b)) => Some(super::principal::shift(a, b, scale)?),
            None => None,
        };
        let (a_init, b_init) = match &start {
            Some((a, b)) => (Start::Given(a.clone()), Start::Given(b.clone())),
            None => (
                match cfg.init {
                    Some(LoraInit::Gaussian) => Start::Init(Init::Normal(1.0 / cfg.r as f64)),
                    _ => Start::Init(Init::Uniform(bound)),
                },
                Start::Init(Init::Zeros),
            ),
        };
        let magnitude = match cfg.kind {
            // ‖W₀ + s·B·A‖ with B = 0 (PEFT's `update_layer`).
            AdapterKind::Dora => Some(path.get_or_compute(
                "lora_magnitude_vector",
                &[d_out],
                || Ok(row_norms(weight)?),
            )?),
            _ => None,
        };
        Ok(Self {
            magnitude,
            a: a_init.load(&path.pp("lora_A"), &[cfg.r, d_in])?,
            b: b_init.load(&path.pp("lora_B"), &[d_out, cfg.r])?,
            shift,
            lambdas: None,
            singular: None,
            scale,
            dropout: Dropout::new(cfg.dropout),
            kind: cfg.kind,
        })
    }

    /// VeRA on a layer of (in, out): its slices of the shared projections, its λ_d (from
    /// `d_initial`) and λ_b (from zero).
    fn vera(
        path: &Path,
        (d_in, d_out): (usize, usize),
        cfg: &AdapterConfig,
        key: u64,
        d_initial: f64,
        max: (usize, usize),
    ) -> Result<Self> {
        if max.0 < d_in || max.1 < d_out {
            bail!("VeRA's projections span {max:?}, less than this layer's ({d_in}, {d_out})");
        }
        let device = path.device();
        let (a, b) = super::vera::slices(key, cfg.r, max, (d_in, d_out), device)?;
        let lambda_d = path.get_or_compute("vera_lambda_d", &[cfg.r], || {
            Ok(Tensor::full(d_initial as f32, cfg.r, device)?)
        })?;
        let lambda_b = path.get_or_init("vera_lambda_b", &[d_out], Init::Zeros)?;
        Ok(Self {
            a,
            b,
            scale: 1.0,
            dropout: Dropout::new(cfg.dropout),
            kind: cfg.kind,
            magnitude: None,
            shift: None,
            lambdas: Some((lambda_d, lambda_b)),
            singular: None,
        })
    }

    /// AdaLoRA on a layer of (in, out), as PEFT's `SVDLinear`: A (r × in) and B (out × r)
    /// from N(0, 0.02²), E (r × 1) zero, scaled by alpha (r when alpha is 0) over r + 1e-5,
    /// r the initial rank, which masking does not change (PEFT's `ranknum`).
    fn adalora(path: &Path, (d_in, d_out): (usize, usize), cfg: &AdapterConfig) -> Result<Self> {
        let r = cfg.r;
        if r > d_in.min(d_out) {
            return Err(crate::error::user(format!(
                "--adalora-init-r {r} is more than {}, the smaller side of `{}` ({d_out} × \
                 {d_in}): B·diag(E)·A has at most that rank",
                d_in.min(d_out),
                path.name("weight")
            )));
        }
        let alpha = if cfg.alpha > 0.0 { cfg.alpha } else { r as f64 };
        Ok(Self {
            a: path.get_or_init("lora_A", &[r, d_in], Init::Normal(0.02))?,
            b: path.get_or_init("lora_B", &[d_out, r], Init::Normal(0.02))?,
            singular: Some(path.get_or_init("lora_E", &[r, 1], Init::Zeros)?),
            scale: alpha / (r as f64 + 1e-5),
            dropout: Dropout::new(cfg.dropout),
            kind: cfg.kind,
            magnitude: None,
            shift: None,
            lambdas: None,
        })
    }

    /// What the frozen weight gives up to the adapter (PiSSA, OLoRA): the layer runs on
    /// W − shift.
    pub fn shift(&self) -> Option<&Tensor> {
        self.shift.as_ref()
    }

    /// The wrapped layer's output: `y` = W₀x + b₀ (rows, out) plus the adapter's part.
    pub fn add_to(
        &self,
        x: &Tensor,
        y: Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        ctx: &Ctx,
    ) -> Result<Tensor> {
        let Some(m) = &self.magnitude else {
            return Ok((y + self.forward(x, ctx)?)?);
        };
        let dropped = self.dropout.active(ctx);
        let x = self.dropout.forward(x, ctx)?;
        let lora = x.matmul(&self.a.t()?)?.matmul(&self.b.t()?)?;
        // The norm of the adapted weight, detached: no gradient flows through it.
        let adapted = (weight + self.delta_weight()?.detach())?;
        let g = m.div(&row_norms(&adapted)?.detach())?.unsqueeze(0)?;
        // W₀x without the bias: from y when x is the layer's own input, else anew.
        let base = match (dropped, bias) {
            (true, _) => x.matmul(&weight.t()?)?,
            (false, Some(b)) => y.broadcast_sub(b)?,
            (false, None) => y.clone(),
        };
        let correction =
            (base.broadcast_mul(&(&g - 1.0)?)? + lora.broadcast_mul(&(g * self.scale)?)?)?;
        Ok((y + correction)?)
    }

    /// The adapter's contribution for `x` of shape (rows, in): (rows, out).
    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let h = self.dropout.forward(x, ctx)?.matmul(&self.a.t()?)?;
        if let Some((d, b)) = &self.lambdas {
            let h = h.broadcast_mul(d)?.matmul(&self.b.t()?)?;
            return Ok(h.broadcast_mul(b)?);
        }
        if let Some(e) = &self.singular {
            let h = h.broadcast_mul(&e.t()?)?;
            return Ok((h.matmul(&self.b.t()?)? * self.scale)?);
        }
        let h = match self.kind {
            AdapterKind::Ina {
                inhibition,
                activation,
            } if inhibition != 0.0 => {
                let th = (h.max_keepdim(D::Minus1)? * inhibition)?;
                let z = h.broadcast_sub(&th)?;
                match activation {
                    InaActivation::Gelu => z.gelu_erf()?,
                    InaActivation::LeakyRelu => leaky_relu(&z, 0.01)?,
                }
            }
            _ => h,
        };
        Ok((h.matmul(&self.b.t()?)? * self.scale)?)
    }

    /// (α/r)·B·A, what merging adds to W. InA's thresholded path has no such form.
    pub fn delta_weight(&self) -> Result<Tensor> {
        if let Some((d, b)) = &self.lambdas {
            return vera_delta(&self.a, &self.b, d, b);
        }
        if let Some(e) = &self.singular {
            return adalora_delta(&self.a, e, &self.b, self.scale);
        }
        match self.kind {
            AdapterKind::Ina { inhibition, .. } if inhibition != 0.0 => {
                bail!("an InA adapter (inhibition {inhibition}) is not linear and cannot be merged into its weight")
            }
            _ => Ok((self.b.matmul(&self.a)? * self.scale)?),
        }
    }
}

/// VeRA's ΔW = diag(λ_b)·B_s·diag(λ_d)·A_s, as PEFT's `get_delta_weight`.
pub fn vera_delta(a: &Tensor, b: &Tensor, d: &Tensor, lb: &Tensor) -> Result<Tensor> {
    let left = b.broadcast_mul(&lb.unsqueeze(1)?)?;
    let right = a.broadcast_mul(&d.unsqueeze(1)?)?;
    Ok(left.matmul(&right)?)
}

/// AdaLoRA's ΔW = s·B·(A ⊙ E), as PEFT's `get_delta_weight`.
pub fn adalora_delta(a: &Tensor, e: &Tensor, b: &Tensor, scale: f64) -> Result<Tensor> {
    Ok((b.matmul(&a.broadcast_mul(e)?)? * scale)?)
}

/// How a new A or B starts: drawn, or computed from the weight.
enum Start {
    Init(Init),
    Given(Tensor),
}

impl Start {
    fn load(self, path: &Path, shape: &[usize]) -> Result<Tensor> {
        match self {
            Start::Init(init) => path.get_or_init("weight", shape, init),
            Start::Given(t) => path.get_or_compute("weight", shape, || Ok(t)),
        }
    }
}

/// An IA3 vector on one linear layer.
#[derive(Debug, Clone)]
pub struct Ia3 {
    /// (out, 1) scaling the output, or (1, in) scaling the input.
    l: Tensor,
    input: bool,
}

impl Ia3 {
    /// `{path}.ia3_l`, ones when new. Dense output layers (`….output.dense`, the attention's
    /// and the feed-forward's) scale their input, as PEFT's `feedforward_modules` default.
    pub fn load(path: &Path, d_in: usize, d_out: usize) -> Result<Self> {
        let input = path.name("weight").ends_with("output.dense.weight");
        let shape = if input { [1, d_in] } else { [d_out, 1] };
        Ok(Self {
            l: path.get_or_init("ia3_l", &shape, Init::Ones)?,
            input,
        })
    }

    /// x·l for a layer that scales its input (rows, in); x otherwise.
    pub fn before(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self.input {
            true => x.broadcast_mul(&self.l)?,
            false => x.clone(),
        })
    }

    /// y·l for a layer that scales its output (rows, out); y otherwise.
    pub fn after(&self, y: &Tensor) -> Result<Tensor> {
        Ok(match self.input {
            true => y.clone(),
            false => y.broadcast_mul(&self.l.t()?)?,
        })
    }
}

/// The L2 norm of each row of a matrix (out, in): (out,).
pub fn row_norms(w: &Tensor) -> candle_core::Result<Tensor> {
    w.sqr()?.sum(1)?.sqrt()
}

fn leaky_relu(x: &Tensor, slope: f64) -> candle_core::Result<Tensor> {
    // max(x, 0) + slope·min(x, 0), both differentiable in candle.
    x.relu()? + (x.minimum(0.0)? * slope)?
}
