//! The checks a resolved configuration must pass, whoever gave its values: flags, a TOML
//! file, or a run's config.json read back.

use anyhow::Result;

use super::{Samples, TrainConfig};
use crate::error::user;
use crate::model::adapter::{IA3_TARGETS, TARGETS};
use crate::model::reft::Positions;

impl TrainConfig {
    pub(super) fn validate(&self) -> Result<()> {
        let bad = |key: &str, why: String| Err(user(format!("{key}: {why}")));
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("lr", format!("{} must be positive", self.lr));
        }
        for (key, v) in [
            ("epochs", self.epochs),
            ("batch_size", self.batch_size),
            ("grad_accum", self.grad_accum),
            ("eval_batch_size", self.eval_batch_size),
        ] {
            if v == 0 {
                return bad(key, "must be at least 1".into());
            }
        }
        for (key, v) in [
            ("max_steps", self.max_steps),
            ("eval_steps", self.eval_steps),
            ("save_steps", self.save_steps),
        ] {
            if v == Some(0) {
                return bad(key, "must be at least 1".into());
            }
        }
        for (key, v) in [("fraction", self.fraction), ("reserve", self.reserve)] {
            if let Some(v) = v {
                if !(v > 0.0 && v <= 1.0) {
                    return bad(key, format!("{v} is outside (0, 1]"));
                }
            }
        }
        // The adapters' own settings, each set only when its method is part of the run.
        if let Some(targets) = &self.ia3_targets {
            for t in targets {
                if !IA3_TARGETS.contains(&t.as_str()) && !TARGETS.contains(&t.as_str()) {
                    return bad(
                        "ia3_targets",
                        format!(
                            "unknown module `{t}` (expected one of {})",
                            TARGETS.join(", ")
                        ),
                    );
                }
            }
            if targets.is_empty() {
                return bad("ia3_targets", "name at least one module".into());
            }
        }
        if let Some(p) = &self.loreft_positions {
            Positions::parse(p).map_err(|e| user(format!("loreft_positions: {e}")))?;
        }
        if let (Some(r), Some(dropout), Some(layers)) =
            (self.loreft_r, self.loreft_dropout, &self.loreft_layers)
        {
            if r == 0 {
                return bad("loreft_r", "the rank must be at least 1".into());
            }
            if !(0.0..1.0).contains(&dropout) {
                return bad("loreft_dropout", format!("{dropout} is outside [0, 1)"));
            }
            if layers.is_empty() {
                return bad("loreft_layers", "name at least one layer, or `all`".into());
            }
            for t in layers {
                if t != "all" && t.parse::<usize>().is_err() {
                    return bad(
                        "loreft_layers",
                        format!("`{t}` is neither `all` nor a layer index"),
                    );
                }
            }
        }
        for (r, dropout, targets) in [
            (self.lora_r, self.lora_dropout, &self.lora_targets),
            (self.ina_r, self.ina_dropout, &self.ina_targets),
        ] {
            let (Some(r), Some(dropout), Some(targets)) = (r, dropout, targets) else {
                continue;
            };
            if r == 0 {
                return bad("lora_r/ina_r", "the rank must be at least 1".into());
            }
            if !(0.0..1.0).contains(&dropout) {
                return bad(
                    "lora_dropout/ina_dropout",
                    format!("{dropout} is outside [0, 1)"),
                );
            }
            if targets.is_empty() {
                return bad(
                    "lora_targets/ina_targets",
                    "name at least one module".into(),
                );
            }
            for t in targets {
                if !TARGETS.contains(&t.as_str()) {
                    return bad(
                        "lora_targets/ina_targets",
                        format!(
                            "unknown module `{t}` (expected one of {})",
                            TARGETS.join(", ")
                        ),
                    );
                }
            }
        }
        if self.fisher_samples == Some(Samples::Count(0)) || self.fisher_batch_mean == Some(0) {
            return bad(
                "fisher_samples/fisher_batch_mean",
                "must be at least 1".into(),
            );
        }
        if self.max_seq_len < 4 {
            return bad("max_seq_len", format!("{} is too short", self.max_seq_len));
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return bad(
                "warmup_ratio",
                format!("{} is outside [0, 1)", self.warmup_ratio),
            );
        }
        if self.weight_decay.is_nan()
            || self.weight_decay < 0.0
            || self.max_grad_norm.is_nan()
            || self.max_grad_norm < 0.0
        {
            return bad("weight_decay/max_grad_norm", "must not be negative".into());
        }
        Ok(())
    }
}
