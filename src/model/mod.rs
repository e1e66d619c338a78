//! Our BERT/RoBERTa/ELECTRA/DeBERTa/XLNet encoders, their heads, and checkpoint loading.
//!
//! Every parameter is fetched by its Hugging Face name through a [`ParamStore`], which
//! hands out a frozen tensor or a trainable variable; nothing here knows which.

mod activation;
pub mod adapter;
pub mod adapters;
pub mod bottleneck;
pub mod config;
mod ctx;
pub mod deberta;
mod disentangled;
mod embeddings;
pub mod family;
mod heads;
pub mod hra;
pub mod hub;
mod layer;
pub mod load;
pub mod nn;
pub mod params;
mod pickle;
pub mod prefix;
pub mod principal;
mod recompute;
pub mod reft;
pub mod relative;
mod segments;
pub(crate) mod stack;
pub mod vera;
pub mod xlnet;

use std::path::Path as FsPath;

use anyhow::Result;
use candle_core::{Device, Tensor};

pub use crate::kernels::with_composed_ops;
pub use adapter::{AdapterConfig, AdapterKind, InaActivation};
pub use config::{Activation, Arch, ModelConfig};
use family::{CLASSIFIERS, SPAN_HEAD};
pub use heads::{HeadKind, INIT_STD};
pub use nn::{Ctx, Precision};
pub use params::{Init, ParamStore, Path};

use embeddings::Embeddings;
use heads::{Head, Pooler};
use layer::Layer;
use relative::RelativeEmbeddings;

/// Prompt tuning's embeddings, as PEFT's adapter file names them.
pub const PROMPT: &str = "prompt_embeddings";

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
    body: Body,
    /// Prompt tuning's embeddings (virtual tokens, width), before every sequence.
    prompt: Option<Tensor>,
    /// Prefix tuning's keys and values, before every layer's own.
    prefix: Option<prefix::Prefix>,
    /// LoReFT's tokens, and its interventions after each layer (empty without LoReFT).
    positions: Option<reft::Positions>,
    interventions: Vec<Vec<reft::Loreft>>,
    /// A stacked model's LoReFT: each part's tokens and interventions, on its rows
    /// (`stack.rs`); None otherwise.
    part_edits: Option<Vec<PartEdits>>,
    pooler: Option<Pooler>,
    head: Option<Head>,
}

/// One stacked part's LoReFT tokens and its interventions after each layer.
type PartEdits = (Option<reft::Positions>, Vec<Vec<reft::Loreft>>);

/// The encoder below the head: BERT's stack of layers (with DeBERTa's attention where the
/// family has it), or XLNet's.
enum Body {
    Stack {
        // Boxed: the stack's modules outweigh XLNet's handful of pointers.
        embeddings: Box<Embeddings>,
        /// ELECTRA's projection from narrower embeddings to the encoder's width.
        project: Option<nn::Linear>,
        layers: Vec<Layer>,
        /// DeBERTa's relative position embeddings, shared by every layer.
        relative: Option<RelativeEmbeddings>,
    },
    Xlnet(xlnet::Xlnet),
}

/// What every layer of one forward reads besides its input.
enum Shared {
    /// DeBERTa's relative embeddings: parameters, so recomputation builds them anew for
    /// each layer's backward.
    Relative(relative::Positions),
    /// XLNet's relative encoding and masks: no parameters, one dropout draw per forward.
    Xlnet(xlnet::Shared),
}

impl Model {
    /// Build the encoder, and a head with `num_labels` outputs if asked (1 = regression).
    /// BERT's pooler is loaded when the checkpoint has one or a head needs it.
    pub fn load(store: &ParamStore, cfg: &ModelConfig, num_labels: Option<usize>) -> Result<Self> {
        Self::load_with_adapters(store, cfg, num_labels.map(HeadKind::Classes), None)
    }

