//! `peft train` and `peft eval` end to end on the tiny fixture models and tiny GLUE-format
//! files the tests write.

use std::path::{Path, PathBuf};

use crate::common::*;

#[test]
fn layernorm_run_saves_only_layernorm_and_head_and_eval_reproduces_it() {
    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 48, 20);
    let out = tmp.path().join("run");
    train(
        &fixture("tiny-bert"),
        tmp.path(),
        &out,
        &["--task", "RTE", "--method", "layernorm", "--epochs", "2"],
    );

    for f in [
        "config.json",
        "metrics.jsonl",
        "trainable.safetensors",
        "last.safetensors",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let saved = tensors(&out.join("last.safetensors"));
    let mut names: Vec<&String> = saved.keys().collect();
    names.sort();
    assert!(
        names
            .iter()
            .all(|n| n.contains("LayerNorm.") || n.starts_with("classifier.")),
        "{names:?}"
    );
    // 2 layers × 2 LayerNorms + embeddings' = 5 LayerNorms × (weight, bias), plus the head.
    assert_eq!(names.len(), 12, "{names:?}");
    // Trained LayerNorm tensors moved away from the base.
    let base = tensors(&PathBuf::from(fixture("tiny-bert")).join("model.safetensors"));
    let ln = "encoder.layer.1.output.LayerNorm.weight";
    let diff = (&saved[ln] - &base[&format!("bert.{ln}")])
        .unwrap()
        .abs()
        .unwrap()
        .sum_all()
        .unwrap();
    assert!(diff.to_scalar::<f32>().unwrap() > 0.0, "{ln} did not train");

    let m = metrics(&out);
    assert_eq!(m.len(), 2, "one evaluation per epoch");
    let best = m.iter().find(|r| r["best"].as_bool().unwrap()).unwrap();
    let best_acc = best["dev"]["dev"]["accuracy"].as_f64().unwrap();
    assert_eq!(
        eval_accuracy(&out),
        best_acc,
        "peft eval must reproduce the run's metrics"
    );

    // The test split gives a GLUE submission file with label names.
    ok(peft(&[
        "eval",
        "--checkpoint",
        out.to_str().unwrap(),
        "--split",
        "test",
    ]));
    let sub = std::fs::read_to_string(out.join("RTE.tsv")).unwrap();
    assert_eq!(sub.lines().count(), 6);
    assert!(
        sub.lines()
            .skip(1)
            .all(|l| l.ends_with("\tentailment") || l.ends_with("\tnot_entailment")),
        "{sub}"
    );
}

#[test]
fn same_seed_same_metrics_different_seed_different_run() {
    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 40, 16);
    let run = |name: &str, seed: &str| {
        let out = tmp.path().join(name);
        train(
            &fixture("tiny-roberta"),
            tmp.path(),
            &out,
            &[
                "--task",
                "rte",
                "--method",
                "full",
                "--max-steps",
                "6",
                "--eval-steps",
                "3",
                "--lr",
                "1e-3",
                "--seed",
                seed,
            ],
        );
        (metrics(&out), tensors(&out.join("last.safetensors")))
    };
    let (a, ta) = run("a", "7");
    let (b, tb) = run("b", "7");
    assert_eq!(a, b);
    for (name, t) in &ta {
        let d = (t - &tb[name])
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0, "{name} differs between same-seed runs");
    }
    let (_, tc) = run("c", "8");
    let head = "classifier.out_proj.weight";
    let d = (&ta[head] - &tc[head])
        .unwrap()
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(d > 0.0, "a different seed should give a different head");
}

#[test]
fn bitfit_regression_on_stsb() {
    let tmp = tempfile::tempdir().unwrap();
    write_stsb(tmp.path(), 40, 16);
    let out = tmp.path().join("run");
    let stdout = train(
        &fixture("tiny-bert"),
        tmp.path(),
        &out,
        &["--task", "sts-b", "--method", "bitfit", "--epochs", "1"],
    );
    assert!(stdout.contains("pearson"), "{stdout}");
    let saved = tensors(&out.join("last.safetensors"));
    assert!(
        saved
            .keys()
            .all(|n| n.ends_with(".bias") || n.starts_with("classifier.")),
        "{:?}",
        saved.keys()
    );
    assert_eq!(saved["classifier.weight"].dims(), &[1, 32]);
    let m = metrics(&out);
    for k in ["pearson", "spearman"] {
        assert!(m[0]["dev"]["dev"][k].as_f64().unwrap().is_finite());
    }
}

