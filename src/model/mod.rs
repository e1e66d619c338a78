//! Our BERT/RoBERTa/ELECTRA/DeBERTa encoder, its heads, and checkpoint loading.
//!
//! Every parameter is fetched by its Hugging Face name through a [`ParamStore`], which
//! hands out a frozen tensor or a trainable variable; nothing here knows which.

mod activation;
pub mod adapter;
pub mod adapters;
pub mod config;
mod ctx;
pub mod deberta;
mod disentangled;
mod embeddings;
pub mod family;
mod heads;
pub mod hub;
mod layer;
pub mod load;
pub mod nn;
pub mod params;
mod pickle;
mod recompute;
pub mod reft;
pub mod relative;
pub mod xlnet;

use std::path::Path as FsPath;

use anyhow::Result;
use candle_core::{Device, Tensor};

pub use crate::kernels::with_composed_ops;
pub use adapter::{AdapterConfig, AdapterKind, InaActivation};
pub use config::{Activation, Arch, ModelConfig};
use family::{CLASSIFIER, SPAN_HEAD};
pub use heads::{HeadKind, INIT_STD};
pub use nn::{Ctx, Precision};
pub use params::{Init, ParamStore, Path};

use embeddings::Embeddings;
use heads::{Head, Pooler};
use layer::Layer;
use relative::RelativeEmbeddings;

/// A padded batch of token ids, as the model consumes it.
#[derive(Debug, Clone)]
pub struct Batch {
    /// (batch, seq) u32
    pub input_ids: Tensor,
    /// (batch, seq) u32
    pub token_type_ids: Tensor,
    /// (batch, seq) f32: 1 for real tokens, 0 for padding
    pub attention_mask: Tensor,
}

impl Batch {
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(Self {
            input_ids: self.input_ids.to_device(device)?,
            token_type_ids: self.token_type_ids.to_device(device)?,
            attention_mask: self.attention_mask.to_device(device)?,
        })
    }

    pub fn size(&self) -> usize {
        self.input_ids.dims()[0]
    }
}

/// What a forward pass produced.
pub struct Output {
    pub last_hidden_state: Tensor,
    pub pooled: Option<Tensor>,
    pub logits: Option<Tensor>,
}

pub struct Model {
    config: ModelConfig,
    embeddings: Embeddings,
    /// ELECTRA's projection from narrower embeddings to the encoder's width.
    project: Option<nn::Linear>,
    layers: Vec<Layer>,
    /// LoReFT's tokens, and its interventions after each layer (empty without LoReFT).
    positions: Option<reft::Positions>,
    interventions: Vec<Vec<reft::Loreft>>,
    /// DeBERTa's relative position embeddings, shared by every layer.
    relative: Option<RelativeEmbeddings>,
    pooler: Option<Pooler>,
    head: Option<Head>,
}

impl Model {
    /// Build the encoder, and a head with `num_labels` outputs if asked (1 = regression).
    /// BERT's pooler is loaded when the checkpoint has one or a head needs it.
    pub fn load(store: &ParamStore, cfg: &ModelConfig, num_labels: Option<usize>) -> Result<Self> {
        Self::load_with_adapters(store, cfg, num_labels.map(HeadKind::Classes), None)
    }

