//! What each adapter kind owns beyond its forward pass (`adapter.rs`, `reft.rs`): the
//! tensors it adds, how they fold into the weights they wrap (`peft merge`, `peft diff`),
//! what an untrained one is (WiSE-FT interpolates from it), and its form in PEFT's
//! `adapter_config.json`. One [`AdapterDef`] per kind; [`AdapterKind::def`] finds it, so
//! nothing above the model matches on the kind or on tensor-name suffixes.

use std::collections::HashMap;

use anyhow::Result;
use candle_core::Tensor;
use serde_json::{json, Value};

use super::adapter::{row_norms, AdapterConfig, AdapterKind};
use crate::error::user;

/// One adapter kind.
pub trait AdapterDef: Sync {
    /// The leaves its tensors have under a wrapped module (LoReFT: under a layer), as PEFT
    /// and pyreft name them.
    fn leaves(&self) -> &'static [&'static str];
    /// Fold its tensors in `weights` into the weights they wrap, removing them; or say
    /// why no weight reproduces it.
    fn fold(&self, cfg: &AdapterConfig, weights: &mut HashMap<String, Tensor>) -> Result<()>;
    /// Its trained tensor `name` (`t`, which the base lacks) at θ₀ + alpha·(θ − θ₀), θ₀
    /// being the adapter that changes nothing; None when it has no θ₀ (LoRA's A: with B at
    /// θ₀, A alone changes nothing) or `name` is not its tensor.
    fn interpolate(
        &self,
        name: &str,
        t: &Tensor,
        alpha: f64,
        run: &Tensors,
    ) -> Result<Option<Tensor>>;
    /// PEFT's `peft_type` and the fields of `adapter_config.json` particular to it, given
    /// its targets as PEFT names them; None where PEFT has no such adapter.
    fn peft_config(
        &self,
        _cfg: &AdapterConfig,
        _targets: &[String],
    ) -> Option<(&'static str, Value)> {
        None
    }
    /// Its trained tensors (and the head) as PEFT's adapter file holds them, and the
    /// fields of `adapter_config.json` that depend on their values; `peft_name` gives a
    /// module's name in PEFT's model (`bert.encoder…`). By default: as trained, no fields.
    fn peft_tensors(
        &self,
        trained: &HashMap<String, Tensor>,
        _peft_name: &dyn Fn(&str) -> String,
    ) -> Result<(HashMap<String, Tensor>, Value)> {
        Ok((trained.clone(), json!({})))
    }
}

/// What interpolation may read: the run's other trained tensors and the base's.
pub struct Tensors<'a> {
    pub trained: &'a HashMap<String, Tensor>,
    pub base: &'a HashMap<String, Tensor>,
}

impl AdapterKind {
    /// This kind's behaviour.
    pub fn def(&self) -> &'static dyn AdapterDef {
        match self {
            AdapterKind::Lora => &Lora,
            AdapterKind::Adalora => &Adalora,
            AdapterKind::Dora => &Dora,
            AdapterKind::Ina { .. } => &Ina,
            AdapterKind::Ia3 => &Ia3,
            AdapterKind::Loreft { .. } => &Loreft,
            AdapterKind::Bottleneck { .. } => &Bottleneck,
            AdapterKind::Hra => &Hra,
            AdapterKind::Vera { .. } => &Vera,
            AdapterKind::Prompt { .. } => &Prompt,
            AdapterKind::Prefix { .. } => &Prefix,
        }
    }
}

/// LoRA: B·A beside the weight.
struct Lora;
/// AdaLoRA: B·diag(E)·A beside the weight, E masked to a rank budget.
struct Adalora;
/// DoRA: LoRA plus a magnitude per output row.
struct Dora;
/// InA: LoRA with an inhibited, activated low-rank path.
struct Ina;
/// IA3: a vector scaling a layer's input or output.
struct Ia3;
/// LoReFT: edits of chosen tokens' hidden states.
struct Loreft;
/// AdapterHub's bottleneck adapters in the sublayers.
struct Bottleneck;
/// HRA: Householder reflections of a layer's input.
struct Hra;
/// VeRA: scaling vectors around shared random projections.
struct Vera;
/// Prompt tuning: learned embeddings before every sequence.
struct Prompt;
/// Prefix tuning: learned keys and values before every layer's own.
struct Prefix;

