//! The state of one forward pass (training or not, graph or not, dropout's mask keys) and
//! dropout itself, which is all that state is for.

use std::cell::Cell;

use anyhow::Result;
use candle_core::Tensor;

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
