//! Run directories written before the settings were grouped by concern (config.json flat,
//! tests/fixtures/old-runs, made by scripts/make_old_runs.sh with an earlier binary) still
//! load for every reader: eval scores them with the old binary's logits, predict, diff
//! and merge read them, report lists them, and --resume continues one.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

use crate::common::*;
use crate::hostile::edit_json;
use crate::hostile::run_files::{copy_run, write_resume};

const METHODS: [&str; 2] = ["lora", "layernorm"];

/// The fixtures record paths relative to the repository root, as a user's runs record
/// theirs relative to where they ran: run from there.
fn peft_at_root(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_peft"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run peft")
}

fn run_ok(args: &[&str]) -> String {
    let out = peft_at_root(args);
    assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A copy of the old run `method`, so that nothing writes into the committed fixture, its
/// data written again where its config.json says the run read it (the RTE files
/// `write_rte(dir, 16, 8)` writes, as scripts/make_old_runs.sh made them).
fn old_run(root: &Path, method: &str) -> PathBuf {
    let data = root.join("glue");
    if !data.join("RTE").exists() {
        write_rte(&data, 16, 8);
    }
    let dir = root.join(method);
    copy_run(&fixture_dir("old-runs").join(method), &dir);
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["train"]["method"], method, "the fixture is flat");
    assert!(config["train"].get("optimisation").is_none());
    edit_json(&dir.join("config.json"), |v| {
        v["train"]["data_dir"] = json!(data.to_str().unwrap())
    });
    dir
}

/// `eval --predictions` as JSON lines: (id, logits).
fn logits(path: &Path) -> Vec<(String, Vec<f64>)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let logits = v["logits"].as_array().unwrap();
            (
                v["id"].as_str().unwrap().to_string(),
                logits.iter().map(|x| x.as_f64().unwrap()).collect(),
            )
        })
        .collect()
}

fn max_diff(a: &[(String, Vec<f64>)], b: &[(String, Vec<f64>)]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|((ia, la), (ib, lb))| {
            assert_eq!(ia, ib);
            la.iter().zip(lb).map(|(x, y)| (x - y).abs())
        })
        .fold(0.0, f64::max)
}

#[test]
fn an_old_run_scores_as_the_old_binary_did_and_every_reader_takes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let input = root.join("pairs.txt");
    std::fs::write(&input, "the cat sat\tthe cat\na dog ran fast\tthe bird\n").unwrap();
    for method in METHODS {
        let run = old_run(root, method);
        let r = run.to_str().unwrap();
        // The same logits as the binary that wrote the run: its adapters, LayerNorm
        // tensors and head are all read. Up to rounding: gemm blocks its sums by the
        // machine's cache sizes, so another CPU may round an ulp apart (1.5e-8 seen).
        let preds = root.join(format!("{method}.jsonl"));
        run_ok(&[
            "eval",
            "--checkpoint",
            r,
            "--predictions",
            preds.to_str().unwrap(),
        ]);
        let old = logits(&fixture_dir("old-runs").join(format!("{method}.predictions.jsonl")));
        let d = max_diff(&logits(&preds), &old);
        assert!(d <= 1e-6, "{method}: logits differ by {d}");

        let out = run_ok(&[
            "predict",
            "--checkpoint",
            r,
            "--input",
            input.to_str().unwrap(),
        ]);
        assert_eq!(out.lines().count(), 2, "{method}: {out}");
        let out = run_ok(&["diff", "--checkpoint", r]);
        assert!(!out.trim().is_empty(), "{method}: diff printed nothing");

        // Merged, the run is a plain checkpoint that scores the same.
        let merged = root.join(format!("{method}-merged"));
        let m = merged.to_str().unwrap();
        run_ok(&["merge", "--checkpoint", r, "--output", m]);
        let merged_preds = root.join(format!("{method}-merged.jsonl"));
        run_ok(&[
            "eval",
            "--model",
            m,
            "--task",
            "rte",
            "--data-dir",
            root.join("glue").to_str().unwrap(),
            "--max-seq-len",
            "32",
            "--predictions",
            merged_preds.to_str().unwrap(),
        ]);
        let d = max_diff(&logits(&merged_preds), &old);
        assert!(d < 1e-5, "{method}: merged logits differ by {d}");
    }
    // The report reads both, settings by their flat names.
    let out = run_ok(&[
        "report",
        root.join("lora").to_str().unwrap(),
        root.join("layernorm").to_str().unwrap(),
    ]);
    for method in METHODS {
        assert!(out.contains(method), "report: {out}");
    }
}

#[test]
fn an_old_run_resumes_and_keeps_its_format() {
    let tmp = tempfile::tempdir().unwrap();
    let run = old_run(tmp.path(), "lora");
    // Its horizon raised from 2 steps to 4, a checkpoint at step 1.
    edit_json(&run.join("config.json"), |v| {
        v["train"]["max_steps"] = json!(4)
    });
    write_resume(&run, |_| {}, |_| {});
    let out = peft_at_root(&["train", "--resume", run.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!run.join("resume.safetensors").exists());
    let steps: Vec<u64> = metrics(&run)
        .iter()
        .map(|m| m["step"].as_u64().unwrap())
        .collect();
    // The records after the checkpoint are its to write again.
    assert_eq!(steps, [1, 2, 3, 4]);
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        config["train"]["max_steps"], 4,
        "config.json stays as it was"
    );
    run_ok(&["eval", "--checkpoint", run.to_str().unwrap()]);
}
