//! What a run's settings build: where its examples come from, its tokenizer, and the
//! adapter its method adds. The settings say what; this builds it.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::data::{CustomData, CustomProblem, Source, CUSTOM};
use crate::error::user;
use crate::methods::{self, Methods};
use crate::model::reft::Positions;
use crate::model::{AdapterConfig, AdapterKind};
use crate::settings::TrainConfig;

/// The adapter a run of `method` adds when it sets none of its flags (None for methods
/// without adapters): the defaults of the settings table.
pub fn default_adapter(method: impl Into<Methods>) -> Option<AdapterConfig> {
    adapter(&TrainConfig::defaults_for(method)?)
}

/// Where this run's examples come from.
pub fn source(cfg: &TrainConfig) -> Result<Source> {
    if let (false, Some(train), Some(dev)) = (cfg.task == CUSTOM, &cfg.train_file, &cfg.dev_file) {
        return Ok(Source::QaFiles {
            train: train.clone(),
            dev: dev.clone(),
        });
    }
    if cfg.task != CUSTOM {
        return Ok(cfg
            .data_dir
            .clone()
            .map_or(Source::GlueHub, Source::GlueDir));
    }
    let need = |v: Option<&PathBuf>, flag: &str| {
        v.cloned()
            .ok_or_else(|| user(format!("--task custom needs --{flag} FILE")))
    };
    Ok(Source::Custom(CustomData {
        train: need(cfg.train_file.as_ref(), "train")?,
        dev: need(cfg.dev_file.as_ref(), "dev")?,
        text_columns: cfg.text_columns.clone().unwrap_or_default(),
        label_column: cfg.label_column.clone().unwrap_or_default(),
        problem: cfg.problem.unwrap_or(CustomProblem::Classification),
    }))
}

/// The run's tokenizer: `max_seq_len` tokens, SQuAD windows `doc_stride` apart.
pub fn encoder(
    cfg: &TrainConfig,
    dir: &Path,
    model: &crate::model::ModelConfig,
) -> Result<crate::tokenize::TextEncoder> {
    Ok(
        crate::tokenize::TextEncoder::load(dir, model, cfg.max_seq_len)?
            .with_doc_stride(cfg.doc_stride()),
    )
}

/// The adapter a run with lora, dora, ina or ia3 adds.
pub fn adapter(cfg: &TrainConfig) -> Option<AdapterConfig> {
    let m = &cfg.method;
    // Parsing allows one adapter kind per run, so at most one of these holds.
    if m.lora() {
        return Some(AdapterConfig {
            kind: if m.has(methods::dora::METHOD) {
                AdapterKind::Dora
            } else {
                AdapterKind::Lora
            },
            r: cfg.lora_r?,
            alpha: cfg.lora_alpha?,
            dropout: cfg.lora_dropout?,
            targets: cfg.lora_targets.clone()?,
            rslora: cfg.lora_rslora.unwrap_or(false),
        });
    }
    if m.has(methods::ina::METHOD) {
        return Some(AdapterConfig {
            kind: AdapterKind::Ina {
                inhibition: cfg.ina_inhibition?,
                activation: cfg.ina_activation?,
            },
            r: cfg.ina_r?,
            alpha: cfg.ina_alpha?,
            dropout: cfg.ina_dropout?,
            targets: cfg.ina_targets.clone()?,
            rslora: false,
        });
    }
    if m.has(methods::loreft::METHOD) {
        let p = Positions::parse(cfg.loreft_positions.as_deref()?).ok()?;
        return Some(AdapterConfig {
            kind: AdapterKind::Loreft {
                first: p.first,
                last: p.last,
            },
            r: cfg.loreft_r?,
            alpha: 0.0,
            dropout: cfg.loreft_dropout?,
            targets: cfg.loreft_layers.clone()?,
            rslora: false,
        });
    }
    if m.has(methods::ia3::METHOD) {
        return Some(AdapterConfig {
            kind: AdapterKind::Ia3,
            r: 0,
            alpha: 0.0,
            dropout: 0.0,
            targets: cfg.ia3_targets.clone()?,
            rslora: false,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Overrides;

    /// `peft bench` builds a method's adapter from these: they must be a run's defaults.
    #[test]
    fn default_adapters_are_a_runs_defaults() {
        for m in [
            methods::lora::METHOD,
            methods::ina::METHOD,
            methods::full::METHOD,
        ] {
            let run = Overrides {
                model: Some("m".into()),
                task: Some("RTE".into()),
                data_dir: Some("d".into()),
                method: Some(m.into()),
                ..Default::default()
            }
            .resolve()
            .unwrap();
            assert_eq!(default_adapter(m), adapter(&run));
        }
        assert!(default_adapter(methods::full::METHOD).is_none());
        assert_eq!(default_adapter(methods::ina::METHOD).unwrap().r, 4);
    }
}
