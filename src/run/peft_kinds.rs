//! Readers of PEFT's adapter types besides LoRA (`peft_format.rs` reads LoRA, DoRA and
//! their starts, and writes every type): IA3, HRA, VeRA and LN tuning, each under this
//! crate's tensor names with the head it saved.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Result;

use candle_core::Tensor;

use crate::error::user;
use crate::methods::{is_head, is_layernorm};
use crate::model::Arch;
use crate::run::dir as run_dir;

pub const CONFIG: &str = "adapter_config.json";
pub const WEIGHTS: &str = "adapter_model.safetensors";

pub struct PeftAdapter {
    /// None for LN tuning, whose tensors replace the base's LayerNorms.
    pub config: Option<crate::model::AdapterConfig>,
    pub tensors: HashMap<String, Tensor>,
}

/// The target (one of [`TARGETS`]) whose module, in this family's names, is the longest
/// that `module` (a wrapped module's path) ends with.
pub(super) fn target_of(module: &str, arch: Arch) -> Option<&'static str> {
    use crate::model::adapter::TARGETS;
    TARGETS
        .iter()
        .filter_map(|t| Some((*t, arch.adapter_module(t).ok()?)))
        .filter(|(_, m)| module.ends_with(&format!(".{m}")))
        .max_by_key(|(_, m)| m.len())
        .map(|(t, _)| t)
}

/// An IA3 adapter PEFT saved: its targets (a list, matched by suffix as ours are) must
/// make the dense output layers, and only those, its `feedforward_modules`, as our IA3
/// does; the vectors are `….ia3_l`.
pub(super) fn read_ia3(
    dir: &Path,
    arch: Arch,
    cfg: &serde_json::Value,
    at: &impl Fn(&str, String) -> anyhow::Error,
) -> Result<PeftAdapter> {
    use crate::model::adapter::{IA3_TARGETS, TARGETS};
    use crate::model::{AdapterConfig, AdapterKind};
    let list = |key: &str| -> Result<Vec<String>> {
        match cfg.get(key) {
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| at(key, "holds a non-string".into()))
                })
                .collect(),
            Some(serde_json::Value::Null) | None => Ok(Vec::new()),
            Some(other) => Err(at(
                key,
                format!("is {other}; a list of module names is supported"),
            )),
        }
    };
    // PEFT writes the module names; ours are the user's (`key`, not DeBERTa's `key_proj`).
    let targets: Vec<String> = list("target_modules")?
        .into_iter()
        .map(|t| {
            IA3_TARGETS
                .iter()
                .chain(TARGETS)
                .find(|ours| {
                    arch.adapter_module(ours).ok().is_some_and(|m| {
                        m == t || m.strip_prefix("attention.self.") == Some(t.as_str())
                    })
                })
                .map(|s| s.to_string())
                .ok_or_else(|| {
                    at(
                        "target_modules",
                        format!("names `{t}`, which this crate cannot scale"),
                    )
                })
        })
        .collect::<Result<_>>()?;
    if targets.is_empty() {
        return Err(at("target_modules", "is empty".into()));
    }
    let mut feedforward = list("feedforward_modules")?;
    feedforward.sort();
    let mut ours: Vec<String> = targets
        .iter()
        .filter(|t| t.ends_with("output.dense"))
        .cloned()
        .collect();
    ours.sort();
    if feedforward != ours {
        return Err(at(
            "feedforward_modules",
            format!(
                "is {feedforward:?}; this crate's IA3 scales the input of the dense output \
                 layers among its targets ({ours:?}) and the output of the rest"
            ),
        ));
    }
    let weights_path = dir.join(WEIGHTS);
    let prefix = format!("{}.", arch.prefix());
    let mut tensors = HashMap::new();
    for (key, t) in run_dir::load_tensors(&weights_path)? {
        let name = key.strip_prefix("base_model.model.").unwrap_or(&key);
        let name = name.replace(".modules_to_save.default.", ".");
        let name = name.strip_prefix(&prefix).unwrap_or(&name).to_string();
        if !name.ends_with(".ia3_l") && !is_head(&name) && !name.starts_with("pooler.") {
            return Err(user(format!(
                "{}: `{key}` is neither an IA3 vector nor the head",
                weights_path.display()
            )));
        }
        tensors.insert(name, t);
    }
    if !tensors.keys().any(|k| k.ends_with(".ia3_l")) {
        return Err(user(format!(
            "{}: no ia3_l tensors",
            weights_path.display()
        )));
    }
    Ok(PeftAdapter {
        config: Some(AdapterConfig {
            kind: AdapterKind::Ia3,
            r: 0,
            alpha: 0.0,
            dropout: 0.0,
            targets,
            rslora: false,
            init: None,
        }),
        tensors,
    })
}

