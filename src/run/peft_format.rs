//! A LoRA run in Hugging Face PEFT's on-disk format (`adapter_config.json`,
//! `adapter_model.safetensors`), so `PeftModel.from_pretrained(base, RUN)` loads it.
//! Key names follow what PEFT 0.21's `save_pretrained` writes for a sequence classifier
//! (`scripts/peft_roundtrip.py`, fixture in `tests/fixtures/peft-lora-bert/`).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use anyhow::Result;
use candle_core::Tensor;
use serde_json::json;

use crate::error::{user, PathContext};
use crate::methods::MethodConfig;
use crate::methods::{is_head, is_layernorm};
use crate::model::{AdapterConfig, AdapterKind, Arch};
use crate::run::dir::{self as run_dir, RunInfo};

use super::peft_kinds as kinds;
pub use super::peft_kinds::{PeftAdapter, CONFIG, WEIGHTS};
use kinds::target_of;

/// Write the adapter and head of a LoRA run; other runs have nothing PEFT could load
/// (and lose any such files an overwritten LoRA run left behind). A union with LoRA
/// (`lora+layernorm`) trained more than a LoRA adapter holds: it is not exported, rather
/// than exported without the rest (`peft merge` writes it whole).
/// `run_fields`: fields of `adapter_config.json` only the finished run knows (AdaLoRA's
/// schedule and total steps); an empty object for the rest.
pub fn write(
    dir: &Path,
    info: &RunInfo,
    arch: Arch,
    trained: &HashMap<String, Tensor>,
    run_fields: &serde_json::Value,
) -> Result<()> {
    let single = info.train.method.name.parts().len() == 1;
    let adapter = crate::run::setup::adapter(&info.train);
    let peft_type = adapter
        .as_ref()
        .and_then(|cfg| cfg.kind.def().peft_config(cfg, &[]))
        .map(|(t, _)| t);
    // Bottleneck adapters: AdapterHub's files, in their own folder.
    if let Some(cfg) = adapter
        .as_ref()
        .filter(|c| single && matches!(c.kind, AdapterKind::Bottleneck { .. }))
    {
        for f in [CONFIG, WEIGHTS] {
            let p = dir.join(f);
            if p.exists() {
                std::fs::remove_file(&p).path_context("cannot remove", &p)?;
            }
        }
        return super::adapterhub::write(dir, info, arch, cfg, trained);
    }
    let cfg = match adapter {
        Some(cfg) if peft_type.is_some() && single => cfg,
        // LayerNorm tensors (and the head): PEFT's LN tuning. A head alone is not: PEFT
        // has no tuner for `modules_to_save` by itself, and an LN-tuning file without its
        // LayerNorms would not be one.
        None if trained.keys().any(|n| is_layernorm(n))
            && trained
                .keys()
                .all(|n| is_layernorm(n) || is_head(n) || n.starts_with("pooler.")) =>
        {
            return write_ln_tuning(dir, info, arch, trained)
        }
        _ => {
            for f in [CONFIG, WEIGHTS] {
                let p = dir.join(f);
                if p.exists() {
                    std::fs::remove_file(&p).path_context("cannot remove", &p)?;
                }
            }
            return Ok(());
        }
    };
    // Prompt learning wraps the transformers model itself (`base_model.classifier…`) and
    // saves its prompt as `prompt_embeddings` (a prefix's: the whole table, projected);
    // the other tuners wrap a tuner model.
    let prompt = matches!(
        cfg.kind,
        AdapterKind::Prompt { .. } | AdapterKind::Prefix { .. }
    );
    let (trained, fields_of_values) = cfg
        .kind
        .def()
        .peft_tensors(trained, &|n| arch.task_model_name(n))?;
    let trained = &trained;
    let tensors: HashMap<String, Tensor> = trained
        .iter()
        .map(|(n, t)| {
            let name = match prompt {
                true if n == crate::model::PROMPT => n.clone(),
                true => format!("base_model.{}", arch.task_model_name(n)),
                false => format!("base_model.model.{}", arch.task_model_name(n)),
            };
            (name, t.clone())
        })
        .collect();
    // PEFT matches a target by suffix, so LoRA's `output.dense` would also catch
    // `attention.output.dense`; then only the exact module paths say what was wrapped.
    // (IA3's targets match by suffix as PEFT's do.)
    let suffix_wraps_more = cfg.kind != AdapterKind::Ia3;
    let targets: Vec<String> =
        if suffix_wraps_more && cfg.targets.iter().any(|t| t == "output.dense") {
            let leaf = format!(".{}", cfg.kind.def().leaves()[0]);
            let mut v: Vec<String> = trained
                .keys()
                .filter_map(|k| k.strip_suffix(&leaf))
                .map(|m| format!("{}.{m}", arch.prefix()))
                .collect();
            v.sort();
            v
        } else {
            peft_targets(arch, &cfg.targets)?
        };
    let (task_type, saved) = head_of(info, trained)?;
    // What every PEFT adapter's config has, then what the kind adds.
    let Some((peft_type, fields)) = cfg.kind.def().peft_config(&cfg, &targets) else {
        return Ok(());
    };
    let mut config = json!({
        "peft_type": peft_type,
        "task_type": task_type,
        "base_model_name_or_path": info.base.path,
        "modules_to_save": saved,
        "inference_mode": true,
    });
    if let Some(c) = config.as_object_mut() {
        for more in [fields, fields_of_values, run_fields.clone()] {
            if let serde_json::Value::Object(more) = more {
                c.extend(more);
            }
        }
    }
    save(dir, &tensors, &config)
}

