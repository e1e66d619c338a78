//! The state of one forward pass (training or not, graph or not, dropout's mask keys) and
//! dropout itself, which is all that state is for.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::ops::Range;

use anyhow::Result;
use candle_core::{Tensor, TensorId, Var};

use crate::kernels::dropout;

/// Per-forward state: training (dropout on) or not, whether the forward records a graph
/// for a backward pass, and the seed of the dropout masks (candle's own CPU generator
/// cannot be seeded). Each dropout call gets the next key, so a run with the same seed
/// draws the same masks, whatever the thread count.
pub struct Ctx {
    train: bool,
    graph: bool,
    seed: u64,
    calls: Cell<u64>,
    precision: Precision,
    /// Where LayerNorms and biased linear layers leave what per-example gradients of their
    /// parameters are made of ([`Ctx::probing`]); None in every other forward.
    probes: Option<RefCell<Probes>>,
    /// A forward of a model stacked over several adapters (`stack.rs`): the batch rows of
    /// each part, in order; None in every other forward.
    segments: Option<Vec<Range<usize>>>,
}

/// What a probing forward left: the probes, and the tensors also used on an input the
/// batch shares (their per-example gradients cannot be had from probes).
#[derive(Default)]
pub struct Probes {
    pub list: Vec<Probe>,
    pub shared: Vec<TensorId>,
    /// The tensors whose per-example gradients are wanted: a layer with none of them
    /// among its own gets no probe (each costs a gradient of its output).
    wanted: HashSet<TensorId>,
}

/// What one layer left for per-example gradients: its output had `out`, a zero variable
/// of its shape, added, so the backward's gradient of `out` is the gradient of the output;
/// with the layer's input, each example's gradient of a LayerNorm's gain and bias or a
/// bias is a sum over its own tokens (as Opacus and BackPACK form per-sample gradients).
pub struct Probe {
    pub kind: ProbeKind,
    /// The layer's input: (batch, seq, width) for a token stream, (batch, width) for a
    /// pooled one, anything else (DeBERTa's relative embeddings) for an input shared by
    /// the batch, whose per-example gradients a probe cannot tell apart.
    pub input: Tensor,
    pub out: Var,
}

pub enum ProbeKind {
    /// Ids of the gain and bias tensors, and the layer's eps.
    LayerNorm {
        weight: TensorId,
        bias: TensorId,
        eps: f64,
    },
    /// Ids of a linear layer's weight and bias; the probe's input is what multiplies the
    /// weight, so example b's weight gradient is Σ_t dy_bt x_btᵀ.
    Linear {
        weight: TensorId,
        bias: Option<TensorId>,
    },
    /// Lookup tables summed into one output (word, token-type and position embeddings),
    /// each with the rows its tokens read, (batch, seq): example b's gradient of row r is
    /// the sum of dy_bt over its tokens that read r.
    Lookup { tables: Vec<(TensorId, Tensor)> },
}

impl ProbeKind {
    /// The tensors whose gradients the probe gives.
    pub fn ids(&self) -> Vec<TensorId> {
        match self {
            ProbeKind::LayerNorm { weight, bias, .. } => vec![*weight, *bias],
            ProbeKind::Linear { weight, bias } => std::iter::once(*weight).chain(*bias).collect(),
            ProbeKind::Lookup { tables } => tables.iter().map(|(id, _)| *id).collect(),
        }
    }
}

/// What the linear layers' and attention's products compute in (`--precision`). bf16 is
/// autocast's: bf16 inputs, f32 accumulation, f32 weights, gradients and optimizer state;
/// everything else (LayerNorm, softmax, GELU, the residual stream, the loss) stays f32.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

impl Ctx {
    /// Dropout off, a graph recorded (per-example Fisher takes gradients this way).
    pub fn eval() -> Self {
        Self {
            train: false,
            graph: true,
            seed: 0,
            calls: Cell::new(0),
            precision: Precision::F32,
            probes: None,
            segments: None,
        }
    }

    /// As [`Ctx::eval`] (dropout off, a graph), with probes on the layers that hold any
    /// of `wanted`: per-example Fisher in batches.
    pub fn probing(wanted: HashSet<TensorId>) -> Self {
        Self {
            probes: Some(RefCell::new(Probes {
                wanted,
                ..Probes::default()
            })),
            ..Self::eval()
        }
    }

    /// Whether this forward probes a layer holding `id`.
    pub fn probes(&self, id: TensorId) -> bool {
        self.probes
            .as_ref()
            .is_some_and(|p| p.borrow().wanted.contains(&id))
    }

    /// The probes this forward left, taken out.
    pub fn take_probes(&self) -> Probes {
        self.probes
            .as_ref()
            .map(|p| std::mem::take(&mut *p.borrow_mut()))
            .unwrap_or_default()
    }

    /// `y` with a probe of `kind` on it when probing for any of its tensors, else `y`.
    pub(crate) fn probe(&self, kind: ProbeKind, input: &Tensor, y: Tensor) -> Result<Tensor> {
        let Some(probes) = &self.probes else {
            return Ok(y);
        };
        if !kind
            .ids()
            .iter()
            .any(|id| probes.borrow().wanted.contains(id))
        {
            return Ok(y);
        }
        let out = Var::zeros(y.shape(), y.dtype(), y.device())?;
        let y = (y + out.as_tensor())?;
        probes.borrow_mut().list.push(Probe {
            kind,
            input: input.clone(),
            out,
        });
        Ok(y)
    }

    /// Say, when probing, that `tensors` also act on an input the batch shares.
    pub(crate) fn shared(&self, tensors: &[TensorId]) {
        if let Some(p) = &self.probes {
            p.borrow_mut().shared.extend_from_slice(tensors);
        }
    }

    /// Dropout off and no graph, as torch.no_grad: scoring and embedding. Even with
    /// trainable variables among the weights (an evaluation mid-training), nothing of the
    /// forward is kept for a backward pass.
    pub fn inference() -> Self {
        Self {
            graph: false,
            ..Self::eval()
        }
    }

    pub fn train(seed: u64) -> Self {
        Self {
            train: true,
            graph: true,
            seed,
            ..Self::eval()
        }
    }

    /// The same state with the products in `precision`.
    pub fn with_precision(self, precision: Precision) -> Self {
        Self { precision, ..self }
    }

    /// The same state over a batch whose rows `segments[i]` belong to part i of a stacked
    /// model ([`Model::stack`](super::Model::stack)).
    pub fn with_segments(self, segments: Vec<Range<usize>>) -> Self {
        Self {
            segments: Some(segments),
            ..self
        }
    }

    /// Each stacked part's rows, when the forward is of a stacked model.
    pub fn segments(&self) -> Option<&[Range<usize>]> {
        self.segments.as_deref()
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    pub fn records_graph(&self) -> bool {
        self.graph
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
        dropout::dropout(x, self.p, ctx.next_key())
    }

    /// Whether `forward` drops anything under `ctx`.
    pub fn active(&self, ctx: &Ctx) -> bool {
        ctx.train && self.p != 0.0
    }

    /// The mask `forward` would draw, for a fused op to apply itself (None: no dropout).
    pub(crate) fn op(&self, ctx: &Ctx) -> Option<dropout::DropoutOp> {
        (ctx.train && self.p != 0.0).then(|| dropout::DropoutOp::new(self.p, ctx.next_key()))
    }
}
