//! The adapters a server holds: each a run of `peft train` rebuilt over the one base the
//! server was started with, its task head included. The base's frozen tensors are loaded
//! once and lent to every adapter's model (candle tensors share their storage), so an
//! adapter costs its own tensors, not another copy of the encoder; a run that changed the
//! base itself (full fine-tuning, PiSSA/OLoRA's residual) holds what it changed.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use anyhow::Result;
use candle_core::{Device, Tensor};

use crate::data::TaskSpec;
use crate::error::user;
use crate::model::params::ParamStore;
use crate::model::Model;
use crate::run::weights::{RunWeights, Which};
use crate::tokenize::TextEncoder;

/// One served adapter.
pub struct Served {
    pub name: String,
    /// Told apart from a later adapter loaded under the same name.
    pub id: u64,
    pub dir: PathBuf,
    pub method: String,
    pub task: &'static TaskSpec,
    /// How a SQuAD run picks its answers, as its settings say.
    pub spans: crate::data::squad::SpanOptions,
    pub model: Model,
    pub encoder: TextEncoder,
    /// Trainable tensors it holds beyond the shared base.
    pub own_params: usize,
    /// Every encoder weight is its own: served as a model of its own.
    pub full: bool,
}

/// The base encoder, for embeddings without an adapter.
pub struct Base {
    pub dir: PathBuf,
    pub model: Model,
    pub encoder: TextEncoder,
}

pub struct Adapters {
    base_dir: PathBuf,
    device: Device,
    /// The most tokens the base model reads.
    base_limit: usize,
    /// The base's tensors as the first model laid them out, lent to every later one.
    shared: Mutex<HashMap<String, Tensor>>,
    loaded: RwLock<BTreeMap<String, Arc<Served>>>,
    next_id: AtomicU64,
    /// Run-time loading is allowed below this folder only.
    root: Option<PathBuf>,
}

/// Names are path and URL segments: letters, digits, `-`, `_` and `.`, not starting with one.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    match ok {
        true => Ok(()),
        false => Err(user(format!(
            "adapter name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.', starting \
             with a letter or digit"
        ))),
    }
}

impl Adapters {
    /// The base model at `base_dir` on `device`, its own inputs (embeddings) cut to
    /// `max_len` tokens (each adapter keeps its run's); run-time loading below `root`.
    pub fn new(
        base_dir: &Path,
        device: Device,
        max_len: usize,
        root: Option<&Path>,
    ) -> Result<(Self, Base)> {
        let dir = crate::model::hub::resolve(base_dir, None)?;
        let (config, weights) = crate::model::read_checkpoint(&dir)?;
        let store = ParamStore::frozen(weights, device.clone());
        let model = Model::load(&store, &config, None)?;
        let encoder = TextEncoder::load(&dir, &config, max_len)?;
        let base_limit = config.max_tokens();
        let shared = store.all().into_iter().collect();
        let root = match root {
            Some(r) => Some(
                r.canonicalize()
                    .map_err(|e| user(format!("--adapter-root {}: {e}", r.display())))?,
            ),
            None => None,
        };
        let adapters = Self {
            base_dir: base_dir.to_path_buf(),
            device,
            base_limit,
            shared: Mutex::new(shared),
            loaded: RwLock::default(),
            next_id: AtomicU64::new(1),
            root,
        };
        Ok((
            adapters,
            Base {
                dir,
                model,
                encoder,
            },
        ))
    }

    pub fn get(&self, name: &str) -> Option<Arc<Served>> {
        self.read().get(name).cloned()
    }

    pub fn list(&self) -> Vec<Arc<Served>> {
        self.read().values().cloned().collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Served>>> {
        self.loaded.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Served>>> {
        self.loaded.write().unwrap_or_else(|p| p.into_inner())
    }

    /// A run directory at `dir` loaded as `name` (or, with `task`, an adapter Hugging Face
    /// PEFT saved, read as `peft eval --adapter` reads it), replacing one of that name only
    /// once it has loaded: a failing load leaves every adapter as it was.
    pub fn load(&self, name: &str, dir: &Path, task: Option<&str>) -> Result<Arc<Served>> {
        check_name(name)?;
        let served = Arc::new(self.build(name, dir, task)?);
        self.write().insert(name.to_string(), served.clone());
        Ok(served)
    }

    /// As [`load`](Self::load), for a path a client sent: relative to `--adapter-root`
    /// (or absolute inside it), with no `..`, and not leading out of it through a link.
    pub fn load_below_root(
        &self,
        name: &str,
        path: &str,
        task: Option<&str>,
    ) -> Result<Arc<Served>> {
        let Some(root) = &self.root else {
            return Err(crate::error::user(
                "loading adapters at run time is off: start the server with --adapter-root DIR",
            ));
        };
        let given = Path::new(path);
        if given
            .components()
            .any(|c| matches!(c, Component::ParentDir))
        {
            return Err(user(format!("path {path:?}: `..` is not allowed")));
        }
        let joined = root.join(given);
        let real = joined
            .canonicalize()
            .map_err(|e| user(format!("path {path:?}: {e}")))?;
        if !real.starts_with(root) {
            return Err(user(format!(
                "path {path:?} is outside --adapter-root (absolute, or through a link)"
            )));
        }
        self.load(name, &real, task)
    }

    /// Whether an adapter of that name was there to unload.
    pub fn unload(&self, name: &str) -> bool {
        self.write().remove(name).is_some()
    }

    fn build(&self, name: &str, dir: &Path, task: Option<&str>) -> Result<Served> {
        let mut run = match task {
            None => RunWeights::load(dir, Which::Best, Some(&self.base_dir), None)?,
            Some(task) => {
                let mut cfg = crate::settings::Overrides {
                    model: Some(self.base_dir.clone()),
                    task: Some(task.to_string()),
                    ..Default::default()
                }
                .resolve()?;
                // The task's default window, or the model's limit if lower: PEFT's files
                // do not say what the adapter was trained at.
                cfg.data.max_seq_len = cfg.data.max_seq_len.min(self.base_limit);
                RunWeights::external(cfg, Some(dir))?
            }
        };
        let task = run.info.train.task_spec(run.info.labels.as_deref())?;
        {
            // Lend the shared base: the freshly read copy of each untrained tensor goes.
            let shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
            for (n, t) in run.base.iter_mut() {
                if run.trained.contains_key(n) {
                    continue;
                }
                if let Some(s) = shared.get(n).filter(|s| s.dims() == t.dims()) {
                    *t = s.clone();
                }
            }
        }
        let model = run.model(1.0, &self.device)?;
        // The run's own window and tokenizer, as `peft predict` reads its inputs.
        let encoder = crate::run::setup::encoder(&run.info.train, &run.model_dir, &run.config)?;
        self.served(name, dir, &run, task, model, encoder)
    }

    fn served(
        &self,
        name: &str,
        dir: &Path,
        run: &RunWeights,
        task: &'static TaskSpec,
        model: Model,
        encoder: TextEncoder,
    ) -> Result<Served> {
        let own_params = run.trained.values().map(Tensor::elem_count).sum();
        Ok(Served {
            name: name.to_string(),
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            dir: dir.to_path_buf(),
            method: run.info.train.method.name.to_string(),
            task,
            spans: run.info.train.span_options(),
            model,
            encoder,
            own_params,
            full: run.info.trainable_params * 2 > run.info.total_params,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_safe_path_segments() {
        for ok in ["rte", "sst2-lora", "a.b_c"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "../x", "a/b", ".hidden", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
