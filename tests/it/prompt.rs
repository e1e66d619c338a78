//! Prompt tuning against Hugging Face PEFT itself (scripts/prompt_reference.py,
//! tests/fixtures/prompt: PEFT 0.21.2's PromptTuningConfig, 4 virtual tokens set away
//! from their start): logits, loss and every gradient on the tiny BERT and RoBERTa, PEFT's
//! TEXT start, a PEFT-saved adapter read back, and `--method prompt` through the binary.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use peft::model::{read_checkpoint, AdapterConfig, AdapterKind, Arch, PROMPT};

use crate::common::*;

fn prompt(tokens: usize) -> AdapterConfig {
    AdapterConfig {
        kind: AdapterKind::Prompt { tokens },
        r: 0,
        alpha: 0.0,
        dropout: 0.0,
        targets: Vec::new(),
        rslora: false,
        init: None,
    }
}

fn reference(model: &str) -> HashMap<String, Tensor> {
    let path = fixture_dir("prompt").join(format!("{model}.safetensors"));
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

#[test]
fn prompt_tuning_matches_peft() {
    for family in ["tiny-bert", "tiny-roberta"] {
        let trains = |n: &str| n == PROMPT || n.starts_with("classifier.");
        matches_reference(family, &reference(family), &prompt(4), trains);
    }
}

/// PEFT's TEXT start for "the cat sat" and 5 virtual tokens: the tokens with their
/// specials, repeated, as word-embedding rows.
#[test]
fn the_text_start_is_peft_s() {
    let g = reference("tiny-bert");
    let dir = fixture_dir("tiny-bert");
    let (cfg, weights) = read_checkpoint(&dir).unwrap();
    let enc = peft::tokenize::TextEncoder::load(&dir, &cfg, 32).unwrap();
    let ids = enc.encode("the cat sat", None).unwrap().ids;
    let word = &weights["embeddings.word_embeddings.weight"];
    let start = peft::methods::prompt::text_start(&ids, 5, word).unwrap();
    assert_eq!(bits(&start), bits(&g["text_start"]));
}

#[test]
fn a_peft_saved_prompt_reads_back() {
    let dir = fixture_dir("tiny-bert");
    let (cfg, mut weights) = read_checkpoint(&dir).unwrap();
    peft::model::drop_head(&mut weights);
    let fx = fixture_dir("prompt").join("adapter");
    let saved = peft::run::peft_format::read(&fx, Arch::Bert).unwrap();
    let a = saved.config.unwrap();
    assert_eq!(a.kind, AdapterKind::Prompt { tokens: 4 });
    weights.extend(saved.tensors);
    assert_scores_as_saved(&cfg, weights, &a, &dir, &fx);
}

/// Through the binary on BERT, RoBERTa and DeBERTa v3, GLUE and SQuAD: only the prompt
/// and the head train and `peft eval` re-scores the run; a text start begins at the
/// text's embeddings; the export is PEFT's PROMPT_TUNING; merge and WiSE-FT are refused;
/// a prompt that with the window passes the position table is refused before training.
#[test]
fn prompt_tuning_trains_through_the_binary() {
    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 24, 8);
    write_squad(tmp.path(), "v2.0", 12, 6);
    for family in ["tiny-bert", "tiny-roberta", "tiny-deberta-v2"] {
        for task in ["rte", "squad_v2"] {
            let out = tmp.path().join(format!("{family}-{task}"));
            let args = [
                "--task",
                task,
                "--method",
                "prompt",
                "--num-virtual-tokens",
                "4",
                "--max-steps",
                "3",
                "--lr",
                "1e-2",
                "--warmup-ratio",
                "0",
            ];
            train(&fixture(family), tmp.path(), &out, &args);
            let saved = tensors(&out.join("last.safetensors"));
            for k in saved.keys() {
                let head = is_task_head(k);
                assert!(k == PROMPT || head, "{family} {task}: {k} trained");
            }
            assert_eq!(saved[PROMPT].dims()[0], 4);
            let metric = if task == "rte" { "accuracy" } else { "f1" };
            assert_rescores(&out, metric);
        }
    }
    let run = tmp.path().join("tiny-bert-rte");
    let exported: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(exported["peft_type"], "PROMPT_TUNING");
    assert_eq!(exported["num_virtual_tokens"], 4);
    let o = peft(&[
        "merge",
        "--checkpoint",
        run.to_str().unwrap(),
        "--output",
        tmp.path().join("m").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("prompt"), "{}", stderr(&o));
    let o = peft(&[
        "eval",
        "--checkpoint",
        run.to_str().unwrap(),
        "--alpha",
        "0.5",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("WiSE-FT"), "{}", stderr(&o));

    // The text start: one step at a rate far below any element's precision keeps it as it
    // began.
    let text = tmp.path().join("text");
    let args = [
        "--task",
        "rte",
        "--method",
        "prompt",
        "--num-virtual-tokens",
        "5",
        "--prompt-init-text",
        "the cat sat",
        "--max-steps",
        "1",
        "--lr",
        "1e-30",
        "--warmup-ratio",
        "0",
    ];
    train(&fixture("tiny-bert"), tmp.path(), &text, &args);
    let start = &tensors(&text.join("last.safetensors"))[PROMPT];
    assert_eq!(bits(start), bits(&reference("tiny-bert")["text_start"]));

    // 40 virtual tokens and a 32-token window pass tiny-bert's 64 positions.
    let o = peft(&[
        "train",
        "--model",
        &fixture("tiny-bert"),
        "--data-dir",
        tmp.path().to_str().unwrap(),
        "--task",
        "rte",
        "--method",
        "prompt",
        "--num-virtual-tokens",
        "40",
        "--max-seq-len",
        "32",
        "--output-dir",
        tmp.path().join("long").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--num-virtual-tokens 40"),
        "{}",
        stderr(&o)
    );
}
