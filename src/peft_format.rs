//! A LoRA run in Hugging Face PEFT's on-disk format (`adapter_config.json`,
//! `adapter_model.safetensors`), so `PeftModel.from_pretrained(base, RUN)` loads it.
//! Key names follow what PEFT 0.21's `save_pretrained` writes for a sequence classifier
//! (`scripts/peft_roundtrip.py`, fixture in `tests/fixtures/peft-lora-bert/`).

use std::collections::HashMap;
use std::path::Path;

use anyhow::Result;
use candle_core::Tensor;
use serde_json::json;

use crate::error::PathContext;
use crate::methods::is_head;
use crate::model::{AdapterKind, Arch};
use crate::run_dir::{self, RunInfo};

pub const CONFIG: &str = "adapter_config.json";
pub const WEIGHTS: &str = "adapter_model.safetensors";

/// Write the adapter and head of a LoRA run; other runs have nothing PEFT could load
/// (and lose any such files an overwritten LoRA run left behind).
pub fn write(
    dir: &Path,
    info: &RunInfo,
    arch: Arch,
    trained: &HashMap<String, Tensor>,
) -> Result<()> {
    let cfg = match info.train.adapter() {
        Some(cfg) if cfg.kind == AdapterKind::Lora => cfg,
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
    let tensors: HashMap<String, Tensor> = trained
        .iter()
        .map(|(n, t)| {
            let name = if is_head(n) {
                format!("base_model.model.{n}")
            } else {
                format!("base_model.model.{}.{n}", arch.prefix())
            };
            (name, t.clone())
        })
        .collect();
    // PEFT matches a target by suffix, so `output.dense` would also catch
    // `attention.output.dense`; then only the exact module paths say what was wrapped.
    let targets: Vec<String> = if cfg.targets.iter().any(|t| t == "output.dense") {
        let mut v: Vec<String> = trained
            .keys()
            .filter_map(|k| k.strip_suffix(".lora_A.weight"))
            .map(|m| format!("{}.{m}", arch.prefix()))
            .collect();
        v.sort();
        v
    } else {
        cfg.targets.clone()
    };
    let config = json!({
        "peft_type": "LORA",
        "task_type": "SEQ_CLS",
        "base_model_name_or_path": info.base.path,
        "r": cfg.r,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": targets,
        "modules_to_save": ["classifier"],
        "bias": "none",
        "fan_in_fan_out": false,
        "init_lora_weights": true,
        "inference_mode": true,
        "use_rslora": false,
        "use_dora": false,
    });
    run_dir::save_tensors(&dir.join(WEIGHTS), &tensors)?;
    run_dir::write_atomic(
        &dir.join(CONFIG),
        serde_json::to_string_pretty(&config)?.as_bytes(),
    )
}