#[test]
fn config_file_flags_and_errors() {
    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 16, 8);
    let cfg = tmp.path().join("c.toml");
    std::fs::write(&cfg, "method = \"bitfit\"\nlr = 0.01\nepochs = 9\n").unwrap();
    let out = tmp.path().join("run");
    let stdout = train(
        &fixture("tiny-bert"),
        tmp.path(),
        &out,
        &[
            "--task",
            "rte",
            "--config",
            cfg.to_str().unwrap(),
            "--max-steps",
            "1",
        ],
    );
    assert!(
        stdout.contains("method = \"bitfit\"") && stdout.contains("lr = 0.01"),
        "{stdout}"
    );
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(saved["train"]["optimisation"]["epochs"], 9);
    assert_eq!(saved["train"]["optimisation"]["max_steps"], 1);
    assert_eq!(saved["base"]["sha256"].as_str().unwrap().len(), 64);

    // The same output directory again is refused without --overwrite.
    let again = peft(&[
        "train",
        "--model",
        &fixture("tiny-bert"),
        "--data-dir",
        tmp.path().to_str().unwrap(),
        "--task",
        "rte",
        "--output-dir",
        out.to_str().unwrap(),
        "--max-steps",
        "1",
    ]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--overwrite"));

    // A typo in the config names the key.
    std::fs::write(&cfg, "learning_rate = 0.01\n").unwrap();
    let bad = peft(&[
        "train",
        "--model",
        &fixture("tiny-bert"),
        "--data-dir",
        tmp.path().to_str().unwrap(),
        "--task",
        "rte",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("learning_rate") && err.contains("c.toml"),
        "{err}"
    );

    // Another base model (different weights) is refused by eval.
    let moved = tmp.path().join("other-model");
    std::fs::create_dir(&moved).unwrap();
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::copy(Path::new(&fixture("tiny-bert")).join(f), moved.join(f)).unwrap();
    }
    let mut bytes = std::fs::read(moved.join("model.safetensors")).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(moved.join("model.safetensors"), bytes).unwrap();
    let bad = peft(&[
        "eval",
        "--checkpoint",
        out.to_str().unwrap(),
        "--model",
        moved.to_str().unwrap(),
    ]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("sha256"));
}

#[test]
fn shipped_configs_parse_and_resolve() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let o = peft::settings::Overrides::from_toml_file(&path).unwrap();
            let flags = peft::settings::Overrides {
                model: Some("m".into()),
                task: Some("rte".into()),
                data_dir: Some("d".into()),
                ..Default::default()
            };
            let cfg = flags
                .over(o)
                .resolve()
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(cfg.optimisation.lr > 0.0);
            n += 1;
        }
    }
    assert!(n >= 3, "expected the method configs in configs/");
}

/// `--grad-accum N` makes the same update as one batch N times larger: a step sees the
/// same examples (batches are drawn at the step's size, then cut into micro-batches) and
/// the gradient of their mean loss. With dropout off, only float rounding (other padding,
/// another summation order) may differ. An uneven cut (3 micro-batches of 11 for 32
/// examples) weighs each micro-batch by its size.
#[test]
fn gradient_accumulation_equals_one_larger_batch() {
    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 32, 8);
    // The tiny BERT without dropout, so that micro-batches draw no masks of their own.
    let model = tmp.path().join("model");
    std::fs::create_dir(&model).unwrap();
    for entry in std::fs::read_dir(fixture_dir("tiny-bert")).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, model.join(p.file_name().unwrap())).unwrap();
    }
    let cfg_path = model.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["hidden_dropout_prob"] = 0.0.into();
    cfg["attention_probs_dropout_prob"] = 0.0.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let run = |name: &str, batch: &str, accum: &str| {
        let out = tmp.path().join(name);
        ok(peft(&[
            "train",
            "--model",
            model.to_str().unwrap(),
            "--data-dir",
            tmp.path().to_str().unwrap(),
            "--task",
            "rte",
            "--method",
            "full",
            "--lr",
            "1e-3",
            "--max-steps",
            "2",
            "--warmup-ratio",
            "0",
            "--max-seq-len",
            "32",
            "--batch-size",
            batch,
            "--grad-accum",
            accum,
            "--output-dir",
            out.to_str().unwrap(),
        ]));
        tensors(&out.join("last.safetensors"))
    };
    let one = run("one", "32", "1");
    let base = tensors(&fixture_dir("tiny-bert").join("model.safetensors"));
    for (name, accum) in [
        ("four", run("four", "8", "4")),
        ("uneven", run("uneven", "11", "3")),
    ] {
        assert_eq!(accum.len(), one.len());
        for (k, t) in &one {
            // The key bias's gradient is zero but for float noise (softmax ignores a
            // shift per query), and Adam scales noise up to steps of lr: it moves, by
            // amounts no two summation orders share.
            if k.ends_with("key.bias") {
                continue;
            }
            let d = max_abs_diff(t, &accum[k]);
            // Relative to how far the step moved the tensor.
            let moved = base
                .get(&format!("bert.{k}"))
                .or_else(|| base.get(k.as_str()))
                .filter(|b| b.dims() == t.dims())
                .map_or_else(|| max_abs(t), |b| max_abs_diff(t, b));
            assert!(
                d <= 1e-4 * moved.max(1e-6) + 1e-7,
                "{name}: {k} differs by {d} (the steps moved it by {moved})"
            );
        }
    }
}