/// Our targets as PEFT's `target_modules`, which PEFT matches as a suffix of a module's
/// path: the projections by their own names (DeBERTa's `query` is `query_proj`), the dense
/// layers as our targets name them.
fn peft_targets(arch: Arch, targets: &[String]) -> Result<Vec<String>> {
    targets
        .iter()
        .map(|t| {
            let module = arch.adapter_module(t).map_err(user)?;
            Ok(module
                .strip_prefix("attention.self.")
                .unwrap_or(&module)
                .to_string())
        })
        .collect()
}

/// The head PEFT keeps in full (`modules_to_save`) and the task type it records.
fn head_of(
    info: &RunInfo,
    trained: &HashMap<String, Tensor>,
) -> Result<(&'static str, Vec<&'static str>)> {
    let qa = info.train.task_spec(info.labels.as_deref())?.is_qa();
    let (task_type, mut saved) = match qa {
        true => ("QUESTION_ANS", vec!["qa_outputs"]),
        // XLNet's classifier is the sequence summary and logits_proj.
        false if trained.keys().any(|n| n.starts_with("logits_proj.")) => {
            ("SEQ_CLS", vec!["sequence_summary", "logits_proj"])
        }
        false => ("SEQ_CLS", vec!["classifier"]),
    };
    // A pooler the base lacked (DeBERTa's always) was created and trained with the head.
    if trained.keys().any(|n| n.starts_with("pooler.")) {
        saved.push("pooler");
    }
    Ok((task_type, saved))
}

/// The adapter's tensors and config.json, each written atomically.
fn save(dir: &Path, tensors: &HashMap<String, Tensor>, config: &serde_json::Value) -> Result<()> {
    run_dir::save_tensors(&dir.join(WEIGHTS), tensors)?;
    run_dir::write_atomic(
        &dir.join(CONFIG),
        serde_json::to_string_pretty(config)?.as_bytes(),
    )
}

/// A run that trained LayerNorm only (layernorm, or a LayerNorm subset) as PEFT's
/// `LNTuningConfig` saves one: every `LayerNorm` module's tensors as
/// `….LayerNorm.ln_tuning_layers.{weight,bias}` (a subset's untouched elements hold their
/// pre-trained values, so the model is the same), the head in `modules_to_save`.
fn write_ln_tuning(
    dir: &Path,
    info: &RunInfo,
    arch: Arch,
    trained: &HashMap<String, Tensor>,
) -> Result<()> {
    let tensors: HashMap<String, Tensor> = trained
        .iter()
        .map(|(n, t)| {
            let name = match n.rsplit_once('.') {
                Some((module, leaf)) if is_layernorm(n) => {
                    format!("{module}.ln_tuning_layers.{leaf}")
                }
                _ => n.clone(),
            };
            (
                format!("base_model.model.{}", arch.task_model_name(&name)),
                t.clone(),
            )
        })
        .collect();
    let (task_type, saved) = head_of(info, trained)?;
    // PEFT matches the modules by name: BERT's `LayerNorm`, XLNet's `layer_norm`.
    let module = arch.family().layer_norm;
    let config = json!({
        "peft_type": "LN_TUNING",
        "task_type": task_type,
        "base_model_name_or_path": info.base.path,
        "target_modules": [module],
        "modules_to_save": saved,
        "inference_mode": true,
    });
    save(dir, &tensors, &config)
}

