//! Bottleneck adapters in AdapterHub's own files, as its `save_adapter` writes them and
//! `load_adapter` reads them (adapters 1.3.0): `adapter_config.json` (the config under
//! `"config"`), `adapter.safetensors` (its tensors under the model's state-dict names,
//! `bert.encoder.layer.N.output.adapters.NAME.adapter_down.0.weight`),
//! `head_config.json` and `model_head.safetensors` (the model's own classifier). A run of
//! `--method adapter` writes them to `RUN/adapterhub/`, beside PEFT's files of other
//! methods; `peft eval --adapter DIR` reads them.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Result;
use candle_core::Tensor;
use serde_json::{json, Value};

use super::dir::{self as run_dir, RunInfo};
use super::peft_kinds::PeftAdapter;
use crate::error::{user, PathContext};
use crate::methods::is_head;
use crate::model::adapter::{BnActivation, Placement};
use crate::model::bottleneck::NAME;
use crate::model::{AdapterConfig, AdapterKind, Arch};

/// The folder of a run that holds them.
pub const DIR: &str = "adapterhub";
pub const CONFIG: &str = "adapter_config.json";
pub const WEIGHTS: &str = "adapter.safetensors";
const HEAD_CONFIG: &str = "head_config.json";
const HEAD_WEIGHTS: &str = "model_head.safetensors";

/// The library's version whose files these are.
const VERSION: &str = "adapters.1.3.0";

/// `SeqBnConfig`'s or `DoubleSeqBnConfig`'s fields for these settings: what the
/// library's `BnConfig` holds, with the placement's own and the activation given.
fn config(placement: Placement, reduction: usize, activation: BnActivation) -> Value {
    let houlsby = placement == Placement::Houlsby;
    json!({
        "mh_adapter": houlsby,
        "output_adapter": true,
        "original_ln_before": !houlsby,
        "original_ln_after": true,
        "residual_before_ln": true,
        "adapter_residual_before_ln": false,
        "ln_before": false,
        "ln_after": false,
        "is_parallel": false,
        "scaling": 1.0,
        "use_gating": false,
        "dropout": 0.0,
        "init_weights": "bert",
        "init_weights_seed": null,
        "non_linearity": match activation {
            BnActivation::Relu => "relu",
            BnActivation::Swish => "swish",
        },
        "reduction_factor": reduction,
        "phm_layer": false,
        "stochastic_depth": 0.0,
        "leave_out": [],
        "cross_adapter": false,
        "inv_adapter": null,
        "inv_adapter_reduction_factor": null,
    })
}

/// Write a bottleneck run's adapters and head to `run/adapterhub/`.
pub fn write(
    run: &Path,
    info: &RunInfo,
    arch: Arch,
    cfg: &AdapterConfig,
    trained: &HashMap<String, Tensor>,
) -> Result<()> {
    let AdapterKind::Bottleneck {
        reduction,
        placement,
        activation,
    } = cfg.kind
    else {
        return Ok(());
    };
    if info.train.task_spec(info.labels.as_deref())?.is_qa() {
        // The library's question-answering heads are its flex heads, not the model's own.
        return Ok(());
    }
    let dir = run.join(DIR);
    std::fs::create_dir_all(&dir).path_context("cannot create", &dir)?;
    let class = format!("{}ForSequenceClassification", arch.class_stem());
    let model = info.base.path.display().to_string();
    let (adapter, head): (HashMap<String, Tensor>, HashMap<String, Tensor>) = (
        trained
            .iter()
            .filter(|(n, _)| n.contains(".adapters."))
            .map(|(n, t)| (arch.task_model_name(n), t.clone()))
            .collect(),
        trained
            .iter()
            .filter(|(n, _)| is_head(n))
            .map(|(n, t)| (arch.task_model_name(n), t.clone()))
            .collect(),
    );
    run_dir::save_tensors(&dir.join(WEIGHTS), &adapter)?;
    run_dir::save_tensors(&dir.join(HEAD_WEIGHTS), &head)?;
    // The encoder's width: the up projection's rows.
    let d = trained
        .iter()
        .find(|(n, _)| n.ends_with(".adapter_up.weight"))
        .map_or(0, |(_, t)| t.dims()[0]);
    let adapter_config = json!({
        "config": config(placement, reduction, activation),
        "hidden_size": d,
        "model_class": class,
        "model_name": model,
        "model_type": arch.family().model_type,
        "name": NAME,
        "version": VERSION,
    });
    let labels: serde_json::Map<String, Value> = (0..info.num_labels)
        .map(|i| {
            let name = info.labels.as_ref().and_then(|l| l.get(i).cloned());
            (name.unwrap_or_else(|| format!("LABEL_{i}")), json!(i))
        })
        .collect();
    let head_config = json!({
        "config": null,
        "hidden_size": d,
        "label2id": labels,
        "model_class": class,
        "model_name": model,
        "model_type": arch.family().model_type,
        "name": null,
        "num_labels": info.num_labels,
        "version": VERSION,
    });
    for (file, v) in [(CONFIG, adapter_config), (HEAD_CONFIG, head_config)] {
        run_dir::write_atomic(
            &dir.join(file),
            serde_json::to_string_pretty(&v)?.as_bytes(),
        )?;
    }
    Ok(())
}

