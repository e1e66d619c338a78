//! Prefix tuning against Hugging Face PEFT itself (scripts/prefix_reference.py,
//! tests/fixtures/prefix: PEFT 0.21.2's PrefixTuningConfig on transformers 4.57.6, 3
//! virtual tokens, with and without the projection): logits, loss and every gradient on the
//! tiny BERT and RoBERTa, a PEFT-saved adapter read back, and `--method prefix` through the
//! binary.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use peft::model::{prefix, read_checkpoint, AdapterConfig, AdapterKind, Arch};

use crate::common::*;

fn adapter(tokens: usize, hidden: Option<usize>) -> AdapterConfig {
    AdapterConfig {
        kind: AdapterKind::Prefix { tokens, hidden },
        r: 0,
        alpha: 0.0,
        dropout: 0.0,
        targets: Vec::new(),
        rslora: false,
        init: None,
    }
}

fn reference(name: &str) -> HashMap<String, Tensor> {
    let path = fixture_dir("prefix").join(format!("{name}.safetensors"));
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

/// The keys and values before each layer's, the mask's ones and the positions counted on
/// after the prefix: PEFT's logits, loss and gradients, projected or not.
#[test]
fn prefix_tuning_matches_peft() {
    for family in ["tiny-bert", "tiny-roberta"] {
        for hidden in [None, Some(16)] {
            let name = format!(
                "{family}{}",
                if hidden.is_some() { "-projection" } else { "" }
            );
            let trains = |n: &str| n.starts_with("prompt_encoder.") || n.starts_with("classifier.");
            matches_reference(family, &reference(&name), &adapter(3, hidden), trains);
        }
    }
}

/// PEFT saves a projected prefix as its whole table (`prompt_embeddings`); read back as a
/// prefix without projection it gives PEFT's probabilities.
#[test]
fn a_peft_saved_prefix_reads_back() {
    let dir = fixture_dir("tiny-bert");
    let (cfg, mut weights) = read_checkpoint(&dir).unwrap();
    peft::model::drop_head(&mut weights);
    let fx = fixture_dir("prefix").join("adapter");
    let saved = peft::run::peft_format::read(&fx, Arch::Bert).unwrap();
    let a = saved.config.unwrap();
    assert_eq!(
        a.kind,
        AdapterKind::Prefix {
            tokens: 3,
            hidden: None
        }
    );
    // The table is the projection of the embedding PEFT trained (the fixture's).
    let g = reference("tiny-bert-projection");
    let d = max_abs_diff(
        &prefix::table(&g).unwrap(),
        &saved.tensors[prefix::EMBEDDING],
    );
    assert!(d < 1e-6, "saved table differs by {d}");
    weights.extend(saved.tensors);
    assert_scores_as_saved(&cfg, weights, &a, &dir, &fx);
}

/// Through the binary on BERT, RoBERTa and ELECTRA, GLUE and SQuAD: only the prefix and the
/// head train, `peft eval` re-scores the run, the export is PEFT's PREFIX_TUNING with the
/// projected table, and that export read back scores as the run; merge, WiSE-FT, DeBERTa
/// and a text start are refused by name.
#[test]
fn prefix_tuning_trains_through_the_binary() {
    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 24, 8);
    write_squad(tmp.path(), "v2.0", 12, 6);
    for family in ["tiny-bert", "tiny-roberta", "tiny-electra"] {
        for task in ["rte", "squad_v2"] {
            let out = tmp.path().join(format!("{family}-{task}"));
            let args = [
                "--task",
                task,
                "--method",
                "prefix",
                "--num-virtual-tokens",
                "4",
                "--prefix-projection",
                "8",
                "--max-steps",
                "3",
                "--warmup-ratio",
                "0",
            ];
            train(&fixture(family), tmp.path(), &out, &args);
            let saved = tensors(&out.join("last.safetensors"));
            for k in saved.keys() {
                let head = is_task_head(k);
                assert!(
                    k.starts_with("prompt_encoder.") || head,
                    "{family} {task}: {k} trained"
                );
            }
            assert_eq!(saved[prefix::EMBEDDING].dims(), [4, 32], "{family} {task}");
            let metric = if task == "rte" { "accuracy" } else { "f1" };
            assert_rescores(&out, metric);
        }
    }
    let run = tmp.path().join("tiny-bert-rte");
    let exported: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(exported["peft_type"], "PREFIX_TUNING");
    assert_eq!(exported["num_virtual_tokens"], 4);
    assert_eq!(exported["prefix_projection"], true);
    // The export holds the best state's prefix, projected.
    let file = tensors(&run.join("adapter_model.safetensors"));
    let table = prefix::table(&tensors(&run.join("trainable.safetensors"))).unwrap();
    assert_eq!(file["prompt_embeddings"].dims(), [4, 2 * 2 * 32]);
    assert_eq!(bits(&file["prompt_embeddings"]), bits(&table));
    // Read back as PEFT reads it, the export scores every dev example as the run does.
    export_scores_as_run(&run, tmp.path(), &fixture("tiny-bert"));

    let refused = |args: &[&str], says: &str| {
        let o = peft(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
    };
    let run_s = run.to_str().unwrap();
    let merged = tmp.path().join("m");
    refused(
        &[
            "merge",
            "--checkpoint",
            run_s,
            "--output",
            merged.to_str().unwrap(),
        ],
        "prefix",
    );
    refused(
        &["eval", "--checkpoint", run_s, "--alpha", "0.5"],
        "WiSE-FT",
    );
    let data = tmp.path().to_str().unwrap();
    let out = tmp.path().join("refused");
    let out = out.to_str().unwrap();
    let deberta = fixture("tiny-deberta-v2");
    let base = [
        "train",
        "--data-dir",
        data,
        "--task",
        "rte",
        "--method",
        "prefix",
        "--max-seq-len",
        "32",
        "--output-dir",
        out,
    ];
    refused(&[&base[..], &["--model", &deberta]].concat(), "DeBERTa");
    let bert = fixture("tiny-bert");
    refused(
        &[
            &base[..],
            &["--model", &bert, "--prompt-init-text", "the cat"],
        ]
        .concat(),
        "--prompt-init-text",
    );
}