impl AdapterDef for Prefix {
    fn leaves(&self) -> &'static [&'static str] {
        &[super::prefix::EMBEDDING]
    }
    fn fold(&self, _cfg: &AdapterConfig, _weights: &mut HashMap<String, Tensor>) -> Result<()> {
        Err(user(
            "a prefix-tuning run cannot be merged: its keys and values are attended beside \
             every layer's own, which no weight of the encoder reproduces; score it with `peft \
             eval --checkpoint` or `peft predict`",
        ))
    }
    /// No prefix is the base model (an all-zero one still takes attention), and no scaling
    /// of one leads there.
    fn interpolate(
        &self,
        name: &str,
        _t: &Tensor,
        alpha: f64,
        _run: &Tensors,
    ) -> Result<Option<Tensor>> {
        match name.starts_with("prompt_encoder.") {
            true => Err(user(format!(
                "--alpha {alpha}: a prefix-tuning run has no scaled-down prefix that leads \
                 back to the base model; WiSE-FT of it is not supported"
            ))),
            false => Ok(None),
        }
    }
    /// PEFT saves the table whole, the projection's output when there is one.
    fn peft_tensors(
        &self,
        trained: &HashMap<String, Tensor>,
        _peft_name: &dyn Fn(&str) -> String,
    ) -> Result<(HashMap<String, Tensor>, Value)> {
        let mut out: HashMap<String, Tensor> = trained
            .iter()
            .filter(|(n, _)| !n.starts_with("prompt_encoder."))
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect();
        out.insert(super::PROMPT.to_string(), super::prefix::table(trained)?);
        Ok((out, json!({})))
    }
    /// PEFT's `PrefixTuningConfig`, saved as PEFT saves one: `inference_mode`, so that
    /// the file's `prompt_embeddings` is the whole table even when a projection made it.
    /// The model's sizes are PEFT's to fill in when it loads the adapter.
    fn peft_config(
        &self,
        cfg: &AdapterConfig,
        _targets: &[String],
    ) -> Option<(&'static str, Value)> {
        let AdapterKind::Prefix { tokens, hidden } = cfg.kind else {
            return None;
        };
        Some((
            "PREFIX_TUNING",
            json!({
                "num_virtual_tokens": tokens,
                "num_transformer_submodules": 1,
                "prefix_projection": hidden.is_some(),
                "encoder_hidden_size": hidden,
            }),
        ))
    }
}

impl AdapterDef for Prompt {
    fn leaves(&self) -> &'static [&'static str] {
        &[super::PROMPT]
    }
    fn fold(&self, _cfg: &AdapterConfig, _weights: &mut HashMap<String, Tensor>) -> Result<()> {
        Err(user(
            "a prompt-tuning run cannot be merged: its virtual tokens are inputs before every \
             sequence, which no weight of the encoder reproduces; score it with `peft eval \
             --checkpoint` or `peft predict`",
        ))
    }
    /// No prompt is the base model, and no scaling of one leads there.
    fn interpolate(
        &self,
        name: &str,
        _t: &Tensor,
        alpha: f64,
        _run: &Tensors,
    ) -> Result<Option<Tensor>> {
        match name == super::PROMPT {
            true => Err(user(format!(
                "--alpha {alpha}: a prompt-tuning run has no scaled-down prompt that leads \
                 back to the base model; WiSE-FT of it is not supported"
            ))),
            false => Ok(None),
        }
    }
    /// PEFT's `PromptTuningConfig`; PEFT fills the model's sizes in when it loads it.
    fn peft_config(
        &self,
        _cfg: &AdapterConfig,
        _targets: &[String],
    ) -> Option<(&'static str, Value)> {
        let AdapterKind::Prompt { tokens } = _cfg.kind else {
            return None;
        };
        Some((
            "PROMPT_TUNING",
            json!({
                "num_virtual_tokens": tokens,
                "num_transformer_submodules": 1,
                "prompt_tuning_init": "RANDOM",
            }),
        ))
    }
}

