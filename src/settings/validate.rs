//! The checks a resolved configuration must pass, whoever gave its values: flags, a TOML
//! file, or a run's config.json read back.

use anyhow::Result;

use super::TrainConfig;
use crate::error::user;

impl TrainConfig {
    pub(super) fn validate(&self) -> Result<()> {
        let bad = |key: &str, why: String| Err(user(format!("{key}: {why}")));
        if !(self.optimisation.lr > 0.0 && self.optimisation.lr.is_finite()) {
            return bad("lr", format!("{} must be positive", self.optimisation.lr));
        }
        for (key, v) in [
            ("epochs", self.optimisation.epochs),
            ("batch_size", self.optimisation.batch_size),
            ("grad_accum", self.optimisation.grad_accum),
            ("eval_batch_size", self.output.eval_batch_size),
        ] {
            if v == 0 {
                return bad(key, "must be at least 1".into());
            }
        }
        for (key, v) in [
            ("max_train_examples", self.data.max_train_examples),
            ("max_steps", self.optimisation.max_steps),
            ("eval_steps", self.output.eval_steps),
            ("save_steps", self.output.save_steps),
        ] {
            if v == Some(0) {
                return bad(key, "must be at least 1".into());
            }
        }
        self.method.check()?;
        if self.data.max_seq_len < 4 {
            return bad(
                "max_seq_len",
                format!("{} is too short", self.data.max_seq_len),
            );
        }
        if !(0.0..1.0).contains(&self.optimisation.warmup_ratio) {
            return bad(
                "warmup_ratio",
                format!("{} is outside [0, 1)", self.optimisation.warmup_ratio),
            );
        }
        if self.optimisation.weight_decay.is_nan()
            || self.optimisation.weight_decay < 0.0
            || self.optimisation.max_grad_norm.is_nan()
            || self.optimisation.max_grad_norm < 0.0
        {
            return bad("weight_decay/max_grad_norm", "must not be negative".into());
        }
        Ok(())
    }
}