    /// As [`Model::load`], with adapters: on the targeted linear layers (LoRA, DoRA, InA,
    /// IA3, HRA, VeRA), in the sublayers (bottleneck), on layer outputs (LoReFT), or
    /// before the words (a prompt).
    pub fn load_with_adapters(
        store: &ParamStore,
        cfg: &ModelConfig,
        head: Option<HeadKind>,
        adapters: Option<&AdapterConfig>,
    ) -> Result<Self> {
        if let Some(a) = adapters {
            if cfg.model_type == Arch::Xlnet {
                let name = match a.kind {
                    AdapterKind::Lora => "lora",
                    AdapterKind::Adalora => "adalora",
                    AdapterKind::Ina { .. } => "ina",
                    AdapterKind::Ia3 => "ia3",
                    AdapterKind::Dora => "dora",
                    AdapterKind::Loreft { .. } => "loreft",
                    AdapterKind::Bottleneck { .. } => "adapter",
                    AdapterKind::Hra => "hra",
                    AdapterKind::Vera { .. } => "vera",
                    AdapterKind::Prompt { .. } => "prompt",
                    AdapterKind::Prefix { .. } => "prefix",
                };
                crate::user_bail!(
                    "--method {name}: XLNet takes no adapters here. Its attention's q, k, v \
                     and o are parameters read by einsums, not linear layers, so LoRA, AdaLoRA, \
                     DoRA, InA, IA3, HRA and VeRA have nothing to wrap there, and bottleneck \
                     adapters, prompts, prefixes and LoReFT are not built for its layout yet; train \
                     XLNet with full, bitfit, layernorm, the Fisher and random subsets, \
                     top-layers, head or Child-Tuning"
                );
            }
        }
        if adapters.is_some_and(|a| matches!(a.kind, AdapterKind::Prefix { .. }))
            && cfg.model_type.is_deberta()
        {
            crate::user_bail!(
                "--method prefix: DeBERTa's attention adds a relative-position term between \
                 every query and key, and a prefix's keys have no position; PEFT refuses it too \
                 (DeBERTa takes no past_key_values). Use --method prompt, lora or another adapter"
            );
        }
        // LoReFT edits layer outputs, bottleneck adapters sit in the sublayers, prompts
        // before the words and prefixes before each layer's keys: none names linear layers.
        let wraps_linears = |a: &&AdapterConfig| {
            !matches!(
                a.kind,
                AdapterKind::Loreft { .. }
                    | AdapterKind::Bottleneck { .. }
                    | AdapterKind::Prompt { .. }
                    | AdapterKind::Prefix { .. }
            )
        };
        if let Some(a) = adapters.filter(wraps_linears) {
            for t in &a.targets {
                cfg.model_type
                    .adapter_module(t)
                    .map_err(crate::error::user)?;
            }
        }
        // VeRA's projections span the largest wrapped layer, which the model knows.
        let sized;
        let adapters = match adapters {
            Some(a) if matches!(a.kind, AdapterKind::Vera { .. }) => {
                sized = a.spanning(vera_span(cfg, &a.targets)?);
                Some(&sized)
            }
            other => other,
        };
        let root = store.root();
        let body = match &cfg.xlnet {
            Some(x) => Body::Xlnet(xlnet::Xlnet::load(&root, x)?),
            None => Self::encoder(&root, cfg, adapters)?,
        };
        let h = cfg.hidden_size;
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
        // PEFT's RANDOM start: nn.Embedding's N(0, 1).
        let prompt = match adapters.map(|a| a.kind) {
            Some(AdapterKind::Prompt { tokens }) => Some(root.get_or_init(
                PROMPT,
                &[tokens, cfg.embedding_width()],
                params::Init::Normal(1.0),
            )?),
            _ => None,
        };
        let prefix = match adapters.map(|a| a.kind) {
            Some(AdapterKind::Prefix { tokens, hidden }) => Some(prefix::Prefix::load(
                &root,
                tokens,
                cfg.num_hidden_layers,
                h,
                hidden,
            )?),
            _ => None,
        };
        Ok(Self {
            config: cfg.clone(),
            body,
            prompt,
            prefix,
            positions,
            interventions,
            part_edits: None,
            pooler,
            head,
        })
    }