/// An HRA adapter PEFT saved (`apply_GS` false): its `….hra_u` under our names, the head.
pub(super) fn read_hra(
    dir: &Path,
    arch: Arch,
    cfg: &serde_json::Value,
    at: &dyn Fn(&str, String) -> anyhow::Error,
) -> Result<PeftAdapter> {
    use crate::model::{AdapterConfig, AdapterKind};
    if cfg.get("apply_GS").and_then(|v| v.as_bool()) == Some(true) {
        return Err(at(
            "apply_GS",
            "is true: only HRA without Gram-Schmidt is supported".into(),
        ));
    }
    let r = cfg.get("r").and_then(|v| v.as_u64()).filter(|r| *r > 0);
    let r = r.ok_or_else(|| at("r", "is missing or not a positive integer".into()))? as usize;
    let weights_path = dir.join(WEIGHTS);
    let raw = run_dir::load_tensors(&weights_path)?;
    let (tensors, targets) = adapter_tensors(&weights_path, raw, arch, &[".hra_u"], "HRA")?;
    for (k, t) in tensors.iter().filter(|(k, _)| k.ends_with(".hra_u")) {
        if t.dims().get(1) != Some(&r) {
            return Err(user(format!(
                "{}: `{k}` has shape {:?}, not (in, {r})",
                weights_path.display(),
                t.dims()
            )));
        }
    }
    Ok(PeftAdapter {
        config: Some(AdapterConfig {
            kind: AdapterKind::Hra,
            r,
            alpha: 0.0,
            dropout: 0.0,
            targets,
            rslora: false,
            init: None,
        }),
        tensors,
    })
}

/// An AdaLoRA adapter PEFT saved: each module's kept triplets (`lora_A` rows, `lora_E`,
/// `lora_B` columns), put back at the places `rank_pattern` gives them among `init_r`,
/// the dropped ones zero (an E of zero computes nothing, as a dropped triplet). The
/// scaling is PEFT's: lora_alpha over init_r, whatever rank a module kept.
pub(super) fn read_adalora(
    dir: &Path,
    arch: Arch,
    cfg: &serde_json::Value,
    at: &dyn Fn(&str, String) -> anyhow::Error,
) -> Result<PeftAdapter> {
    use crate::model::{AdapterConfig, AdapterKind};
    let field = |k: &str| cfg.get(k).filter(|v| !v.is_null());
    let init_r = field("init_r")
        .and_then(|v| v.as_u64())
        .filter(|r| (1..=4096).contains(r));
    let init_r = init_r.ok_or_else(|| at("init_r", "is missing or not 1 to 4096".into()))? as usize;
    let alpha = field("lora_alpha").map_or(Some(8.0), |v| v.as_f64());
    let alpha = alpha.ok_or_else(|| at("lora_alpha", "is not a number".into()))?;
    let dropout = field("lora_dropout").map_or(Some(0.0), |v| v.as_f64());
    let dropout = dropout.ok_or_else(|| at("lora_dropout", "is not a number".into()))?;
    let pattern = match field("rank_pattern") {
        None => serde_json::Map::new(),
        Some(serde_json::Value::Object(m)) => m.clone(),
        Some(_) => return Err(at("rank_pattern", "is not an object".into())),
    };
    let weights_path = dir.join(WEIGHTS);
    let raw = run_dir::load_tensors(&weights_path)?;
    let leaves = [".lora_A", ".lora_E", ".lora_B"];
    let (mut tensors, targets) = adapter_tensors(&weights_path, raw, arch, &leaves, "AdaLoRA")?;
    let modules: Vec<String> = tensors
        .keys()
        .filter_map(|k| k.strip_suffix(".lora_E").map(str::to_string))
        .collect();
    for m in modules {
        let key = format!("{}.lora_E", arch.task_model_name(&m));
        let keep: Vec<bool> = match pattern.get(&key) {
            None => vec![true; init_r],
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| at("rank_pattern", format!("`{key}`: {e}")))?,
        };
        let kept: Vec<usize> = (0..keep.len()).filter(|&i| keep[i]).collect();
        if keep.len() != init_r {
            return Err(at(
                "rank_pattern",
                format!("`{key}` has {} places, not init_r {init_r}", keep.len()),
            ));
        }
        for (leaf, dim) in [("lora_A", 0), ("lora_E", 0), ("lora_B", 1)] {
            let name = format!("{m}.{leaf}");
            let t = tensors
                .remove(&name)
                .ok_or_else(|| user(format!("{}: `{m}` has no {leaf}", weights_path.display())))?;
            if t.rank() != 2 || t.dim(dim)? != kept.len() {
                return Err(user(format!(
                    "{}: `{name}` has shape {:?}, not {} kept triplets along dimension {dim}",
                    weights_path.display(),
                    t.dims(),
                    kept.len()
                )));
            }
            tensors.insert(name, spread(&t, dim, &kept, init_r)?);
        }
    }
    Ok(PeftAdapter {
        config: Some(AdapterConfig {
            kind: AdapterKind::Adalora,
            r: init_r,
            alpha,
            dropout,
            targets,
            rslora: false,
            init: None,
        }),
        tensors,
    })
}

