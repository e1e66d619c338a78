//! What a run's settings build: where its examples come from, its tokenizer, and the
//! adapter its method adds. The settings say what; this builds it.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::data::{CustomData, CustomProblem, Source, CUSTOM};
use crate::error::user;
use crate::methods::{self, Methods};
use crate::model::AdapterConfig;
use crate::settings::{Overrides, TrainConfig};

/// The adapter a run of `method` adds when it sets none of its flags (None for methods
/// without adapters): the defaults of the settings table.
pub fn default_adapter(method: impl Into<Methods>) -> Option<AdapterConfig> {
    adapter(&TrainConfig::defaults_for(method)?)
}

/// Settings that start from another run (`--init`): its path recorded whole, so that the
/// run scores from any directory, and its base as `model` unless one is given.
pub fn with_init(mut o: Overrides) -> Result<Overrides> {
    if let Some(init) = &o.init {
        let init = std::fs::canonicalize(init)
            .map_err(|e| user(format!("--init {}: {e}", init.display())))?;
        if o.model.is_none() {
            o.model = Some(crate::run::dir::RunInfo::load(&init)?.base.path);
        }
        o.init = Some(init);
    }
    Ok(o)
}

/// Where this run's examples come from.
pub fn source(cfg: &TrainConfig) -> Result<Source> {
    if let (false, Some(train), Some(dev)) =
        (cfg.data.task == CUSTOM, &cfg.data.train, &cfg.data.dev)
    {
        return Ok(Source::QaFiles {
            train: train.clone(),
            dev: dev.clone(),
        });
    }
    if cfg.data.task != CUSTOM {
        return Ok(cfg
            .data
            .data_dir
            .clone()
            .map_or(Source::GlueHub, Source::GlueDir));
    }
    let need = |v: Option<&PathBuf>, flag: &str| {
        v.cloned()
            .ok_or_else(|| user(format!("--task custom needs --{flag} FILE")))
    };
    Ok(Source::Custom(CustomData {
        train: need(cfg.data.train.as_ref(), "train")?,
        dev: need(cfg.data.dev.as_ref(), "dev")?,
        text_columns: cfg.data.text_columns.clone().unwrap_or_default(),
        label_column: cfg.data.label_column.clone().unwrap_or_default(),
        problem: cfg.data.problem.unwrap_or(CustomProblem::Classification),
    }))
}

/// The run's tokenizer: `max_seq_len` tokens, SQuAD windows `doc_stride` apart.
pub fn encoder(
    cfg: &TrainConfig,
    dir: &Path,
    model: &crate::model::ModelConfig,
) -> Result<crate::tokenize::TextEncoder> {
    Ok(
        crate::tokenize::TextEncoder::load(dir, model, cfg.data.max_seq_len)?
            .with_doc_stride(cfg.doc_stride()),
    )
}

/// The adapter a run with lora, dora, ina, ia3 or loreft adds: each builds its own from its
/// settings (parsing allows one adapter kind per run).
/// The settings as the model's family takes them ([`crate::methods::MethodConfig::fit_to`]):
/// what a new run trains and records.
pub fn fit_to_model(cfg: &TrainConfig) -> Result<TrainConfig> {
    let mut cfg = cfg.clone();
    if adapter(&cfg).is_some() {
        let dir = crate::model::hub::resolve(&cfg.model.model, cfg.model.revision.as_deref())?;
        let arch = crate::model::ModelConfig::load(&dir)?.model_type;
        cfg.method.fit_to(arch.family());
    }
    Ok(cfg)
}

/// `cfg` fitted as the run `info` was ([`fit_to_model`] with the base it recorded), to
/// compare a planned run with one already there without reading the hub.
pub fn fit_like(cfg: &TrainConfig, info: &crate::run::dir::RunInfo) -> TrainConfig {
    let mut cfg = cfg.clone();
    if let Ok(m) = crate::model::ModelConfig::load(&info.base.path) {
        cfg.method.fit_to(m.model_type.family());
    }
    cfg
}

pub fn adapter(cfg: &TrainConfig) -> Option<AdapterConfig> {
    adapter_of_config(&cfg.method)
}

/// The adapter a method spec adds, if any.
pub fn adapter_of(spec: &methods::MethodSpec) -> Option<AdapterConfig> {
    adapter_of_config(&spec.config)
}

fn adapter_of_config(m: &methods::MethodConfig) -> Option<AdapterConfig> {
    if let Some(s) = &m.lora {
        return Some(s.adapter(m.name.has(methods::dora::METHOD)));
    }
    if let Some(s) = &m.adalora {
        return Some(s.adapter());
    }
    if let Some(s) = &m.ina {
        return Some(s.adapter());
    }
    if let Some(s) = &m.loreft {
        // Checked when the settings were resolved or read back.
        return s.adapter().ok();
    }
    if let Some(s) = &m.bottleneck {
        return Some(s.adapter());
    }
    if let Some(s) = &m.hra {
        return Some(s.adapter());
    }
    if let Some(s) = &m.vera {
        return Some(s.adapter());
    }
    if let (Some(s), Some(shared)) = (&m.prefix, &m.prompt) {
        return Some(s.adapter(shared.tokens));
    }
    if let Some(s) = &m.prompt {
        return Some(s.adapter());
    }
    m.ia3.as_ref().map(|s| s.adapter())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `peft bench` builds a method's adapter from these: they must be a run's defaults.
    #[test]
    fn default_adapters_are_a_runs_defaults() {
        for m in [
            methods::lora::METHOD,
            methods::ina::METHOD,
            methods::full::METHOD,
            methods::hra::METHOD,
            methods::vera::METHOD,
            methods::prompt::METHOD,
            methods::prefix::METHOD,
            methods::adalora::METHOD,
            methods::bottleneck::METHOD,
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
