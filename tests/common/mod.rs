//! Helpers shared by the integration tests: running the binary, tiny GLUE-format files.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

use candle_core::{Device, Tensor};

pub fn peft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_peft"))
        .args(args)
        .output()
        .expect("run peft")
}

pub fn fixture(kind: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(kind)
        .to_string_lossy()
        .into_owned()
}

pub fn ok(out: Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "peft failed: {err}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub const WORDS: &[&str] = &[
    "the", "cat", "dog", "man", "woman", "sat", "ran", "saw", "house", "car", "city", "river",
    "red", "blue", "big", "small", "happy", "sad", "old", "new",
];

/// Deterministic pseudo-random sentences from the tiny vocabulary.
pub fn sentence(i: usize, len: usize) -> String {
    (0..len)
        .map(|k| WORDS[(i * 7 + k * 13 + i * k) % WORDS.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

/// RTE-format train/dev files: the label says whether sentence2's first word occurs in sentence1.
pub fn write_rte(dir: &Path, n_train: usize, n_dev: usize) {
    let rte = dir.join("RTE");
    std::fs::create_dir_all(&rte).unwrap();
    for (split, n, offset) in [("train", n_train, 0), ("dev", n_dev, 1000)] {
        let mut s = String::from("index\tsentence1\tsentence2\tlabel\n");
        for i in 0..n {
            let a = sentence(i + offset, 3 + i % 9);
            let b = sentence(i * 3 + offset + 1, 2 + i % 4);
            let first = b.split(' ').next().unwrap();
            let label = if a.split(' ').any(|w| w == first) {
                "entailment"
            } else {
                "not_entailment"
            };
            s.push_str(&format!("{i}\t{a}\t{b}\t{label}\n"));
        }
        std::fs::write(rte.join(format!("{split}.tsv")), s).unwrap();
    }
    let mut test = String::from("index\tsentence1\tsentence2\n");
    for i in 0..5 {
        test.push_str(&format!(
            "{i}\t{}\t{}\n",
            sentence(i + 77, 4),
            sentence(i + 78, 3)
        ));
    }
    std::fs::write(rte.join("test.tsv"), test).unwrap();
}

pub fn write_stsb(dir: &Path, n_train: usize, n_dev: usize) {
    let d = dir.join("STS-B");
    std::fs::create_dir_all(&d).unwrap();
    for (split, n, offset) in [("train", n_train, 0), ("dev", n_dev, 500)] {
        let mut s = String::from("index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n");
        for i in 0..n {
            let a = sentence(i + offset, 4 + i % 5);
            let b = sentence(i + offset + i % 3, 4 + i % 5);
            let score = 5.0 * (a == b) as u8 as f32 + (i % 5) as f32 * 0.5 * (a != b) as u8 as f32;
            s.push_str(&format!(
                "{i}\tmain\tf\t2012\t{i}\tnone\tnone\t{a}\t{b}\t{score:.3}\n"
            ));
        }
        std::fs::write(d.join(format!("{split}.tsv")), s).unwrap();
    }
}

pub fn train(model: &str, data: &Path, out: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "train",
        "--model",
        model,
        "--data-dir",
        data.to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
        "--batch-size",
        "8",
        "--eval-batch-size",
        "16",
        "--max-seq-len",
        "32",
    ];
    args.extend_from_slice(extra);
    ok(peft(&args))
}

/// metrics.jsonl without the timing fields, which differ run to run.
pub fn metrics(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            for k in ["elapsed_s", "train_tokens_per_s", "train_examples_per_s"] {
                v.as_object_mut().unwrap().remove(k);
            }
            v
        })
        .collect()
}

pub fn tensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}