impl AdapterDef for Adalora {
    fn leaves(&self) -> &'static [&'static str] {
        &["lora_A", "lora_E", "lora_B"]
    }
    /// W₀ + s·B·(A ⊙ E), as PEFT's merge.
    fn fold(&self, cfg: &AdapterConfig, weights: &mut HashMap<String, Tensor>) -> Result<()> {
        let alpha = if cfg.alpha > 0.0 {
            cfg.alpha
        } else {
            cfg.r as f64
        };
        let scale = alpha / (cfg.r as f64 + 1e-5);
        for module in wrapped(weights, ".lora_E") {
            let mut take = |leaf: &str| {
                weights
                    .remove(&format!("{module}.{leaf}"))
                    .ok_or_else(|| user(format!("the run has no `{module}.{leaf}`")))
            };
            let (a, e, b, w) = (
                take("lora_A")?,
                take("lora_E")?,
                take("lora_B")?,
                take("weight")?,
            );
            let merged = (&w + super::adapter::adalora_delta(&a, &e, &b, scale)?)?;
            weights.insert(format!("{module}.weight"), merged);
        }
        Ok(())
    }
    /// θ₀ is E at zero (the start, and what masking leaves): alpha·E scales the update.
    fn interpolate(
        &self,
        name: &str,
        t: &Tensor,
        alpha: f64,
        _run: &Tensors,
    ) -> Result<Option<Tensor>> {
        scaled_where(name.ends_with(".lora_E"), t, alpha)
    }
    /// PEFT's `AdaLoraConfig`; the schedule's fields come from the run's allocator.
    fn peft_config(
        &self,
        cfg: &AdapterConfig,
        targets: &[String],
    ) -> Option<(&'static str, Value)> {
        Some((
            "ADALORA",
            json!({
                "init_r": cfg.r,
                "lora_alpha": cfg.alpha,
                "lora_dropout": cfg.dropout,
                "target_modules": targets,
                "fan_in_fan_out": false,
                "bias": "none",
                "init_lora_weights": true,
            }),
        ))
    }
    /// As PEFT saves a trained AdaLoRA model: each module's triplets whose E is not zero
    /// (masking zeroes E exactly, so the rest compute nothing), with `rank_pattern` saying
    /// which of the initial rank's places they held.
    fn peft_tensors(
        &self,
        trained: &HashMap<String, Tensor>,
        peft_name: &dyn Fn(&str) -> String,
    ) -> Result<(HashMap<String, Tensor>, Value)> {
        let mut out = trained.clone();
        let mut pattern = serde_json::Map::new();
        for module in wrapped(trained, ".lora_E") {
            let get = |leaf: &str| {
                trained
                    .get(&format!("{module}.{leaf}"))
                    .ok_or_else(|| user(format!("the run has no `{module}.{leaf}`")))
            };
            let e = get("lora_E")?.flatten_all()?.to_vec1::<f32>()?;
            let keep: Vec<bool> = e.iter().map(|v| *v != 0.0).collect();
            let rows: Vec<u32> = (0..e.len() as u32).filter(|&i| keep[i as usize]).collect();
            pattern.insert(format!("{}.lora_E", peft_name(&module)), json!(keep));
            for (leaf, dim) in [("lora_A", 0), ("lora_E", 0), ("lora_B", 1)] {
                let t = get(leaf)?;
                let kept = match rows.len() {
                    0 => {
                        let mut shape = t.dims().to_vec();
                        shape[dim] = 0;
                        Tensor::zeros(shape, t.dtype(), t.device())?
                    }
                    n => t.index_select(&Tensor::from_vec(rows.clone(), n, t.device())?, dim)?,
                };
                out.insert(format!("{module}.{leaf}"), kept);
            }
        }
        Ok((out, json!({ "rank_pattern": pattern })))
    }
}