/// A LoRA adapter saved by Hugging Face PEFT's `save_pretrained` for a sequence
/// classifier: its settings, and its tensors under this crate's names (adapters as
/// `encoder.layer.N.<module>.lora_A.weight`, the head from `modules_to_save`).
/// The method section of a run that trained what a PEFT adapter holds: LayerNorm tensors
/// (`None`), IA3 vectors, or LoRA/DoRA adapters with their settings.
pub fn method_config(adapter: Option<&AdapterConfig>) -> Result<MethodConfig> {
    use crate::methods::{
        adalora, bottleneck, dora, hra, ia3, layernorm, lora, prefix, prompt, vera, MethodFlags,
    };
    let (method, flags) = match adapter {
        None => (layernorm::METHOD, MethodFlags::default()),
        Some(AdapterConfig {
            kind:
                AdapterKind::Bottleneck {
                    reduction,
                    placement,
                    activation,
                },
            ..
        }) => {
            let s = bottleneck::Settings {
                placement: *placement,
                reduction: *reduction,
                activation: Some(*activation),
            };
            let flags = MethodFlags {
                bottleneck: s.flags(),
                ..Default::default()
            };
            (bottleneck::METHOD, flags)
        }
        Some(c) if c.kind == AdapterKind::Adalora => {
            // Scoring does not run the budget schedule: the target is the initial rank.
            let s = adalora::Settings {
                init_r: c.r,
                target_r: c.r,
                alpha: c.alpha,
                dropout: c.dropout,
                targets: c.targets.clone(),
                ..adalora::Flags::default().resolve(&adalora::METHOD.into())?
            };
            let flags = MethodFlags {
                adalora: s.flags(),
                ..Default::default()
            };
            (adalora::METHOD, flags)
        }
        Some(AdapterConfig {
            kind: AdapterKind::Prefix { tokens, hidden },
            ..
        }) => {
            let shared = prompt::Settings {
                tokens: *tokens,
                init_text: None,
            };
            let s = prefix::Settings { hidden: *hidden };
            let flags = MethodFlags {
                prompt: shared.flags(),
                prefix: s.flags(),
                ..Default::default()
            };
            (prefix::METHOD, flags)
        }
        Some(AdapterConfig {
            kind: AdapterKind::Prompt { tokens },
            ..
        }) => {
            let s = prompt::Settings {
                tokens: *tokens,
                init_text: None,
            };
            let flags = MethodFlags {
                prompt: s.flags(),
                ..Default::default()
            };
            (prompt::METHOD, flags)
        }
        Some(
            c @ AdapterConfig {
                kind: AdapterKind::Vera { key, d_initial, .. },
                ..
            },
        ) => {
            let s = vera::Settings {
                r: c.r,
                targets: c.targets.clone(),
                seed: *key,
                dropout: c.dropout,
                d_initial: *d_initial,
            };
            let flags = MethodFlags {
                vera: s.flags(),
                ..Default::default()
            };
            (vera::METHOD, flags)
        }
        Some(c) if c.kind == AdapterKind::Hra => {
            let s = hra::Settings {
                r: c.r,
                targets: c.targets.clone(),
                orth: None,
            };
            let flags = MethodFlags {
                hra: s.flags(),
                ..Default::default()
            };
            (hra::METHOD, flags)
        }
        Some(c) if c.kind == AdapterKind::Ia3 => {
            let s = ia3::Settings {
                targets: c.targets.clone(),
            };
            let flags = MethodFlags {
                ia3: s.flags(),
                ..Default::default()
            };
            (ia3::METHOD, flags)
        }
        Some(c) => {
            let s = lora::Settings {
                r: c.r,
                alpha: c.alpha,
                dropout: c.dropout,
                rslora: c.rslora,
                targets: c.targets.clone(),
                // An optimizer setting: PEFT's adapter files hold none.
                plus_ratio: None,
                init: c.init,
            };
            let flags = MethodFlags {
                lora: s.flags(),
                ..Default::default()
            };
            let method = match c.kind {
                AdapterKind::Dora => dora::METHOD,
                _ => lora::METHOD,
            };
            (method, flags)
        }
    };
    flags.resolve(method.into())
}