    /// As [`Model::load`], with LoRA or InA adapters on the targeted linear layers.
    pub fn load_with_adapters(
        store: &ParamStore,
        cfg: &ModelConfig,
        head: Option<HeadKind>,
        adapters: Option<&AdapterConfig>,
    ) -> Result<Self> {
        if let Some(a) = adapters.filter(|a| !matches!(a.kind, AdapterKind::Loreft { .. })) {
            for t in &a.targets {
                cfg.model_type
                    .adapter_module(t)
                    .map_err(crate::error::user)?;
            }
        }
        let root = store.root();
        let embeddings = Embeddings::load(&root.pp("embeddings"), cfg)?;
        let (e, h) = (cfg.embedding_width(), cfg.hidden_size);
        // DeBERTa projects inside its embeddings (embed_proj), before their LayerNorm.
        let project = (e != h && !cfg.model_type.is_deberta())
            .then(|| nn::Linear::load(&root.pp("embeddings_project"), e, h))
            .transpose()?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::load(&root.pp(format!("encoder.layer.{i}")), cfg, adapters))
            .collect::<Result<Vec<_>>>()?;
        let (positions, interventions) = match adapters.map(|a| (a, a.kind)) {
            Some((a, AdapterKind::Loreft { first, last })) => {
                let positions = reft::Positions { first, last };
                let n = cfg.num_hidden_layers;
                (
                    Some(positions),
                    reft::load_layers(&root, n, h, a, positions)?,
                )
            }
            _ => (None, vec![Vec::new(); cfg.num_hidden_layers]),
        };
        let relative = match cfg.deberta.as_ref().and_then(|d| d.relative) {
            Some(r) => Some(RelativeEmbeddings::load(
                &root.pp("encoder"),
                r,
                h,
                cfg.layer_norm_eps,
            )?),
            None => None,
        };
        let wants_pooler =
            cfg.model_type.classifier_reads_pooler() && matches!(head, Some(HeadKind::Classes(_)));
        let pooler = if wants_pooler
            || (head != Some(HeadKind::Span) && root.contains("pooler.dense.weight"))
        {
            Some(Pooler::load(&root.pp("pooler"), cfg)?)
        } else {
            None
        };
        let head = head.map(|k| Head::load(&root, cfg, k)).transpose()?;
        Ok(Self {
            config: cfg.clone(),
            embeddings,
            project,
            layers,
            positions,
            interventions,
            relative,
            pooler,
            head,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Outputs of the classification head, if the model has one.
    pub fn num_labels(&self) -> Option<usize> {
        match self.head_kind()? {
            HeadKind::Classes(n) => Some(n),
            HeadKind::Span => None,
        }
    }

    pub fn head_kind(&self) -> Option<HeadKind> {
        self.head.as_ref().map(Head::kind)
    }

    pub fn forward(&self, batch: &Batch, ctx: &Ctx) -> Result<Output> {
        if !ctx.records_graph() {
            return crate::kernels::without_graph(|| self.forward_tracked(batch, ctx));
        }
        self.forward_tracked(batch, ctx)
    }

    fn forward_tracked(&self, batch: &Batch, ctx: &Ctx) -> Result<Output> {
        let mask = &batch.attention_mask;
        let mut x = self.embed(batch, ctx)?;
        let edited = self.edited(mask)?;
        let positions = self.relative_positions(&x)?;
        for i in 0..self.layers.len() {
            x = self.layer(i, &x, mask, positions.as_ref(), &edited, ctx)?;
        }
        let (pooled, logits) = self.top(&x, ctx)?;
        Ok(Output {
            last_hidden_state: x,
            pooled,
            logits,
        })
    }

    /// The embeddings, projected to the encoder's width where they differ (ELECTRA).
    fn embed(&self, batch: &Batch, ctx: &Ctx) -> Result<Tensor> {
        let x = self.embeddings.forward(
            &batch.input_ids,
            &batch.token_type_ids,
            &batch.attention_mask,
            ctx,
        )?;
        match &self.project {
            Some(p) => p.forward(&x, ctx),
            None => Ok(x),
        }
    }

    /// LoReFT's masks of edited tokens per group (none without LoReFT).
    fn edited(&self, mask: &Tensor) -> Result<Vec<reft::Edited>> {
        match self.positions {
            Some(p) => p.masks(mask),
            None => Ok(Vec::new()),
        }
    }

    /// DeBERTa's relative position embeddings for `x`'s length (None for other families).
    fn relative_positions(&self, x: &Tensor) -> Result<Option<relative::Positions>> {
        self.relative
            .as_ref()
            .map(|r| r.positions(x.dim(1)?, x.device()))
            .transpose()
    }

    /// Encoder layer `i` on `x`, then its LoReFT interventions.
    fn layer(
        &self,
        i: usize,
        x: &Tensor,
        mask: &Tensor,
        positions: Option<&relative::Positions>,
        edited: &[reft::Edited],
        ctx: &Ctx,
    ) -> Result<Tensor> {
        let mut x = self.layers[i].forward(x, mask, positions, ctx)?;
        for iv in &self.interventions[i] {
            let at = edited
                .iter()
                .find(|e| e.group == iv.group())
                .ok_or_else(|| anyhow::anyhow!("no positions for loreft {}", iv.group()))?;
            x = iv.forward(&x, at, ctx)?;
        }
        Ok(x)
    }

    /// The pooler and head on the last hidden state: (pooled, logits).
    fn top(&self, x: &Tensor, ctx: &Ctx) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let pooled = self
            .pooler
            .as_ref()
            .map(|p| p.forward(x, ctx))
            .transpose()?;
        let logits = self
            .head
            .as_ref()
            .map(|h| h.forward(x, pooled.as_ref(), ctx))
            .transpose()?;
        Ok((pooled, logits))
    }

    /// Logits of the task head: (batch, num_labels), or (batch, seq, 2) for spans.
    pub fn logits(&self, batch: &Batch, ctx: &Ctx) -> Result<Tensor> {
        self.forward(batch, ctx)?
            .logits
            .ok_or_else(|| anyhow::anyhow!("the model was built without a task head"))
    }
}

/// Read config and weights of a model directory; the tensors stay on the CPU.
pub fn read_checkpoint(
    dir: &FsPath,
) -> Result<(ModelConfig, std::collections::HashMap<String, Tensor>)> {
    if !dir.is_dir() {
        return Err(crate::error::user(format!(
            "model directory {} does not exist",
            dir.display()
        )));
    }
    let cfg = ModelConfig::load(dir)?;
    let mut weights = load::read_weights(dir, cfg.model_type)?;
    // Tables the config turns off (DeBERTa checkpoints may still hold them) would be
    // parameters no forward reads, yet methods would select and count them.
    weights.retain(|name, _| !cfg.leaves_out(name));
    Ok((cfg, weights))
}

/// Remove every head tensor (classifier or span head), so the task model builds a new one.
pub fn drop_head(weights: &mut std::collections::HashMap<String, Tensor>) {
    weights.retain(|k, _| !k.starts_with(CLASSIFIER) && !k.starts_with(SPAN_HEAD));
}

/// Fit a checkpoint's head tensors to the `head` a run builds: tensors of another kind of
/// head go (a classifier and the pooler under a question-answering head, which has
/// neither; `qa_outputs` under a classifier), and so does a head of the right kind made for
/// another number of outputs, so that a fresh one is initialised (transformers'
/// `ignore_mismatched_sizes`). Returns whether it dropped a head of the right kind.
pub fn fit_head(weights: &mut std::collections::HashMap<String, Tensor>, head: HeadKind) -> bool {
    let (outputs, names, prefixes): (usize, &[&str], &[&str]) = match head {
        HeadKind::Span => {
            weights.retain(|k, _| !k.starts_with(CLASSIFIER) && !k.starts_with("pooler."));
            (2, &["qa_outputs.weight"], &[SPAN_HEAD])
        }
        HeadKind::Classes(n) => {
            weights.retain(|k, _| !k.starts_with(SPAN_HEAD));
            (
                n,
                &["classifier.weight", "classifier.out_proj.weight"],
                &[CLASSIFIER],
            )
        }
    };
    match names.iter().find_map(|n| weights.get(*n)) {
        Some(w) if w.dims().first() != Some(&outputs) => {
            weights.retain(|k, _| !prefixes.iter().any(|p| k.starts_with(p)));
            true
        }
        _ => false,
    }
}