impl AdapterDef for Vera {
    fn leaves(&self) -> &'static [&'static str] {
        &["vera_lambda_d", "vera_lambda_b"]
    }
    /// W₀ + diag(λ_b)·B_s·diag(λ_d)·A_s, the projections drawn again from the key over
    /// the run's wrapped layers (PEFT's merge).
    fn fold(&self, cfg: &AdapterConfig, weights: &mut HashMap<String, Tensor>) -> Result<()> {
        let AdapterKind::Vera { key, .. } = cfg.kind else {
            return Ok(());
        };
        let max = super::vera::max_dims_of(weights)?;
        let wrapped = wrapped(weights, ".vera_lambda_d");
        for module in wrapped {
            let take = |w: &mut HashMap<String, Tensor>, leaf: &str| {
                w.remove(&format!("{module}.{leaf}"))
                    .ok_or_else(|| user(format!("the run has no `{module}.{leaf}`")))
            };
            let d = take(weights, "vera_lambda_d")?;
            let b = take(weights, "vera_lambda_b")?;
            let w = take(weights, "weight")?;
            let (o, i) = w.dims2()?;
            let (pa, pb) = super::vera::slices(key, cfg.r, max, (i, o), w.device())?;
            let merged = (&w + super::adapter::vera_delta(&pa, &pb, &d, &b)?)?;
            weights.insert(format!("{module}.weight"), merged);
        }
        Ok(())
    }
    /// θ₀ is λ_b at zero: alpha·λ_b scales the update, λ_d as trained.
    fn interpolate(
        &self,
        name: &str,
        t: &Tensor,
        alpha: f64,
        _run: &Tensors,
    ) -> Result<Option<Tensor>> {
        scaled_where(name.ends_with(".vera_lambda_b"), t, alpha)
    }
    /// PEFT's `VeraConfig`. The projections are not saved (`save_projection` false): PEFT
    /// draws them from `projection_prng_key` as this crate does.
    fn peft_config(
        &self,
        cfg: &AdapterConfig,
        targets: &[String],
    ) -> Option<(&'static str, Value)> {
        let AdapterKind::Vera { key, d_initial, .. } = cfg.kind else {
            return None;
        };
        Some((
            "VERA",
            json!({
                "r": cfg.r,
                "target_modules": targets,
                "projection_prng_key": key,
                "save_projection": false,
                "vera_dropout": cfg.dropout,
                "d_initial": d_initial,
                "fan_in_fan_out": false,
                "bias": "none",
                "init_weights": true,
            }),
        ))
    }
}

impl AdapterDef for Hra {
    fn leaves(&self) -> &'static [&'static str] {
        &["hra_u"]
    }
    /// W·H, as PEFT's merge.
    fn fold(&self, _cfg: &AdapterConfig, weights: &mut HashMap<String, Tensor>) -> Result<()> {
        let wrapped = wrapped(weights, ".hra_u");
        for module in wrapped {
            let u = weights
                .remove(&format!("{module}.hra_u"))
                .ok_or_else(|| user(format!("the run has no `{module}.hra_u`")))?;
            let key = format!("{module}.weight");
            let w = weights
                .get(&key)
                .ok_or_else(|| user(format!("the run has no `{key}`")))?;
            let h = super::hra::Hra::from_u(u).matrix()?;
            if h.dim(0)? != w.dim(1)? {
                return Err(user(format!(
                    "`{module}`: hra_u reflects {} inputs, the weight has {}",
                    h.dim(0)?,
                    w.dim(1)?
                )));
            }
            let merged = w.matmul(&h)?;
            weights.insert(key, merged);
        }
        Ok(())
    }
    /// No θ₀ to move towards by scaling: a reflection's vector cannot be scaled towards
    /// the identity.
    fn interpolate(
        &self,
        name: &str,
        _t: &Tensor,
        alpha: f64,
        _run: &Tensors,
    ) -> Result<Option<Tensor>> {
        match name.ends_with(".hra_u") {
            true => Err(user(format!(
                "--alpha {alpha}: an HRA run's reflections have no scaled-down form that \
                 leads back to the base model; WiSE-FT of it is not supported"
            ))),
            false => Ok(None),
        }
    }
    /// PEFT's `HRAConfig` (`apply_GS` false, its default and the only form here).
    fn peft_config(
        &self,
        cfg: &AdapterConfig,
        targets: &[String],
    ) -> Option<(&'static str, Value)> {
        Some((
            "HRA",
            json!({
                "r": cfg.r,
                "apply_GS": false,
                "init_weights": true,
                "target_modules": targets,
                "bias": "none",
            }),
        ))
    }
}