/// Read `dir`'s adapter_config.json and adapter_model.safetensors for a base model of
/// `arch`. Adapters this crate cannot run the same way are refused by name: other PEFT
/// types, per-layer ranks or alphas, trained biases, some layers only.
pub fn read(dir: &Path, arch: Arch) -> Result<PeftAdapter> {
    if super::adapterhub::holds(dir) {
        return super::adapterhub::read(dir, arch);
    }
    use crate::model::adapter::TARGETS;
    use crate::model::{AdapterConfig, AdapterKind};
    let cfg_path = dir.join(CONFIG);
    let text = std::fs::read_to_string(&cfg_path)
        .path_context("not a PEFT adapter directory: cannot read", &cfg_path)?;
    let cfg: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| user(format!("{}: {e}", cfg_path.display())))?;
    let at = |key: &str, why: String| user(format!("{}: `{key}` {why}", cfg_path.display()));
    let field = |key: &str| cfg.get(key).filter(|v| !v.is_null());
    match field("peft_type").and_then(|v| v.as_str()) {
        Some("LORA") => {}
        Some("IA3") => return kinds::read_ia3(dir, arch, &cfg, &at),
        Some("HRA") => return kinds::read_hra(dir, arch, &cfg, &at),
        Some("ADALORA") => return kinds::read_adalora(dir, arch, &cfg, &at),
        Some("VERA") => return kinds::read_vera(dir, arch, &cfg, &at),
        Some("PROMPT_TUNING") => return kinds::read_prompt(dir, arch, &cfg, &at, false),
        Some("PREFIX_TUNING") => return kinds::read_prompt(dir, arch, &cfg, &at, true),
        Some("LN_TUNING") => return kinds::read_ln_tuning(dir, arch),
        other => {
            return Err(at(
                "peft_type",
                format!("is {other:?}; only LORA, ADALORA, IA3, HRA, VERA, PROMPT_TUNING, PREFIX_TUNING and LN_TUNING adapters load"),
            ))
        }
    }
    if let Some(t) = field("task_type").and_then(|v| v.as_str()) {
        if t != "SEQ_CLS" {
            return Err(at(
                "task_type",
                format!("is {t}; only sequence-classification (SEQ_CLS) adapters score"),
            ));
        }
    }
    if field("fan_in_fan_out").and_then(|v| v.as_bool()) == Some(true) {
        return Err(at(
            "fan_in_fan_out",
            "is true: fan_in_fan_out (Conv1D weights) does not apply to BERT-family models".into(),
        ));
    }
    let dora = field("use_dora").and_then(|v| v.as_bool()) == Some(true);
    if let Some(b) = field("bias").and_then(|v| v.as_str()) {
        if b != "none" {
            return Err(at(
                "bias",
                format!("is {b}; adapters with trained biases are not supported"),
            ));
        }
    }
    for key in ["rank_pattern", "alpha_pattern"] {
        if field(key)
            .and_then(|v| v.as_object())
            .is_some_and(|o| !o.is_empty())
        {
            return Err(at(
                key,
                "sets per-module ranks or alphas, which are not supported".into(),
            ));
        }
    }
    if field("layers_to_transform").is_some() {
        return Err(at(
            "layers_to_transform",
            "limits the adapter to some layers, which is not supported".into(),
        ));
    }
    let init = lora_init(field("init_lora_weights"), &at)?;
    let r = field("r")
        .and_then(|v| v.as_u64())
        .filter(|r| *r > 0)
        .ok_or_else(|| at("r", "is missing or not a positive integer".into()))?
        as usize;
    let alpha = field("lora_alpha")
        .and_then(|v| v.as_f64())
        .ok_or_else(|| at("lora_alpha", "is missing or not a number".into()))?;
    let dropout = field("lora_dropout")
        .and_then(|v| v.as_f64())
        .unwrap_or(0.0);
    // torch's nn.Dropout refuses it too; a run rebuilt from it would name --lora-dropout.
    if !(0.0..1.0).contains(&dropout) {
        return Err(at("lora_dropout", format!("is {dropout}, outside [0, 1)")));
    }

    let weights_path = dir.join(WEIGHTS);
    let raw = run_dir::load_tensors(&weights_path)?;
    let prefix = format!("{}.", arch.prefix());
    let mut tensors = HashMap::new();
    let mut kinds: Vec<String> = Vec::new();
    // The modules the tensors adapt, as `encoder.layer.N.<module>`.
    let mut wrapped: BTreeSet<String> = BTreeSet::new();
    for (key, t) in raw {
        let name = key.strip_prefix("base_model.model.").unwrap_or(&key);
        // PEFT's copy of a module it trains in full, under the adapter's name.
        let name = name.replace(".modules_to_save.default.", ".");
        let name = name.strip_prefix(&prefix).unwrap_or(&name).to_string();
        let magnitude = name.strip_suffix(".lora_magnitude_vector");
        if magnitude.is_some() && !dora {
            return Err(user(format!(
                "{}: `{key}` is a DoRA magnitude, but {} does not set `use_dora`",
                weights_path.display(),
                cfg_path.display()
            )));
        }
        if let Some(module) = name
            .strip_suffix(".lora_A.weight")
            .or_else(|| name.strip_suffix(".lora_B.weight"))
            .or(magnitude)
        {
            let kind = target_of(module, arch).ok_or_else(|| {
                user(format!(
                    "{}: `{key}` wraps a module this crate cannot adapt (expected one of {})",
                    weights_path.display(),
                    TARGETS.join(", ")
                ))
            })?;
            if !kinds.iter().any(|k| k == kind) {
                kinds.push(kind.to_string());
            }
            wrapped.insert(module.to_string());
        } else if !is_head(&name) && !name.starts_with("pooler.") {
            return Err(user(format!(
                "{}: `{key}` is neither a LoRA tensor nor the classifier",
                weights_path.display()
            )));
        }
        tensors.insert(name, t);
    }
    if kinds.is_empty() {
        return Err(user(format!(
            "{}: no lora_A/lora_B tensors",
            weights_path.display()
        )));
    }
    // A head that exists only in the base (never saved) would not be this adapter's.
    if !tensors.keys().any(|k| is_head(k)) {
        return Err(user(format!(
            "{}: no classifier tensors; save the adapter with modules_to_save=[\"classifier\"] \
             (PEFT's default for SEQ_CLS)",
            weights_path.display()
        )));
    }
    kinds.sort_by_key(|k| TARGETS.iter().position(|t| t == k));
    check_targets(field("target_modules"), arch, &wrapped, &at)?;
    if dora {
        // Each lora_A needs its magnitude: without it the layer would start from ‖W₀‖.
        if let Some(k) = tensors.keys().find(|k| {
            k.strip_suffix(".lora_A.weight")
                .is_some_and(|m| !tensors.contains_key(&format!("{m}.lora_magnitude_vector")))
        }) {
            return Err(user(format!(
                "{}: `{k}` has no lora_magnitude_vector beside it, which a DoRA adapter \
                 (`use_dora`) needs",
                weights_path.display()
            )));
        }
    }
    Ok(PeftAdapter {
        config: Some(AdapterConfig {
            kind: if dora {
                AdapterKind::Dora
            } else {
                AdapterKind::Lora
            },
            r,
            alpha,
            dropout,
            targets: kinds,
            rslora: field("use_rslora").and_then(|v| v.as_bool()) == Some(true),
            init,
        }),
        tensors,
    })
}