/// Whether `dir` holds AdapterHub's files rather than PEFT's.
pub fn holds(dir: &Path) -> bool {
    dir.join(WEIGHTS).is_file() && dir.join(HEAD_WEIGHTS).is_file()
}

/// AdapterHub's bottleneck adapter in `dir`, under this crate's names, with its head. Its
/// config must be one this crate runs (SeqBn's or DoubleSeqBn's arithmetic, ReLU or SiLU,
/// one reduction factor): any other key value is refused by name.
pub fn read(dir: &Path, arch: Arch) -> Result<PeftAdapter> {
    let path = dir.join(CONFIG);
    let text = std::fs::read_to_string(&path).path_context("cannot read", &path)?;
    let doc: Value =
        serde_json::from_str(&text).map_err(|e| user(format!("{}: {e}", path.display())))?;
    let c = doc.get("config").filter(|c| c.is_object()).ok_or_else(|| {
        user(format!(
            "{}: no `config` object (an AdapterHub adapter's)",
            path.display()
        ))
    })?;
    let at = |key: &str, why: &str| user(format!("{}: `config.{key}` {why}", path.display()));
    let flag = |k: &str| c.get(k).and_then(|v| v.as_bool());
    let placement = match (
        flag("mh_adapter"),
        flag("output_adapter"),
        flag("original_ln_before"),
    ) {
        (Some(false), Some(true), Some(true)) => Placement::Pfeiffer,
        (Some(true), Some(true), Some(false)) => Placement::Houlsby,
        _ => {
            return Err(at(
                "mh_adapter",
                "with output_adapter and original_ln_before is neither SeqBnConfig's nor \
                 DoubleSeqBnConfig's placement",
            ))
        }
    };
    for (key, want) in [
        ("original_ln_after", json!(true)),
        ("residual_before_ln", json!(true)),
        ("adapter_residual_before_ln", json!(false)),
        ("ln_before", json!(false)),
        ("ln_after", json!(false)),
        ("is_parallel", json!(false)),
        ("use_gating", json!(false)),
        ("phm_layer", json!(false)),
    ] {
        if c.get(key).is_some_and(|v| *v != want) {
            return Err(at(
                key,
                &format!("is not {want}, which this crate's adapters need"),
            ));
        }
    }
    if c.get("scaling")
        .and_then(|v| v.as_f64())
        .is_some_and(|s| s != 1.0)
    {
        return Err(at("scaling", "is not 1.0"));
    }
    let activation = match c.get("non_linearity").and_then(|v| v.as_str()) {
        Some("relu") => BnActivation::Relu,
        Some("swish") | Some("silu") => BnActivation::Swish,
        other => {
            return Err(at(
                "non_linearity",
                &format!("is {other:?}; relu or swish load"),
            ))
        }
    };
    let reduction = c
        .get("reduction_factor")
        .and_then(|v| v.as_f64())
        .filter(|r| *r >= 1.0);
    let reduction =
        reduction.ok_or_else(|| at("reduction_factor", "is not one number of 1 or more"))?;
    let prefix = format!("{}.", arch.prefix());
    let mut tensors = HashMap::new();
    for file in [WEIGHTS, HEAD_WEIGHTS] {
        for (k, t) in run_dir::load_tensors(&dir.join(file))? {
            let name = k.strip_prefix(&prefix).unwrap_or(&k);
            let ours = match name.split_once(".adapters.") {
                Some((module, rest)) => match rest.split_once('.') {
                    Some((_, leaf)) => format!("{module}.adapters.{NAME}.{leaf}"),
                    None => name.to_string(),
                },
                None => name.to_string(),
            };
            if !ours.contains(".adapters.") && !is_head(&ours) {
                return Err(user(format!(
                    "{}: `{k}` is neither an adapter tensor nor the head",
                    dir.join(file).display()
                )));
            }
            tensors.insert(ours, t);
        }
    }
    Ok(PeftAdapter {
        config: Some(AdapterConfig {
            kind: AdapterKind::Bottleneck {
                reduction: reduction as usize,
                placement,
                activation,
            },
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
