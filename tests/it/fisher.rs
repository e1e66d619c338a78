//! Per-example Fisher information against transformers: the golden fixtures hold the mean
//! of squared per-example gradients over the batch's first three examples.

use std::path::Path;

use candle_core::{DType, Device};
use peft::data::dataset::Dataset;
use peft::data::tasks::Label;
use peft::fisher::{estimate, Estimator, FisherOptions};
use peft::model::{read_checkpoint, Model, ParamStore};
use peft::tokenize::Encoded;

fn check(kind: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(kind);
    let (cfg, weights) = read_checkpoint(&dir).unwrap();
    let g = candle_core::safetensors::load(dir.join("golden.safetensors"), &Device::Cpu).unwrap();
    let ids = g["input_ids"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec2::<u32>()
        .unwrap();
    let types = g["token_type_ids"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec2::<u32>()
        .unwrap();
    let mask = g["attention_mask"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec2::<u32>()
        .unwrap();
    let labels = g["labels"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec1::<u32>()
        .unwrap();
    let inputs: Vec<Encoded> = (0..3)
        .map(|i| {
            let n = mask[i].iter().sum::<u32>() as usize;
            Encoded {
                ids: ids[i][..n].to_vec(),
                type_ids: types[i][..n].to_vec(),
            }
        })
        .collect();
    let data = Dataset {
        split: "train".into(),
        ids: vec!["0".into(), "1".into(), "2".into()],
        inputs,
        labels: labels[..3].iter().map(|&c| Label::Class(c)).collect(),
        qa: None,
    };
    let store = ParamStore::new(weights, Device::Cpu, 0, Box::new(|_| true));
    let model = Model::load(&store, &cfg, Some(3)).unwrap();
    let opts = FisherOptions {
        samples: None,
        estimator: Estimator::PerExample,
        seed: 1,
    };
    let fisher = estimate(&model, &store, &data, cfg.pad_token_id, opts, &Device::Cpu).unwrap();
    let prefix = format!("{}.", cfg.model_type.prefix());
    let mut checked = 0;
    for (name, ours) in &fisher {
        let key = if name.starts_with("classifier") {
            format!("fisher.{name}")
        } else {
            format!("fisher.{prefix}{name}")
        };
        let reference = &g[&key];
        let rel = crate::common::max_abs_diff(ours, reference)
            / crate::common::max_abs(reference).max(1e-10);
        assert!(
            rel < 1e-3,
            "{kind} Fisher of {name} differs by {rel} (relative)"
        );
        checked += 1;
    }
    assert_eq!(
        checked,
        g.keys().filter(|k| k.starts_with("fisher.")).count()
    );
}

#[test]
fn per_example_fisher_matches_squared_per_example_gradients() {
    check("tiny-bert");
    check("tiny-roberta");
    check("tiny-electra");
}

/// `peft train` with a Fisher-ranked method and no --fisher: a bounded sample by default,
/// said in the log; the estimate is cached and the next run with the same weights, data
/// and estimator reuses it (same masks, same run), while another seed makes its own.
#[test]
fn train_caches_its_fisher_estimate_and_reuses_it() {
    let tmp = tempfile::tempdir().unwrap();
    crate::common::write_rte(tmp.path(), 24, 8);
    let cache = tmp.path().join("cache");
    let model = crate::common::fixture("tiny-bert");
    let data = tmp.path().to_string_lossy().into_owned();
    let run = |out: &str, extra: &[&str]| -> String {
        let mut args: Vec<String> = [
            "train",
            "--model",
            &model,
            "--data-dir",
            &data,
            "--task",
            "rte",
            "--method",
            "fisher-layernorm",
            "--fraction",
            "0.3",
            "--max-steps",
            "2",
            "--fisher-samples",
            "10",
            "--output-dir",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(tmp.path().join(out).to_string_lossy().into_owned());
        args.extend(crate::common::SMALL.iter().map(|s| s.to_string()));
        args.extend(extra.iter().map(|s| s.to_string()));
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_peft"))
            .args(&args)
            .env("PEFT_CACHE_DIR", &cache)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{err}");
        err
    };
    let first = run("a", &[]);
    assert!(
        first.contains("Fisher information: 10 of 24 training examples, per-example"),
        "{first}"
    );
    assert!(first.contains("cached in"), "{first}");
    let entries = || std::fs::read_dir(cache.join("fisher")).unwrap().count();
    assert_eq!(entries(), 1);
    let second = run("b", &[]);
    assert!(second.contains("reusing"), "{second}");
    assert!(
        !second.contains("training examples,"),
        "estimated again: {second}"
    );
    let tensors =
        |d: &str| crate::common::tensors(&tmp.path().join(d).join("trainable.safetensors"));
    let (a, b) = (tensors("a"), tensors("b"));
    for (k, t) in &a {
        let d = (t - &b[k]).unwrap().abs().unwrap().sum_all().unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0, "{k}");
    }
    // Another seed draws another sample (and head): its own estimate.
    let third = run("c", &["--seed", "7"]);
    assert!(third.contains("cached in"), "{third}");
    assert_eq!(entries(), 2);
}