impl AdapterDef for Bottleneck {
    fn leaves(&self) -> &'static [&'static str] {
        &[
            "adapter_down.0.weight",
            "adapter_down.0.bias",
            "adapter_up.weight",
            "adapter_up.bias",
        ]
    }
    fn fold(&self, _cfg: &AdapterConfig, _weights: &mut HashMap<String, Tensor>) -> Result<()> {
        Err(user(
            "a bottleneck-adapter run cannot be merged: its adapters are small networks with \
             an activation between two projections, which no weight of the encoder \
             reproduces; score it with `peft eval --checkpoint` or `peft predict`",
        ))
    }
    /// θ₀ is the adapter that adds nothing: the up projection at zero (weight and bias),
    /// the down projection as trained.
    fn interpolate(
        &self,
        name: &str,
        t: &Tensor,
        alpha: f64,
        _run: &Tensors,
    ) -> Result<Option<Tensor>> {
        scaled_where(name.contains(".adapter_up."), t, alpha)
    }
}

/// A PiSSA or OLoRA run trained beside W − s·B₀·A₀: each wrapped weight in `weights`
/// becomes that residual (found again from W, `principal.rs`), for folding onto.
fn to_residual(cfg: &AdapterConfig, weights: &mut HashMap<String, Tensor>) -> Result<()> {
    let Some(init) = cfg.init.filter(|i| i.from_weight()) else {
        return Ok(());
    };
    let s = cfg.scale();
    let modules = wrapped(weights, ".lora_A.weight");
    for module in modules {
        let key = format!("{module}.weight");
        let w = weights
            .get(&key)
            .ok_or_else(|| user(format!("the run has no `{key}`")))?;
        let (a, b) = super::principal::start(init, w, cfg.r, s)?;
        let residual = (w - super::principal::shift(&a, &b, s)?)?;
        weights.insert(key, residual);
    }
    Ok(())
}

/// LoRA's and PEFT's `LoraConfig` fields, DoRA's `use_dora` among them. A PiSSA or
/// OLoRA start is written as PEFT's own `save_pretrained` writes it (`init_lora_weights`
/// "pissa" or "olora", the trained A and B): PEFT takes the start out of the base weight
/// again when it loads the adapter.
fn lora_config(cfg: &AdapterConfig, targets: &[String]) -> Value {
    let init = match cfg.init {
        Some(i) => json!(i.peft_name()),
        None => json!(true),
    };
    json!({
        "r": cfg.r,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": false,
        "init_lora_weights": init,
        "use_rslora": cfg.rslora,
        "use_dora": cfg.kind == AdapterKind::Dora,
    })
}

/// B at θ₀ is zero: alpha·B scales the update (α·s·B·A), A as trained.
fn interpolate_b(name: &str, t: &Tensor, alpha: f64) -> Result<Option<Tensor>> {
    scaled_where(name.ends_with(".lora_B.weight"), t, alpha)
}

/// For an adapter whose update is linear in one tensor that is zero at θ₀ (LoRA's B,
/// AdaLoRA's E, VeRA's λ_b, a bottleneck's up projection): alpha times it, where `is_it`.
fn scaled_where(is_it: bool, t: &Tensor, alpha: f64) -> Result<Option<Tensor>> {
    Ok(match is_it {
        true => Some((t * alpha)?),
        false => None,
    })
}

impl AdapterDef for Lora {
    fn leaves(&self) -> &'static [&'static str] {
        &["lora_A.weight", "lora_B.weight"]
    }
    fn fold(&self, cfg: &AdapterConfig, weights: &mut HashMap<String, Tensor>) -> Result<()> {
        to_residual(cfg, weights)?;
        fold_lora(weights, cfg.scale())
    }
    fn interpolate(
        &self,
        name: &str,
        t: &Tensor,
        alpha: f64,
        _run: &Tensors,
    ) -> Result<Option<Tensor>> {
        interpolate_b(name, t, alpha)
    }
    fn peft_config(
        &self,
        cfg: &AdapterConfig,
        targets: &[String],
    ) -> Option<(&'static str, Value)> {
        Some(("LORA", lora_config(cfg, targets)))
    }
}

