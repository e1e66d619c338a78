//! Inference cross-check against candle-transformers' own BertModel on the same weights.
//! (It cannot train, and has no RoBERTa, so it only checks BERT forward.)

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use peft::model::{read_checkpoint, Batch, Ctx, Model, ParamStore};
use peft::tokenize::{collate, TextEncoder};

fn compare(dir: &Path, texts: &[(&str, Option<&str>)]) -> f32 {
    let (cfg, weights) = read_checkpoint(dir).unwrap();
    let enc = TextEncoder::load(dir, &cfg, cfg.max_tokens().min(128)).unwrap();
    let encoded: Vec<_> = texts
        .iter()
        .map(|(a, b)| enc.encode(a, *b).unwrap())
        .collect();
    let batch: Batch = collate(
        &encoded.iter().collect::<Vec<_>>(),
        enc.pad_id(),
        &Device::Cpu,
    )
    .unwrap();
    let ours = Model::load(&ParamStore::frozen(weights, Device::Cpu), &cfg, None)
        .unwrap()
        .forward(&batch, &Ctx::eval())
        .unwrap()
        .last_hidden_state;

    let their_cfg: Config =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    // SAFETY: the mapped file is a test fixture (or the downloaded model) that nothing
    // writes while the test reads it.
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(
            &[dir.join("model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )
        .unwrap()
    };
    let theirs = BertModel::load(vb, &their_cfg)
        .unwrap()
        .forward(
            &batch.input_ids,
            &batch.token_type_ids,
            Some(&batch.attention_mask.to_dtype(DType::U32).unwrap()),
        )
        .unwrap();
    // Compare real tokens only: what padded positions hold is an implementation detail.
    let mask = batch.attention_mask.unsqueeze(2).unwrap();
    let diff = ((ours - theirs).unwrap().broadcast_mul(&mask).unwrap())
        .abs()
        .unwrap();
    diff.flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

const TEXTS: &[(&str, Option<&str>)] = &[
    ("The cat sat on the mat.", None),
    (
        "Paris is the capital of France.",
        Some("London is in England."),
    ),
    ("yes", None),
];

#[test]
fn tiny_bert_matches_candle_transformers() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-bert");
    let d = compare(&dir, TEXTS);
    assert!(d <= 1e-4, "differs from candle-transformers by {d}");
}

/// Gated on PEFT_MINILM_DIR (see tests/cli.rs and `crate::common::data_dir`).
#[test]
fn minilm_matches_candle_transformers() {
    let Some(dir) = crate::common::data_dir("PEFT_MINILM_DIR") else {
        return;
    };
    let d = compare(&dir, TEXTS);
    assert!(d <= 1e-4, "differs from candle-transformers by {d}");
}