/// `t`'s slices along `dim` put at places `at` of `n`, zero elsewhere.
fn spread(t: &Tensor, dim: usize, at: &[usize], n: usize) -> Result<Tensor> {
    let mut shape = t.dims().to_vec();
    shape[dim] = 1;
    let zero = Tensor::zeros(shape, t.dtype(), t.device())?;
    let slices: Vec<Tensor> = (0..n)
        .map(|i| match at.iter().position(|&j| j == i) {
            Some(k) => t.narrow(dim, k, 1),
            None => Ok(zero.clone()),
        })
        .collect::<candle_core::Result<_>>()?;
    Ok(Tensor::cat(&slices, dim)?)
}

/// An LN-tuning adapter PEFT saved: its `….ln_tuning_layers.{weight,bias}` are the
/// LayerNorms to use, under our names, with the head.
pub(super) fn read_ln_tuning(dir: &Path, arch: Arch) -> Result<PeftAdapter> {
    let weights_path = dir.join(WEIGHTS);
    let prefix = format!("{}.", arch.prefix());
    let mut tensors = HashMap::new();
    for (key, t) in run_dir::load_tensors(&weights_path)? {
        let name = key.strip_prefix("base_model.model.").unwrap_or(&key);
        let name = name
            .replace(".modules_to_save.default.", ".")
            .replace(".ln_tuning_layers.", ".");
        let name = name.strip_prefix(&prefix).unwrap_or(&name).to_string();
        if !is_layernorm(&name) && !is_head(&name) && !name.starts_with("pooler.") {
            return Err(user(format!(
                "{}: `{key}` is neither a LayerNorm nor the head",
                weights_path.display()
            )));
        }
        tensors.insert(name, t);
    }
    if !tensors.keys().any(|k| is_layernorm(k)) {
        return Err(user(format!(
            "{}: no ln_tuning_layers tensors",
            weights_path.display()
        )));
    }
    Ok(PeftAdapter {
        config: None,
        tensors,
    })
}

