//! Fuzz targets for the readers of files a command reads back: safetensors (a model's
//! weights and a run's tensors), PyTorch's pickle (`pytorch_model.bin`), a model's
//! `config.json`, a run's `config.json`, a grid plan (TOML) and a resume checkpoint. Each starts from a real
//! file and mutates it (bytes flipped, set to a structural character, cut, spliced, and
//! in a safetensors file aimed at the JSON header); whatever comes out, the reader returns
//! a value or a user error (exit 2), never panics, never aborts.
//!
//! The suite runs a few cases of each (`PROPTEST_CASES` unset: 32); `scripts/fuzz.sh`
//! runs them for minutes with a large `PROPTEST_CASES` in release mode.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{Device, Tensor, Var};
use peft::error::is_user_error;
use proptest::prelude::*;

use crate::common::fixture_dir;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(32),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// One edit of a file's bytes, at a position given as a fraction of its length (so the
/// same strategy serves files of any size), or of its first `focus` bytes.
#[derive(Debug, Clone)]
enum Edit {
    Set(f64, u8),
    Cut(f64),
    Splice(f64, Vec<u8>),
    Drop(f64, usize),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let byte = prop_oneof![
        any::<u8>(),
        prop::sample::select(b"0123456789{}[]\",:-.eE \x00\xff]()asXJKMNtq".to_vec()),
    ];
    let edit = prop_oneof![
        4 => (0.0..1.0f64, byte).prop_map(|(p, b)| Edit::Set(p, b)),
        1 => (0.0..1.0f64).prop_map(Edit::Cut),
        2 => (0.0..1.0f64, prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(p, v)| Edit::Splice(p, v)),
        1 => (0.0..1.0f64, 1usize..64).prop_map(|(p, n)| Edit::Drop(p, n)),
    ];
    prop::collection::vec(edit, 1..6)
}

/// Apply `edits` to `bytes`, positions falling in the first `focus` bytes.
fn mutate(bytes: &[u8], edits: &[Edit], focus: usize) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for e in edits {
        let at = |p: f64, len: usize| ((p * focus.min(len) as f64) as usize).min(len);
        match e {
            Edit::Set(p, v) => {
                if !b.is_empty() {
                    let i = at(*p, b.len()).min(b.len() - 1);
                    b[i] = *v;
                }
            }
            Edit::Cut(p) => {
                let i = at(*p, b.len());
                b.truncate(i);
            }
            Edit::Splice(p, v) => {
                let i = at(*p, b.len());
                b.splice(i..i, v.iter().copied());
            }
            Edit::Drop(p, n) => {
                let i = at(*p, b.len());
                let j = (i + n).min(b.len());
                b.drain(i..j);
            }
        }
    }
    b
}

/// Where the bytes of a safetensors file that say most are: the length and JSON header.
fn header_len(bytes: &[u8]) -> usize {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    8 + n
}

/// Ok, or an error `main` reports as bad input.
fn user_or_ok<T>(r: anyhow::Result<T>) -> Result<(), TestCaseError> {
    match r {
        Ok(_) => Ok(()),
        Err(e) => {
            prop_assert!(is_user_error(&e), "not a user error: {e:#}");
            Ok(())
        }
    }
}

/// A model directory: tiny-bert's config and tokenizer, `weights` under `name`.
fn model_dir(root: &Path, name: &str, weights: &[u8], config: &[u8]) -> PathBuf {
    let d = root.join("model");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("config.json"), config).unwrap();
    std::fs::write(d.join(name), weights).unwrap();
    d
}

fn read(path: PathBuf) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// A real resume checkpoint of two tensors, as `checkpoint::save` writes it.
fn checkpoint_bytes() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        let mut vars = BTreeMap::new();
        let mut moments = BTreeMap::new();
        for (name, shape) in [
            ("classifier.weight", &[2usize, 4][..]),
            ("classifier.bias", &[2][..]),
        ] {
            let t = Tensor::ones(shape, candle_core::DType::F32, &dev).unwrap();
            vars.insert(name.to_string(), Var::from_tensor(&t).unwrap());
            moments.insert(name.to_string(), (t.clone(), t));
        }
        let opt = peft::optim::OptimizerState {
            step: 3,
            rng_seed: 42,
            rng_word_pos: 7,
            moments,
        };
        let progress: peft::run::checkpoint::Progress = serde_json::from_value(serde_json::json!({
            "step": 3, "epoch": 0, "steps_in_epoch": 3, "dropout_calls": 12, "skipped": 0,
            "loss_sum": 2.0, "loss_n": 3, "tokens": 100, "examples": 12, "train_time": 1.0,
            "elapsed_s": 1.5, "best": null, "last": null
        }))
        .unwrap();
        let path = tmp.path().join("resume.safetensors");
        peft::run::checkpoint::save(&path, &vars, &opt, &progress, &Default::default()).unwrap();
        std::fs::read(path).unwrap()
    })
}