impl AdapterDef for Dora {
    fn leaves(&self) -> &'static [&'static str] {
        &["lora_A.weight", "lora_B.weight", "lora_magnitude_vector"]
    }
    fn fold(&self, cfg: &AdapterConfig, weights: &mut HashMap<String, Tensor>) -> Result<()> {
        to_residual(cfg, weights)?;
        fold_lora(weights, cfg.scale())
    }
    /// The magnitudes' θ₀ is ‖W₀‖ per row (with B scaled as LoRA's, the norm they divide
    /// by moves too; at alpha 0 the layer is W₀ again).
    fn interpolate(
        &self,
        name: &str,
        t: &Tensor,
        alpha: f64,
        run: &Tensors,
    ) -> Result<Option<Tensor>> {
        let Some(module) = name.strip_suffix(".lora_magnitude_vector") else {
            return interpolate_b(name, t, alpha);
        };
        Ok(Some(match run.base.get(&format!("{module}.weight")) {
            Some(w) => {
                let m0 = row_norms(w)?;
                (&m0 + ((t - &m0)? * alpha)?)?
            }
            None => t.clone(),
        }))
    }
    fn peft_config(
        &self,
        cfg: &AdapterConfig,
        targets: &[String],
    ) -> Option<(&'static str, Value)> {
        Some(("LORA", lora_config(cfg, targets)))
    }
}

impl AdapterDef for Ina {
    fn leaves(&self) -> &'static [&'static str] {
        &["lora_A.weight", "lora_B.weight"]
    }
    /// InA's thresholded activation is not linear: only inhibition 0 (plain LoRA) folds.
    fn fold(&self, cfg: &AdapterConfig, weights: &mut HashMap<String, Tensor>) -> Result<()> {
        if let AdapterKind::Ina { inhibition, .. } = cfg.kind {
            if inhibition != 0.0 {
                return Err(user(format!(
                    "the run's InA adapters (--ina-inhibition {inhibition}) cannot be merged: \
                     the thresholded path max-subtracts and activates per token, which no \
                     linear weight reproduces (only --ina-inhibition 0 is plain LoRA)"
                )));
            }
        }
        fold_lora(weights, cfg.scale())
    }
    fn interpolate(
        &self,
        name: &str,
        t: &Tensor,
        alpha: f64,
        _run: &Tensors,
    ) -> Result<Option<Tensor>> {
        interpolate_b(name, t, alpha)
    }
}

impl AdapterDef for Ia3 {
    fn leaves(&self) -> &'static [&'static str] {
        &["ia3_l"]
    }
    fn fold(&self, _cfg: &AdapterConfig, weights: &mut HashMap<String, Tensor>) -> Result<()> {
        fold_ia3(weights)
    }
    /// θ₀ is a vector of ones: 1 + alpha·(l − 1).
    fn interpolate(
        &self,
        name: &str,
        t: &Tensor,
        alpha: f64,
        _run: &Tensors,
    ) -> Result<Option<Tensor>> {
        Ok(match name.ends_with(".ia3_l") {
            true => Some(t.affine(alpha, 1.0 - alpha)?),
            false => None,
        })
    }
    /// PEFT's `IA3Config`: the dense output layers, which scale their input, are its
    /// `feedforward_modules`.
    fn peft_config(
        &self,
        _cfg: &AdapterConfig,
        targets: &[String],
    ) -> Option<(&'static str, Value)> {
        let feedforward: Vec<&String> = targets
            .iter()
            .filter(|t| t.ends_with("output.dense"))
            .collect();
        Some((
            "IA3",
            json!({
                "target_modules": targets,
                "feedforward_modules": feedforward,
                "fan_in_fan_out": false,
                "init_ia3_weights": true,
            }),
        ))
    }
}

impl AdapterDef for Loreft {
    fn leaves(&self) -> &'static [&'static str] {
        &["rotate", "source.weight", "source.bias"]
    }
    fn fold(&self, _cfg: &AdapterConfig, _weights: &mut HashMap<String, Tensor>) -> Result<()> {
        Err(user(
            "a LoReFT run cannot be merged: it edits the hidden states of chosen tokens only \
             (--loreft-positions), which no weight of the encoder reproduces; score it with \
             `peft eval --checkpoint` or `peft predict`",
        ))
    }
    /// θ₀ is the intervention that edits nothing: W = R, b = 0 (R as trained, so each step
    /// of alpha scales the edit Rᵀ(Wh + b − Rh)).
    fn interpolate(
        &self,
        name: &str,
        t: &Tensor,
        alpha: f64,
        run: &Tensors,
    ) -> Result<Option<Tensor>> {
        if !name.contains(".loreft.") {
            return Ok(None);
        }
        if name.ends_with(".source.bias") {
            return Ok(Some((t * alpha)?));
        }
        let Some(rotate) = name
            .strip_suffix(".source.weight")
            .map(|p| format!("{p}.rotate"))
        else {
            return Ok(None);
        };
        Ok(Some(match run.trained.get(&rotate) {
            Some(x) => {
                let r = super::reft::rotation(x)?.t()?;
                (&r + ((t - &r)? * alpha)?)?
            }
            None => t.clone(),
        }))
    }
}