/// A VeRA adapter PEFT saved: its vectors under our names, and the head. The shared
/// projections are drawn again from `projection_prng_key` (`model::vera`); where the file
/// holds them (`save_projection`), they must be the ones the key draws, which PEFT's are.
pub(super) fn read_vera(
    dir: &Path,
    arch: Arch,
    cfg: &serde_json::Value,
    at: &dyn Fn(&str, String) -> anyhow::Error,
) -> Result<PeftAdapter> {
    use crate::model::{AdapterConfig, AdapterKind};
    let field = |k: &str| cfg.get(k).filter(|v| !v.is_null());
    if field("fan_in_fan_out").and_then(|v| v.as_bool()) == Some(true) {
        return Err(at(
            "fan_in_fan_out",
            "is true, which BERT-family layers are not".into(),
        ));
    }
    if field("bias")
        .and_then(|v| v.as_str())
        .is_some_and(|b| b != "none")
    {
        return Err(at("bias", "trains biases, which is not supported".into()));
    }
    if field("layers_to_transform").is_some() {
        return Err(at(
            "layers_to_transform",
            "limits the adapter to some layers".into(),
        ));
    }
    let r = field("r").and_then(|v| v.as_u64()).filter(|r| *r > 0);
    let r = r.ok_or_else(|| at("r", "is missing or not a positive integer".into()))? as usize;
    let key = field("projection_prng_key").map_or(Some(0), |v| v.as_u64());
    let key = key.ok_or_else(|| {
        at(
            "projection_prng_key",
            "is not a non-negative integer".into(),
        )
    })?;
    let d_initial = field("d_initial").map_or(Some(0.1), |v| v.as_f64());
    let d_initial = d_initial.ok_or_else(|| at("d_initial", "is not a number".into()))?;
    let dropout = field("vera_dropout").map_or(Some(0.0), |v| v.as_f64());
    let dropout = dropout.filter(|p| (0.0..1.0).contains(p));
    let dropout = dropout.ok_or_else(|| at("vera_dropout", "is not in [0, 1)".into()))?;
    let weights_path = dir.join(WEIGHTS);
    let mut raw = run_dir::load_tensors(&weights_path)?;
    // The shared projections, saved once at the model's root.
    let mut saved: HashMap<&str, Tensor> = HashMap::new();
    for p in ["vera_A", "vera_B"] {
        if let Some(t) = raw.remove(&format!("base_model.{p}")) {
            saved.insert(p, t);
        }
    }
    let leaves = [".vera_lambda_d", ".vera_lambda_b"];
    let (tensors, targets) = adapter_tensors(&weights_path, raw, arch, &leaves, "VeRA")?;
    if let (Some(a), Some(b)) = (saved.get("vera_A"), saved.get("vera_B")) {
        let span = (a.dim(1)?, b.dim(0)?);
        let (pa, pb) = crate::model::vera::projections(key, r, span, a.device())?;
        let off = |x: &Tensor, y: &Tensor| -> Result<bool> {
            Ok(x.dims() != y.dims() || crate::stats::max_abs(&(x - y)?)? > 1e-6)
        };
        if off(a, &pa)? || off(b, &pb)? {
            return Err(user(format!(
                "{}: vera_A and vera_B are not the projections projection_prng_key {key} \
                 draws; this crate draws them from the key",
                weights_path.display()
            )));
        }
    }
    Ok(PeftAdapter {
        config: Some(AdapterConfig {
            kind: AdapterKind::Vera {
                key,
                d_initial,
                max: (0, 0),
            },
            r,
            alpha: 0.0,
            dropout,
            targets,
            rslora: false,
            init: None,
        }),
        tensors,
    })
}