/// A real run's config.json, from a one-step tiny-bert LoRA run.
fn run_config_bytes() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        crate::common::write_rte(tmp.path(), 8, 4);
        let out = tmp.path().join("run");
        crate::common::train(
            &crate::common::fixture("tiny-bert"),
            tmp.path(),
            &out,
            &["--task", "rte", "--method", "lora", "--max-steps", "1"],
        );
        std::fs::read(out.join("config.json")).unwrap()
    })
}

const PLAN: &str = "output_dir = \"runs/g\"\n\n[base]\nmodel = \"m\"\ntask = \"rte\"\nmethod = \
                    \"lora\"\nlora_r = 8\nepochs = 3\n\n[grid]\nlr = [1e-4, 3e-4]\nseed = [1, 2, \
                    3]\nmethod = [\"lora\", \"layernorm\"]\n";

proptest! {
    #![proptest_config(config())]

    #[test]
    fn model_safetensors(edits in edits(), header in any::<bool>()) {
        let bytes = read(fixture_dir("tiny-bert").join("model.safetensors"));
        let focus = if header { header_len(&bytes) } else { bytes.len() };
        let tmp = tempfile::tempdir().unwrap();
        let dir = model_dir(
            tmp.path(),
            "model.safetensors",
            &mutate(&bytes, &edits, focus),
            &read(fixture_dir("tiny-bert").join("config.json")),
        );
        user_or_ok(peft::model::load::read_weights(&dir, peft::model::Arch::Bert))?;
    }

    #[test]
    fn run_tensors(edits in edits()) {
        let bytes = read(fixture_dir("tiny-bert").join("golden.safetensors"));
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("trainable.safetensors");
        std::fs::write(&path, mutate(&bytes, &edits, header_len(&bytes))).unwrap();
        user_or_ok(peft::run::dir::load_tensors(&path))?;
    }

    #[test]
    fn pytorch_pickle(edits in edits()) {
        let bytes = read(fixture_dir("tiny-bert-bin").join("pytorch_model.bin"));
        // PyTorch stores its zip entries uncompressed: data.pkl sits near the start, and
        // the reader parses it before any checksum is compared.
        let focus = bytes.len().min(4096);
        let tmp = tempfile::tempdir().unwrap();
        let dir = model_dir(
            tmp.path(),
            "pytorch_model.bin",
            &mutate(&bytes, &edits, focus),
            &read(fixture_dir("tiny-bert-bin").join("config.json")),
        );
        user_or_ok(peft::model::load::read_weights(&dir, peft::model::Arch::Bert))?;
    }

    #[test]
    fn model_config(edits in edits()) {
        let bytes = read(fixture_dir("tiny-bert").join("config.json"));
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        std::fs::write(d.join("config.json"), mutate(&bytes, &edits, bytes.len())).unwrap();
        user_or_ok(peft::model::ModelConfig::load(d))?;
    }

    #[test]
    fn run_config(edits in edits()) {
        let bytes = run_config_bytes();
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("config.json"), mutate(bytes, &edits, bytes.len())).unwrap();
        user_or_ok(peft::run::dir::RunInfo::load(tmp.path()))?;
    }

    #[test]
    fn grid_plan(edits in edits()) {
        let text = mutate(PLAN.as_bytes(), &edits, PLAN.len());
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("plan.toml");
        std::fs::write(&path, &text).unwrap();
        user_or_ok(peft::grid::Plan::load(&path))?;
    }

    #[test]
    fn resume_checkpoint(edits in edits(), header in any::<bool>()) {
        let bytes = checkpoint_bytes();
        let focus = if header { header_len(bytes) } else { bytes.len() };
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("resume.safetensors");
        std::fs::write(&path, mutate(bytes, &edits, focus)).unwrap();
        user_or_ok(peft::run::checkpoint::load(&path))?;
    }
}