/// The modules whose tensor `leaf` (`.lora_A.weight`) `weights` holds, by path.
fn wrapped(weights: &HashMap<String, Tensor>, leaf: &str) -> Vec<String> {
    weights
        .keys()
        .filter_map(|k| k.strip_suffix(leaf).map(str::to_string))
        .collect()
}

/// Fold LoRA (and DoRA) adapters scaled by `scale` into the weights they wrap,
/// W₀ + s·B·A (DoRA's rows then scaled to their magnitudes), and drop the pairs.
pub fn fold_lora(weights: &mut HashMap<String, Tensor>, scale: f64) -> Result<()> {
    let wrapped = wrapped(weights, ".lora_A.weight");
    for module in wrapped {
        let take = |w: &mut HashMap<String, Tensor>, leaf: &str| {
            w.remove(&format!("{module}.{leaf}"))
                .ok_or_else(|| user(format!("the run has no `{module}.{leaf}`")))
        };
        let a = take(weights, "lora_A.weight")?;
        let b = take(weights, "lora_B.weight")?;
        let w = take(weights, "weight")?;
        let delta = (b.matmul(&a)? * scale)?;
        if delta.dims() != w.dims() {
            return Err(user(format!(
                "`{module}`: the adapter's B·A has shape {:?}, the weight {:?}",
                delta.dims(),
                w.dims()
            )));
        }
        // A zero delta (alpha 0, an untrained B) keeps W bit-identical: adding it could
        // still flip −0.0 to +0.0.
        let zero = delta.abs()?.sum_all()?.to_scalar::<f32>()? == 0.0;
        let merged = if zero { w } else { (w + delta)? };
        // DoRA: each row scaled to its magnitude, m/‖W₀ + s·B·A‖ (PEFT's merge).
        let merged = match weights.remove(&format!("{module}.lora_magnitude_vector")) {
            Some(m) => {
                let g = m.div(&row_norms(&merged)?)?;
                merged.broadcast_mul(&g.unsqueeze(1)?)?
            }
            None => merged,
        };
        weights.insert(format!("{module}.weight"), merged);
    }
    Ok(())
}

/// IA3 folded into the weights it scales: W·diag(l) for a layer that scales its input,
/// diag(l)·W and l·b for one that scales its output (PEFT's `merge`).
pub fn fold_ia3(weights: &mut HashMap<String, Tensor>) -> Result<()> {
    let wrapped = wrapped(weights, ".ia3_l");
    for module in wrapped {
        let missing = |leaf: &str| user(format!("the run has no `{module}.{leaf}`"));
        let l = weights
            .remove(&format!("{module}.ia3_l"))
            .ok_or_else(|| missing("ia3_l"))?;
        let w = weights
            .get(&format!("{module}.weight"))
            .ok_or_else(|| missing("weight"))?
            .clone();
        let (out, inp) = w.dims2()?;
        let scaled = match l.dims() {
            [1, n] if *n == inp => w.broadcast_mul(&l)?,
            [n, 1] if *n == out => {
                let bias = format!("{module}.bias");
                if let Some(b) = weights.get(&bias) {
                    let b = b.mul(&l.flatten_all()?)?;
                    weights.insert(bias, b);
                }
                w.broadcast_mul(&l)?
            }
            d => {
                return Err(user(format!(
                    "`{module}.ia3_l` has shape {d:?}, the weight ({out}, {inp})"
                )))
            }
        };
        weights.insert(format!("{module}.weight"), scaled);
    }
    Ok(())
}