/// A prompt-tuning or prefix-tuning adapter PEFT saved (one set of virtual tokens): its
/// `prompt_embeddings` and the head (saved as `base_model.classifier…`: prompt learning
/// wraps the transformers model itself). A prefix's `prompt_embeddings` is its whole table
/// of keys and values (PEFT saves the projection's output), read as a prefix without one.
pub(super) fn read_prompt(
    dir: &Path,
    arch: Arch,
    cfg: &serde_json::Value,
    at: &dyn Fn(&str, String) -> anyhow::Error,
    prefix: bool,
) -> Result<PeftAdapter> {
    use crate::model::{prefix::EMBEDDING, AdapterConfig, AdapterKind, PROMPT};
    let field = |k: &str| cfg.get(k).filter(|v| !v.is_null());
    if field("num_transformer_submodules")
        .and_then(|v| v.as_u64())
        .unwrap_or(1)
        != 1
    {
        return Err(at(
            "num_transformer_submodules",
            "is not 1, as an encoder's is".into(),
        ));
    }
    let n = field("num_virtual_tokens")
        .and_then(|v| v.as_u64())
        .filter(|n| *n > 0 && *n <= 4096);
    let n = n.ok_or_else(|| at("num_virtual_tokens", "is missing or not 1 to 4096".into()))?;
    // A prefix's width: every layer's key and value, when the file says how many.
    let width = match (field("num_layers"), field("token_dim")) {
        (Some(l), Some(d)) if prefix => l.as_u64().zip(d.as_u64()).map(|(l, d)| 2 * l * d),
        _ => None,
    };
    let weights_path = dir.join(WEIGHTS);
    let strip = format!("{}.", arch.prefix());
    let mut tensors = HashMap::new();
    for (k, t) in run_dir::load_tensors(&weights_path)? {
        let name = k.strip_prefix("base_model.").unwrap_or(&k);
        let mut name = name.strip_prefix(&strip).unwrap_or(name).to_string();
        if name == PROMPT {
            let rows = t.dims().first() == Some(&(n as usize));
            let cols = width.is_none_or(|w| t.dims().get(1) == Some(&(w as usize)));
            if !rows || !cols || t.rank() != 2 {
                return Err(user(format!(
                    "{}: `{k}` has shape {:?}, not num_virtual_tokens {n} rows{}",
                    weights_path.display(),
                    t.dims(),
                    width.map_or(String::new(), |w| format!(
                        " of 2 × num_layers × token_dim = {w}"
                    ))
                )));
            }
            if prefix {
                name = EMBEDDING.to_string();
            }
        } else if !is_head(&name) && !name.starts_with("pooler.") {
            return Err(user(format!(
                "{}: `{k}` is neither the prompt nor the head",
                weights_path.display()
            )));
        }
        tensors.insert(name, t);
    }
    let table = if prefix { EMBEDDING } else { PROMPT };
    if !tensors.contains_key(table) || !tensors.keys().any(|k| is_head(k)) {
        return Err(user(format!(
            "{}: no prompt_embeddings, or no head",
            weights_path.display()
        )));
    }
    let tokens = n as usize;
    let kind = match prefix {
        true => AdapterKind::Prefix {
            tokens,
            hidden: None,
        },
        false => AdapterKind::Prompt { tokens },
    };
    Ok(PeftAdapter {
        config: Some(AdapterConfig {
            kind,
            r: 0,
            alpha: 0.0,
            dropout: 0.0,
            targets: Vec::new(),
            rslora: false,
            init: None,
        }),
        tensors,
    })
}

/// The tensors of a PEFT adapter file (`path`, read as `raw`) under this crate's names:
/// those of adapted modules (names ending in one of `leaves`), with the targets their
/// modules make, and the head; anything else is refused, naming the `kind` of adapter, as
/// is a file without both.
fn adapter_tensors(
    path: &Path,
    raw: HashMap<String, Tensor>,
    arch: Arch,
    leaves: &[&str],
    kind: &str,
) -> Result<(HashMap<String, Tensor>, Vec<String>)> {
    let prefix = format!("{}.", arch.prefix());
    let (mut tensors, mut targets) = (HashMap::new(), Vec::<String>::new());
    for (key, t) in raw {
        let name = key.strip_prefix("base_model.model.").unwrap_or(&key);
        let name = name.replace(".modules_to_save.default.", ".");
        let name = name.strip_prefix(&prefix).unwrap_or(&name).to_string();
        if let Some(module) = leaves.iter().find_map(|l| name.strip_suffix(l)) {
            let target = target_of(module, arch).ok_or_else(|| {
                user(format!(
                    "{}: `{key}` wraps a module this crate cannot adapt",
                    path.display()
                ))
            })?;
            if !targets.iter().any(|k| k == target) {
                targets.push(target.to_string());
            }
        } else if !is_head(&name) && !name.starts_with("pooler.") {
            return Err(user(format!(
                "{}: `{key}` is neither a {kind} tensor nor the head",
                path.display()
            )));
        }
        tensors.insert(name, t);
    }
    if targets.is_empty() || !tensors.keys().any(|k| is_head(k)) {
        return Err(user(format!(
            "{}: no {kind} tensors, or no head",
            path.display()
        )));
    }
    Ok((tensors, targets))
}
