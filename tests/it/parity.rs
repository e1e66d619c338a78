//! Golden parity with Hugging Face transformers on tiny random BERT, RoBERTa, ELECTRA and
//! DeBERTa (v1, and v2/v3 in two configurations), with classification, regression and
//! question-answering heads.
//!
//! Fixtures come from tests/golden/make_golden.py: weights, a batch of singles and pairs,
//! and transformers' hidden states, logits, loss and the gradient of the loss for every
//! parameter. Forward must match to 1e-4 absolute and gradients to 1e-3 relative. This is
//! what catches candle ops that silently record no backward. Each check runs twice: with
//! our fused CPU kernels, and with the candle compositions that other devices use.
//! `PEFT_TEST_DEVICE=cuda` runs them on a GPU (a `--features cuda` build).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use peft::loss;
use peft::model::{read_checkpoint, with_composed_ops, Batch, Ctx, HeadKind, Model, ParamStore};
use peft::tokenize::{collate, TextEncoder};

use crate::common::{max_abs, max_abs_diff};

fn fixture(kind: &str) -> PathBuf {
    crate::common::fixture_dir(&format!("tiny-{kind}"))
}

fn golden(kind: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(kind).join("golden.safetensors"), &Device::Cpu).unwrap()
}

fn device() -> Device {
    let spec = std::env::var("PEFT_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    peft::device::parse(&spec).unwrap()
}

/// A golden tensor on the test device, as `dtype`.
fn on_device(g: &HashMap<String, Tensor>, key: &str, dtype: DType) -> Tensor {
    g[key]
        .to_dtype(dtype)
        .unwrap()
        .to_device(&device())
        .unwrap()
}

fn golden_batch(g: &HashMap<String, Tensor>) -> Batch {
    Batch {
        input_ids: on_device(g, "input_ids", DType::U32),
        token_type_ids: on_device(g, "token_type_ids", DType::U32),
        attention_mask: on_device(g, "attention_mask", DType::F32),
    }
}

/// Relative error is taken against max(|reference|, GRAD_FLOOR): the key bias's gradient is
/// mathematically zero (softmax ignores a per-row shift) and transformers' value is float
/// noise near 1e-10, so a 1e-3 relative error there means 1e-8 absolute.
const GRAD_FLOOR: f32 = 1e-5;

/// Forward and gradients of the classification model against transformers.
fn check_classification(kind: &str) {
    let dir = fixture(kind);
    let (cfg, weights) = read_checkpoint(&dir).unwrap();
    let g = golden(kind);
    let store = ParamStore::new(weights, device(), 0, Box::new(|_| true));
    let model = Model::load(&store, &cfg, Some(3)).unwrap();
    assert!(
        store.created().is_empty(),
        "head should come from the checkpoint: {:?}",
        store.created()
    );
    let out = model.forward(&golden_batch(&g), &Ctx::eval()).unwrap();

    let d = max_abs_diff(&out.last_hidden_state, &g["last_hidden_state"]);
    assert!(d <= 1e-4, "{kind} last_hidden_state differs by {d}");
    if let Some(p) = g.get("pooler_output") {
        let d = max_abs_diff(out.pooled.as_ref().unwrap(), p);
        assert!(d <= 1e-4, "{kind} pooler differs by {d}");
    }
    let logits = out.logits.unwrap();
    let d = max_abs_diff(&logits, &g["logits"]);
    assert!(d <= 1e-4, "{kind} logits differ by {d}");

    let labels = on_device(&g, "labels", DType::U32);
    let l = loss::cross_entropy(&logits, &labels).unwrap();
    let d = max_abs_diff(&l.reshape(1).unwrap(), &g["loss"]);
    assert!(d <= 1e-4, "{kind} loss differs by {d}");

    let grads = l.backward().unwrap();
    let vars = store.vars();
    let mut checked = 0;
    for (name, var) in &vars {
        let key = format!("grad.{}", cfg.model_type.task_model_name(name));
        let reference = g
            .get(&key)
            .unwrap_or_else(|| panic!("no golden gradient {key}"));
        let ours = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{kind}: no gradient reached {name}"));
        let rel = max_abs_diff(ours, reference) / max_abs(reference).max(GRAD_FLOOR);
        assert!(
            rel <= 1e-3,
            "{kind} gradient of {name} differs by {rel} (relative)"
        );
        checked += 1;
    }
    let expected = g.keys().filter(|k| k.starts_with("grad.")).count();
    assert_eq!(
        checked, expected,
        "{kind}: every parameter with a golden gradient is checked"
    );
}

#[test]
fn bert_forward_and_gradients_match_transformers() {
    check_classification("bert");
}

#[test]
fn roberta_forward_and_gradients_match_transformers() {
    check_classification("roberta");
}

/// ELECTRA's discriminator, with embeddings narrower than the encoder (the projection
/// between them) and its GELU head.
#[test]
fn electra_forward_and_gradients_match_transformers() {
    check_classification("electra");
    check_regression("electra");
    check_tokenizer(&fixture("electra"), "electra");
}

/// A one-output head with mean squared error, as transformers does for STS-B.
fn check_regression(kind: &str) {
    let (cfg, mut weights) = read_checkpoint(&fixture(kind)).unwrap();
    let g = golden(kind);
    weights.retain(|k, _| !k.starts_with("classifier"));
    for (k, v) in &g {
        if let Some(name) = k.strip_prefix("reg_head.") {
            weights.insert(name.to_string(), v.clone());
        }
    }
    let store = ParamStore::new(
        weights,
        device(),
        0,
        Box::new(|n| n.starts_with("classifier")),
    );
    let model = Model::load(&store, &cfg, Some(1)).unwrap();
    let logits = model.logits(&golden_batch(&g), &Ctx::eval()).unwrap();
    let d = max_abs_diff(&logits, &g["reg_logits"]);
    assert!(d <= 1e-4, "{kind} regression logits differ by {d}");
    let l = loss::mse(&logits, &on_device(&g, "reg_labels", DType::F32)).unwrap();
    let d = max_abs_diff(&l.reshape(1).unwrap(), &g["reg_loss"]);
    assert!(d <= 1e-4, "{kind} regression loss differs by {d}");
    let grads = l.backward().unwrap();
    for (name, var) in store.vars() {
        let reference = &g[&format!("reg_grad.{name}")];
        let rel = max_abs_diff(grads.get(var.as_tensor()).unwrap(), reference)
            / max_abs(reference).max(GRAD_FLOOR);
        assert!(
            rel <= 1e-3,
            "{kind} regression gradient of {name} differs by {rel}"
        );
    }
}

#[test]
fn bert_regression_matches_transformers() {
    check_regression("bert");
}

#[test]
fn roberta_regression_matches_transformers() {
    check_regression("roberta");
}

/// DeBERTa v3's configuration (log-bucketed relative positions, shared attention keys,
/// relative embeddings normalised, no absolute positions nor token types, `embed_proj`),
/// and v2's other branches (separate position projections, plain distances, absolute
/// positions and token types, a tanh pooler): padding rows included, since the encoder
/// masks (query, key) pairs as transformers does.
#[test]
fn deberta_v2_forward_and_gradients_match_transformers() {
    for kind in ["deberta-v2", "deberta-v2-abs"] {
        check_classification(kind);
        check_regression(kind);
    }
    check_tokenizer(&fixture("deberta-v2"), "deberta-v2");
}

/// DeBERTa v1: the fused `in_proj` with `q_bias` and `v_bias`, `pos_proj` and
/// `pos_q_proj`, a relative window narrower than the batch.
#[test]
fn deberta_forward_and_gradients_match_transformers() {
    check_classification("deberta");
    check_regression("deberta");
    check_tokenizer(&fixture("deberta"), "deberta");
}

/// One text (or pair) as transformers tokenized it (tokenizer_golden.json).
#[derive(serde::Deserialize)]
struct TokenizedRow {
    first: String,
    second: Option<String>,
    ids: Vec<u32>,
    type_ids: Vec<u32>,
    offsets: Vec<(usize, usize)>,
    sequence_ids: Vec<Option<usize>>,
}

/// DeBERTa's tokenizers with no tokenizer.json, built from what the hub ships: v3's
/// spm.model and v1's vocab.json with merges.txt. Ids, type ids and, for pairs, the
/// context's character offsets (SQuAD cuts answers by them) against transformers, on
/// whitespace runs, tabs, newlines, accents composed and not, compatibility characters,
/// case and special tokens in the text.
#[test]
fn deberta_tokenizers_from_spm_and_bpe_files_match_transformers() {
    for kind in ["deberta-v2", "deberta"] {
        let dir = fixture(kind);
        assert!(!dir.join("tokenizer.json").exists(), "{kind}");
        let (cfg, _) = read_checkpoint(&dir).unwrap();
        let rows: Vec<TokenizedRow> = serde_json::from_str(
            &std::fs::read_to_string(dir.join("tokenizer_golden.json")).unwrap(),
        )
        .unwrap();
        let enc = TextEncoder::load(&dir, &cfg, 64).unwrap();
        let qa = TextEncoder::load(&dir, &cfg, 64)
            .unwrap()
            .with_doc_stride(4)
            .qa()
            .unwrap();
        for row in &rows {
            let what = format!("{kind} {:?} / {:?}", row.first, row.second);
            let got = enc.encode(&row.first, row.second.as_deref()).unwrap();
            assert_eq!(got.ids, row.ids, "{what}: ids");
            assert_eq!(got.type_ids, row.type_ids, "{what}: type ids");
            let Some(context) = &row.second else { continue };
            let windows = qa.windows(&row.first, context).unwrap();
            assert_eq!(windows.len(), 1, "{what}");
            assert_eq!(windows[0].encoded.ids, row.ids, "{what}: window ids");
            let want: Vec<Option<(usize, usize)>> = row
                .offsets
                .iter()
                .zip(&row.sequence_ids)
                .map(|(o, s)| (*s == Some(1)).then_some(*o))
                .collect();
            assert_eq!(windows[0].offsets, want, "{what}: context offsets");
        }
    }
}

/// transformers' `make_log_bucket_position` at every distance up to 1023, for the tiny
/// fixture's setting and deberta-v3's (256 buckets over 512 positions), where its f32
/// arithmetic rounds for real.
#[test]
fn deberta_log_buckets_match_transformers() {
    let g = golden("deberta-v2");
    for (buckets, max) in [(8, 16), (256, 512)] {
        let want = g[&format!("buckets.{buckets}.{max}")]
            .to_vec1::<i64>()
            .unwrap();
        let ours: Vec<i64> = (-1023..=1023)
            .map(|d| peft::model::relative::log_bucket(d, buckets, max))
            .collect();
        assert_eq!(ours, want, "buckets {buckets}, max {max}");
    }
}

/// Train mode, dropout on: transformers drawing peft's masks (make_dropout_golden.py
/// swaps torch's `F.dropout` for peft's hash of seed, call and element), so both sides
/// drop the same elements only if they call dropout in the same order on tensors of the
/// same layout: embeddings, each layer's attention probabilities (and DeBERTa's relative
/// embeddings), both residual branches, each head's dropouts (ELECTRA's two). Logits and
/// loss to 1e-4, every gradient to 1e-3 relative, and the same number of masks drawn.
fn check_train_mode(kind: &str) {
    let dir = fixture(kind);
    let (cfg, weights) = read_checkpoint(&dir).unwrap();
    let g = golden(kind);
    let t =
        candle_core::safetensors::load(dir.join("train_golden.safetensors"), &Device::Cpu).unwrap();
    let scalar = |k: &str| t[k].flatten_all().unwrap().to_vec1::<i64>().unwrap()[0] as u64;
    let store = ParamStore::new(weights, device(), 0, Box::new(|_| true));
    let model = Model::load(&store, &cfg, Some(3)).unwrap();
    let ctx = Ctx::train(scalar("seed"));
    let logits = model
        .forward(&golden_batch(&g), &ctx)
        .unwrap()
        .logits
        .unwrap();
    assert_eq!(ctx.calls(), scalar("calls"), "{kind}: dropout masks drawn");
    let d = max_abs_diff(&logits, &t["logits"]);
    assert!(d <= 1e-4, "{kind} train-mode logits differ by {d}");
    let labels = on_device(&g, "labels", DType::U32);
    let l = loss::cross_entropy(&logits, &labels).unwrap();
    let d = max_abs_diff(&l.reshape(1).unwrap(), &t["loss"]);
    assert!(d <= 1e-4, "{kind} train-mode loss differs by {d}");
    let grads = l.backward().unwrap();
    let vars = store.vars();
    for (name, var) in &vars {
        let key = format!("grad.{}", cfg.model_type.task_model_name(name));
        let reference = &t[&key];
        let ours = grads.get(var.as_tensor()).unwrap();
        let rel = max_abs_diff(ours, reference) / max_abs(reference).max(GRAD_FLOOR);
        assert!(
            rel <= 1e-3,
            "{kind} train-mode gradient of {name} differs by {rel} (relative)"
        );
    }
    let expected = t.keys().filter(|k| k.starts_with("grad.")).count();
    assert_eq!(vars.len(), expected, "{kind}: every gradient checked");
}

#[test]
fn dropout_paths_match_transformers_in_train_mode() {
    for kind in ["bert", "roberta", "electra", "deberta", "deberta-v2"] {
        check_train_mode(kind);
    }
    with_composed_ops(|| {
        for kind in ["bert", "roberta", "electra", "deberta", "deberta-v2"] {
            check_train_mode(kind);
        }
    });
}

/// The adapters' dropout in train mode, as PEFT applies it (make_adapter_dropout_golden.py,
/// peft's masks in PEFT): LoRA drops its input before lora_A, DoRA feeds the dropped input
/// to both of its terms; the model's own dropouts on too. LoRA and DoRA (r 4, alpha 8,
/// dropout 0.1 on query and value, B and magnitudes perturbed) on tiny-bert: the masks
/// drawn, logits and loss to 1e-5, every trainable gradient to 1e-4 relative. And LoReFT
/// as pyreft trains it (scripts/loreft_pyreft_train.py: dropout 0.05 on the edited states
/// pyreft gathers, (batch, 1, d) per group for f1+l1, after each layer's own dropouts).
fn check_adapter_train_mode(kind: &str) {
    use peft::model::{AdapterConfig, AdapterKind};
    let path = match kind {
        "loreft" => crate::common::fixture_dir("loreft").join("train_reference.safetensors"),
        _ => crate::common::fixture_dir("adapter-dropout").join(format!("{kind}.safetensors")),
    };
    let r = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    let (cfg, mut weights) = read_checkpoint(&fixture("bert")).unwrap();
    weights.retain(|k, _| !k.starts_with("classifier"));
    let learned =
        |k: &str| k.contains(".lora_") || k.contains(".loreft.") || k.starts_with("classifier");
    for (k, t) in &r {
        if !k.starts_with("grad.") && !k.starts_with("materialised.") && learned(k) {
            weights.insert(k.clone(), t.clone());
        }
    }
    let store = ParamStore::new(weights, device(), 0, Box::new(move |n| learned(n)));
    let adapter = match kind {
        "loreft" => AdapterConfig {
            kind: AdapterKind::Loreft { first: 1, last: 1 },
            r: 2,
            alpha: 0.0,
            dropout: 0.05,
            targets: vec!["all".into()],
            rslora: false,
            init: None,
        },
        _ => AdapterConfig {
            kind: if kind == "dora" {
                AdapterKind::Dora
            } else {
                AdapterKind::Lora
            },
            r: 4,
            alpha: 8.0,
            dropout: 0.1,
            targets: vec!["query".into(), "value".into()],
            rslora: false,
            init: None,
        },
    };
    let model = Model::load_with_adapters(&store, &cfg, Some(2.into()), Some(&adapter)).unwrap();
    assert!(store.created().is_empty(), "{:?}", store.created());
    let scalar = |k: &str| r[k].flatten_all().unwrap().to_vec1::<i64>().unwrap()[0] as u64;
    let ctx = Ctx::train(scalar("seed"));
    let logits = model.logits(&golden_batch(&golden("bert")), &ctx).unwrap();
    assert_eq!(ctx.calls(), scalar("calls"), "{kind}: dropout masks drawn");
    let d = max_abs_diff(&logits, &r["logits"]);
    assert!(d < 1e-5, "{kind} train-mode logits differ by {d}");
    let labels = r["labels"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_device(&device())
        .unwrap();
    let l = loss::cross_entropy(&logits, &labels).unwrap();
    let d = max_abs_diff(&l.reshape(1).unwrap(), &r["loss"]);
    assert!(d < 1e-5, "{kind} train-mode loss differs by {d}");
    let grads = l.backward().unwrap();
    let vars = store.vars();
    for (name, var) in &vars {
        let want = &r[&format!("grad.{name}")];
        let got = grads.get(var.as_tensor()).unwrap();
        let rel = max_abs_diff(got, want) / max_abs(want).max(1e-6);
        assert!(
            rel < 1e-4,
            "{kind} train-mode gradient of {name} differs by {rel}"
        );
    }
    let expected = r.keys().filter(|k| k.starts_with("grad.")).count();
    assert_eq!(vars.len(), expected, "{kind}: every gradient checked");
}

#[test]
fn adapter_dropout_matches_peft_in_train_mode() {
    for kind in ["lora", "dora", "loreft"] {
        check_adapter_train_mode(kind);
    }
    with_composed_ops(|| {
        for kind in ["lora", "dora", "loreft"] {
            check_adapter_train_mode(kind);
        }
    });
}

#[test]
fn composed_ops_match_transformers() {
    with_composed_ops(|| {
        for kind in ["bert", "roberta", "electra", "deberta-v2", "deberta"] {
            check_classification(kind);
            check_regression(kind);
        }
    });
}

/// transformers' `*ForQuestionAnswering` on the same encoder: start and end logits per
/// token, the mean of the two cross-entropies, every gradient (tests/golden/make_qa_golden.py).
fn check_span(kind: &str) {
    let (cfg, mut weights) = read_checkpoint(&fixture(kind)).unwrap();
    let g: HashMap<String, Tensor> =
        candle_core::safetensors::load(fixture(kind).join("qa_golden.safetensors"), &Device::Cpu)
            .unwrap();
    // *ForQuestionAnswering has neither pooler nor classifier.
    weights.retain(|k, _| !k.starts_with("classifier") && !k.starts_with("pooler"));
    for name in ["qa_outputs.weight", "qa_outputs.bias"] {
        weights.insert(name.to_string(), g[name].clone());
    }
    let store = ParamStore::new(weights, device(), 0, Box::new(|_| true));
    let model = Model::load_with_adapters(&store, &cfg, Some(HeadKind::Span), None).unwrap();
    assert!(store.created().is_empty(), "{:?}", store.created());
    let batch = golden_batch(&g);
    let logits = model.logits(&batch, &Ctx::eval()).unwrap();
    for (side, key) in ["start_logits", "end_logits"].iter().enumerate() {
        let ours = logits.narrow(2, side, 1).unwrap().squeeze(2).unwrap();
        let d = max_abs_diff(&ours, &g[*key]);
        assert!(d <= 1e-4, "{kind} {key} differ by {d}");
    }
    let positions = on_device(&g, "positions", DType::U32);
    let l = loss::span(&logits, &positions, &batch.attention_mask).unwrap();
    let d = max_abs_diff(&l.reshape(1).unwrap(), &g["loss"]);
    assert!(d <= 1e-4, "{kind} span loss differs by {d}");
    let grads = l.backward().unwrap();
    let vars = store.vars();
    for (name, var) in &vars {
        let key = format!("grad.{}", cfg.model_type.task_model_name(name));
        let reference = g.get(&key).unwrap_or_else(|| panic!("no golden {key}"));
        let ours = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{kind}: no gradient reached {name}"));
        // Some gradients are zero up to float noise: the key bias (softmax ignores a
        // shift per query), and the last LayerNorm's and qa_outputs' biases (each
        // window's softmax over tokens sums to one, so their gradients over tokens cancel).
        if max_abs(reference) < 1e-6 {
            let a = max_abs(ours);
            assert!(a < 1e-6, "{kind} {name}: {a}, transformers' is 0");
            continue;
        }
        let rel = max_abs_diff(ours, reference) / max_abs(reference).max(GRAD_FLOOR);
        assert!(
            rel <= 1e-3,
            "{kind} span gradient of {name} differs by {rel}"
        );
    }
    let expected = g.keys().filter(|k| k.starts_with("grad.")).count();
    assert_eq!(
        vars.len(),
        expected,
        "{kind}: every golden gradient is checked"
    );
}

#[test]
fn question_answering_heads_match_transformers() {
    for kind in [
        "bert",
        "roberta",
        "electra",
        "deberta-v2",
        "deberta-v2-abs",
        "deberta",
    ] {
        check_span(kind);
    }
    with_composed_ops(|| {
        for kind in ["bert", "deberta-v2", "deberta"] {
            check_span(kind);
        }
    });
}

/// Padding is left out of the span softmax: a padded batch's loss is the mean of its
/// windows' losses alone.
#[test]
fn span_loss_ignores_padding() {
    let (cfg, mut weights) = read_checkpoint(&fixture("bert")).unwrap();
    weights.retain(|k, _| !k.starts_with("classifier") && !k.starts_with("pooler"));
    let store = ParamStore::new(weights, Device::Cpu, 5, Box::new(|_| false));
    let model = Model::load_with_adapters(&store, &cfg, Some(HeadKind::Span), None).unwrap();
    let enc = TextEncoder::load(&fixture("bert"), &cfg, 32).unwrap();
    let a = enc
        .encode("Who sat?", Some("The cat sat on the mat."))
        .unwrap();
    let b = enc.encode("Where?", Some("Paris.")).unwrap();
    assert!(a.len() > b.len() + 3, "b must be padded");
    let labels =
        |rows: &[[u32; 2]]| Tensor::from_vec(rows.concat(), (rows.len(), 2), &Device::Cpu).unwrap();
    let one = |e: &peft::tokenize::Encoded, y: [u32; 2]| {
        let batch = collate(&[e], enc.pad_id(), &Device::Cpu).unwrap();
        let logits = model.logits(&batch, &Ctx::eval()).unwrap();
        loss::span(&logits, &labels(&[y]), &batch.attention_mask)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let batch = collate(&[&a, &b], enc.pad_id(), &Device::Cpu).unwrap();
    let logits = model.logits(&batch, &Ctx::eval()).unwrap();
    let both = loss::span(&logits, &labels(&[[7, 9], [5, 5]]), &batch.attention_mask)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let mean = (one(&a, [7, 9]) + one(&b, [5, 5])) / 2.0;
    assert!((both - mean).abs() < 1e-5, "{both} vs {mean}");
}

#[derive(serde::Deserialize)]
struct Texts {
    max_len: usize,
    first: Vec<String>,
    second: Vec<Option<String>>,
}

/// Token ids, type ids and padding as transformers' tokenizer produced them.
fn check_tokenizer(dir: &Path, kind: &str) {
    let (cfg, _) = read_checkpoint(&fixture(kind)).unwrap();
    let texts: Texts = serde_json::from_str(
        &std::fs::read_to_string(fixture(kind).join("golden_texts.json")).unwrap(),
    )
    .unwrap();
    let enc = TextEncoder::load(dir, &cfg, texts.max_len).unwrap();
    let encoded: Vec<_> = texts
        .first
        .iter()
        .zip(&texts.second)
        .map(|(a, b)| enc.encode(a, b.as_deref()).unwrap())
        .collect();
    let refs: Vec<_> = encoded.iter().collect();
    let batch = collate(&refs, enc.pad_id(), &Device::Cpu).unwrap();
    let g = golden(kind);
    let ids = |t: &Tensor| t.to_dtype(DType::U32).unwrap().to_vec2::<u32>().unwrap();
    assert_eq!(
        ids(&batch.input_ids),
        ids(&g["input_ids"]),
        "{kind} input ids from {}",
        dir.display()
    );
    assert_eq!(
        ids(&batch.token_type_ids),
        ids(&g["token_type_ids"]),
        "{kind} token type ids"
    );
    assert_eq!(
        ids(&batch.attention_mask),
        ids(&g["attention_mask"]),
        "{kind} attention mask"
    );
}

#[test]
fn tokenizer_json_matches_transformers() {
    check_tokenizer(&fixture("bert"), "bert");
    check_tokenizer(&fixture("roberta"), "roberta");
}

#[test]
fn vocab_file_fallback_matches_tokenizer_json() {
    for kind in ["bert", "roberta"] {
        let tmp = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(fixture(kind)).unwrap() {
            let p = entry.unwrap().path();
            if p.file_name().unwrap() != "tokenizer.json" {
                std::fs::copy(&p, tmp.path().join(p.file_name().unwrap())).unwrap();
            }
        }
        check_tokenizer(tmp.path(), kind);
    }
}

#[test]
fn pytorch_bin_with_gamma_beta_names_loads_the_same_weights() {
    let (_, st) = read_checkpoint(&fixture("bert")).unwrap();
    let legacy = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-bert-bin");
    let (_, bin) = read_checkpoint(&legacy).unwrap();
    assert_eq!(st.len(), bin.len());
    for (name, t) in &st {
        let other = bin
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing from pytorch_model.bin"));
        assert_eq!(max_abs_diff(t, other), 0.0, "{name}");
    }
}