    /// BERT's, RoBERTa's, ELECTRA's and DeBERTa's encoder.
    fn encoder(root: &Path, cfg: &ModelConfig, adapters: Option<&AdapterConfig>) -> Result<Body> {
        let embeddings = Box::new(Embeddings::load(&root.pp("embeddings"), cfg)?);
        let (e, h) = (cfg.embedding_width(), cfg.hidden_size);
        // DeBERTa projects inside its embeddings (embed_proj), before their LayerNorm.
        let project = (e != h && !cfg.model_type.is_deberta())
            .then(|| nn::Linear::load(&root.pp("embeddings_project"), e, h))
            .transpose()?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::load(&root.pp(format!("encoder.layer.{i}")), cfg, adapters))
            .collect::<Result<Vec<_>>>()?;
        let relative = match cfg.deberta.as_ref().and_then(|d| d.relative) {
            Some(r) => Some(RelativeEmbeddings::load(
                &root.pp("encoder"),
                r,
                h,
                cfg.layer_norm_eps,
            )?),
            None => None,
        };
        Ok(Body::Stack {
            embeddings,
            project,
            layers,
            relative,
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
        let mask = &self.mask(batch)?;
        let mut x = self.embed(batch, mask, ctx)?;
        let edited = self.edited(mask)?;
        let shared = self.shared(&x, batch, ctx)?;
        for i in 0..self.num_layers() {
            x = self.layer(i, &x, mask, shared.as_ref(), &edited, ctx)?;
        }
        let x = self.finish(&x, ctx)?;
        let (pooled, logits) = self.top(&x, mask, ctx)?;
        Ok(Output {
            last_hidden_state: self.without_prompt(&x)?,
            pooled,
            logits,
        })
    }

    fn num_layers(&self) -> usize {
        match &self.body {
            Body::Stack { layers, .. } => layers.len(),
            Body::Xlnet(x) => x.num_layers(),
        }
    }

    /// The embeddings, projected to the encoder's width where they differ (ELECTRA); in
    /// XLNet's (seq, batch, d) layout for XLNet.
    /// `mask`: the batch's as the encoder sees it ([`Model::mask`]).
    fn embed(&self, batch: &Batch, mask: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let (embeddings, project) = match &self.body {
            Body::Stack {
                embeddings,
                project,
                ..
            } => (embeddings, project),
            Body::Xlnet(x) => return x.embed(&batch.input_ids, ctx),
        };
        // After a prefix, positions count on from it, as transformers 4.x counts them after
        // PEFT's cache.
        let past = self.prefix.as_ref().map_or(Ok(0), |p| p.tokens())?;
        let x = embeddings.forward(
            &batch.input_ids,
            &batch.token_type_ids,
            mask,
            self.prompt.as_ref(),
            past,
            ctx,
        )?;
        match project {
            Some(p) => p.forward(&x, ctx),
            None => Ok(x),
        }
    }

    /// The attention mask of `batch` as the encoder sees it: prompt tuning's virtual
    /// tokens first, always attended (PEFT's prefix of ones).
    fn mask(&self, batch: &Batch) -> Result<Tensor> {
        let mask = &batch.attention_mask;
        match &self.prompt {
            Some(p) => {
                let b = mask.dim(0)?;
                let ones = Tensor::ones((b, p.dim(0)?), mask.dtype(), mask.device())?;
                Ok(Tensor::cat(&[&ones, mask], 1)?)
            }
            None => Ok(mask.clone()),
        }
    }

    /// Per-token outputs (batch, seq, ·) without the prompt's virtual tokens.
    fn without_prompt(&self, x: &Tensor) -> Result<Tensor> {
        match &self.prompt {
            Some(p) => {
                let n = p.dim(0)?;
                Ok(x.narrow(1, n, x.dim(1)? - n)?)
            }
            None => Ok(x.clone()),
        }
    }

    /// LoReFT's masks of edited tokens per group (none without LoReFT).
    fn edited(&self, mask: &Tensor) -> Result<Vec<reft::Edited>> {
        match self.positions {
            Some(p) => p.masks(mask),
            None => Ok(Vec::new()),
        }
    }

    /// What the layers share for `x` (the embeddings' output) of `batch`: DeBERTa's
    /// relative position embeddings, XLNet's relative encoding and masks; None for the
    /// other families.
    fn shared(&self, x: &Tensor, batch: &Batch, ctx: &Ctx) -> Result<Option<Shared>> {
        match &self.body {
            Body::Stack { relative, .. } => relative
                .as_ref()
                .map(|r| Ok(Shared::Relative(r.positions(x.dim(1)?, x.device())?)))
                .transpose(),
            Body::Xlnet(xl) => Ok(Some(Shared::Xlnet(xl.shared(
                &batch.token_type_ids,
                &batch.attention_mask,
                ctx,
            )?))),
        }
    }

    /// Encoder layer `i` on `x`, then its LoReFT interventions.
    fn layer(
        &self,
        i: usize,
        x: &Tensor,
        mask: &Tensor,
        shared: Option<&Shared>,
        edited: &[reft::Edited],
        ctx: &Ctx,
    ) -> Result<Tensor> {
        // Built here, per layer, so that recomputation rebuilds a layer's prefix with it.
        let prefix = self.prefix.as_ref().map(|p| p.layer(i)).transpose()?;
        let mut x = match (&self.body, shared) {
            (Body::Xlnet(xl), Some(Shared::Xlnet(s))) => return xl.layer(i, x, s, ctx),
            (Body::Stack { layers, .. }, Some(Shared::Relative(p))) => {
                layers[i].forward(x, mask, Some(p), prefix.as_ref(), ctx)?
            }
            (Body::Stack { layers, .. }, None) => {
                layers[i].forward(x, mask, None, prefix.as_ref(), ctx)?
            }
            _ => anyhow::bail!("layer {i}: the shared inputs of another family"),
        };
        x = edit(&self.interventions[i], x, edited, ctx)?;
        if let Some(parts) = &self.part_edits {
            x = segments::per_segment(parts, &[&x, mask], 1, ctx, |(positions, ivs), xs| {
                let edited = match positions {
                    Some(p) => p.masks(&xs[1])?,
                    None => Vec::new(),
                };
                edit(&ivs[i], xs[0].clone(), &edited, ctx)
            })?;
        }
        Ok(x)
    }

    /// The last layer's output as the head reads it: XLNet's final dropout, batch first.
    fn finish(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        match &self.body {
            Body::Xlnet(xl) => xl.finish(x, ctx),
            Body::Stack { .. } => Ok(x.clone()),
        }
    }

    /// The pooler and head on the last hidden state: (pooled, logits).
    fn top(
        &self,
        x: &Tensor,
        mask: &Tensor,
        ctx: &Ctx,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let pooled = self
            .pooler
            .as_ref()
            .map(|p| p.forward(x, ctx))
            .transpose()?;
        let logits = self
            .head
            .as_ref()
            .map(|h| h.forward(x, pooled.as_ref(), mask, ctx))
            .transpose()?;
        // A classifier reads the first token, a virtual one under prompt tuning, as PEFT's
        // does; span logits are the real tokens' (PEFT keeps the virtual ones, against
        // which its unshifted labels point at the wrong tokens).
        let logits = match (logits, self.head_kind()) {
            (Some(l), Some(HeadKind::Span)) => Some(self.without_prompt(&l)?),
            (l, _) => l,
        };
        Ok((pooled, logits))
    }

    /// Logits of the task head: (batch, num_labels), or (batch, seq, 2) for spans.
    pub fn logits(&self, batch: &Batch, ctx: &Ctx) -> Result<Tensor> {
        self.forward(batch, ctx)?
            .logits
            .ok_or_else(|| anyhow::anyhow!("the model was built without a task head"))
    }
}

/// `x` after LoReFT's interventions `ivs`, each on the tokens of its group in `edited`.
fn edit(ivs: &[reft::Loreft], mut x: Tensor, edited: &[reft::Edited], ctx: &Ctx) -> Result<Tensor> {
    for iv in ivs {
        let at = edited
            .iter()
            .find(|e| e.group == iv.group())
            .ok_or_else(|| anyhow::anyhow!("no positions for loreft {}", iv.group()))?;
        x = iv.forward(&x, at, ctx)?;
    }
    Ok(x)
}

/// VeRA's projections' span: the largest (in, out) among the layers `targets` wrap in a
/// model of `cfg`, what PEFT's `_find_dim` finds over the same layers.
fn vera_span(cfg: &ModelConfig, targets: &[String]) -> Result<(usize, usize)> {
    let (h, f) = (cfg.hidden_size, cfg.intermediate_size);
    let mut max = (0, 0);
    for t in targets {
        let module = cfg
            .model_type
            .adapter_module(t)
            .map_err(crate::error::user)?;
        let (i, o) = match module.as_str() {
            "attention.self.in_proj" => (h, 3 * h),
            "intermediate.dense" => (h, f),
            "output.dense" => (f, h),
            _ => (h, h),
        };
        max = (max.0.max(i), max.1.max(o));
    }
    Ok(max)
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
    weights.retain(|k, _| !family::is_head(k));
}

/// Fit a checkpoint's head tensors to the `head` a run builds: tensors of another kind of
/// head go (a classifier and the pooler under a question-answering head, which has
/// neither; `qa_outputs` under a classifier), and so does a head of the right kind made for
/// another number of outputs, so that a fresh one is initialised (transformers'
/// `ignore_mismatched_sizes`). Returns whether it dropped a head of the right kind.
pub fn fit_head(weights: &mut std::collections::HashMap<String, Tensor>, head: HeadKind) -> bool {
    let (outputs, names, prefixes): (usize, &[&str], &[&str]) = match head {
        HeadKind::Span => {
            weights.retain(|k, _| {
                !CLASSIFIERS.iter().any(|c| k.starts_with(c)) && !k.starts_with("pooler.")
            });
            (2, &["qa_outputs.weight"], &[SPAN_HEAD])
        }
        HeadKind::Classes(n) => {
            weights.retain(|k, _| !k.starts_with(SPAN_HEAD));
            (
                n,
                &[
                    "classifier.weight",
                    "classifier.out_proj.weight",
                    "logits_proj.weight",
                ],
                &CLASSIFIERS,
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