/// `init_lora_weights` of a saved LoRA adapter. A trained A and B make PEFT's draws
/// (true, false, "gaussian") moot; "pissa" and "olora" matter: PEFT takes their start out
/// of the base weight again when it loads such an adapter, and so does this crate. Other
/// starts (a randomised SVD, LoftQ, EVA, CorDA) leave a base weight that cannot be found
/// again here, and are refused by name.
fn lora_init(
    value: Option<&serde_json::Value>,
    at: &dyn Fn(&str, String) -> anyhow::Error,
) -> Result<Option<crate::model::adapter::LoraInit>> {
    use crate::model::adapter::LoraInit;
    let Some(v) = value.filter(|v| !v.is_boolean()) else {
        return Ok(None);
    };
    match v.as_str() {
        Some("gaussian") => Ok(Some(LoraInit::Gaussian)),
        Some("pissa") => Ok(Some(LoraInit::Pissa)),
        Some("olora") => Ok(Some(LoraInit::Olora)),
        _ => Err(at(
            "init_lora_weights",
            format!(
                "is {v}: only true, false, \"gaussian\", \"pissa\" and \"olora\" starts \
                 can be rebuilt here (PiSSA's randomised SVD and data-driven starts cannot)"
            ),
        )),
    }
}

/// PEFT builds the adapter's modules from `target_modules`, not from the tensors: it
/// refuses targets that match no module of the model ("Target modules ... not found in
/// the base model"), and leaves tensors of a module they do not name unloaded. Both are
/// refused here, so that the adapter scores as it would in Python. A list matches a
/// module whose path is the name or ends with `.name`, as PEFT matches it; a string is a
/// regular expression (or `all-linear`), which this crate does not evaluate.
fn check_targets(
    targets: Option<&serde_json::Value>,
    arch: Arch,
    wrapped: &BTreeSet<String>,
    at: &impl Fn(&str, String) -> anyhow::Error,
) -> Result<()> {
    use crate::model::adapter::TARGETS;
    let list: Vec<&str> = match targets {
        None | Some(serde_json::Value::String(_)) => return Ok(()),
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| at("target_modules", format!("holds {v}, not a module name")))
            })
            .collect::<Result<_>>()?,
        Some(other) => {
            return Err(at(
                "target_modules",
                format!("is {other}; a list of module names or a pattern is expected"),
            ))
        }
    };
    let names = |path: &str| {
        list.iter()
            .any(|t| path == *t || path.ends_with(&format!(".{t}")))
    };
    let prefix = arch.prefix();
    // The modules of the model an adapter can wrap, in the layers the tensors reach.
    let modules: Vec<String> = TARGETS
        .iter()
        .filter_map(|t| arch.adapter_module(t).ok())
        .collect();
    let layers: BTreeSet<&str> = wrapped
        .iter()
        .filter_map(|m| m.strip_prefix("encoder.layer.")?.split_once('.'))
        .map(|(layer, _)| layer)
        .collect();
    let found = layers.iter().any(|l| {
        modules
            .iter()
            .any(|m| names(&format!("{prefix}.encoder.layer.{l}.{m}")))
    });
    if !found {
        return Err(at(
            "target_modules",
            format!(
                "{list:?} match no module of the base model (its adaptable modules end in \
                 {}); PEFT refuses such an adapter",
                modules.join(", ")
            ),
        ));
    }
    if let Some(m) = wrapped.iter().find(|m| !names(&format!("{prefix}.{m}"))) {
        return Err(at(
            "target_modules",
            format!(
                "{list:?} does not name `{prefix}.{m}`, which {WEIGHTS} adapts: PEFT would \
                 build no adapter there and leave those tensors unloaded"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(arch: Arch, targets: serde_json::Value, wrapped: &[&str]) -> Result<()> {
        let at = |key: &str, why: String| user(format!("adapter_config.json: `{key}` {why}"));
        let wrapped = wrapped.iter().map(|m| m.to_string()).collect();
        check_targets(Some(&targets), arch, &wrapped, &at)
    }

    #[test]
    fn target_modules_match_as_peft_matches_them() {
        let (q0, q1) = (
            "encoder.layer.0.attention.self.query",
            "encoder.layer.1.attention.self.query",
        );
        // By name, by full path (as `write` exports output.dense), by any suffix.
        assert!(check(Arch::Bert, json!(["query"]), &[q0, q1]).is_ok());
        assert!(check(
            Arch::Bert,
            json!([
                "bert.encoder.layer.0.output.dense",
                "bert.encoder.layer.1.output.dense"
            ]),
            &[
                "encoder.layer.0.output.dense",
                "encoder.layer.1.output.dense"
            ]
        )
        .is_ok());
        assert!(check(Arch::Bert, json!(["self.query"]), &[q0]).is_ok());
        // DeBERTa v2's projections are `query_proj`; a regular expression is not evaluated.
        assert!(check(
            Arch::DebertaV2,
            json!(["query_proj"]),
            &["encoder.layer.0.attention.self.query_proj"]
        )
        .is_ok());
        assert!(check(Arch::Bert, json!(".*query"), &[q0]).is_ok());

        let err = check(Arch::Bert, json!(["foo"]), &[q0])
            .unwrap_err()
            .to_string();
        assert!(err.contains("[\"foo\"] match no module"), "{err}");
        // A suffix must end at a dot: `uery` is no module's name.
        let err = check(Arch::Bert, json!(["uery"]), &[q0])
            .unwrap_err()
            .to_string();
        assert!(err.contains("match no module"), "{err}");
        // Only layer 0 named: PEFT would leave layer 1's tensors unloaded.
        let err = check(
            Arch::Bert,
            json!(["bert.encoder.layer.0.attention.self.query"]),
            &[q0, q1],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`bert.encoder.layer.1.attention.self.query`"),
            "{err}"
        );
        let err = check(Arch::Bert, json!(7), &[q0]).unwrap_err().to_string();
        assert!(err.contains("`target_modules` is 7"), "{err}");
    }
}
