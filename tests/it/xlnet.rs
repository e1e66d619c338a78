//! XLNet's content stream against transformers 5.25 (tests/golden/make_xlnet_golden.py,
//! tests/fixtures/tiny-xlnet: a tiny random XLNet, 2 layers, d_model 32, 4 heads): the
//! relative encoding, every hidden state, logits, loss and every gradient of
//! `XLNetForSequenceClassification` (classification and regression heads) on a batch of
//! single sentences and pairs padded on the left; the same in train mode with peft's
//! dropout masks drawn inside transformers; and `XLNetForQuestionAnsweringSimple`'s span
//! logits, loss and gradients.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use peft::model::params::ParamStore;
use peft::model::xlnet::{positions, SpanHead, SummaryHead, Xlnet, XlnetConfig};
use peft::model::Ctx;

use crate::common::{fixture_dir, max_abs, max_abs_diff};

fn load(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture_dir("tiny-xlnet").join(name), &Device::Cpu).unwrap()
}

fn config() -> XlnetConfig {
    let text = std::fs::read_to_string(fixture_dir("tiny-xlnet").join("config.json")).unwrap();
    XlnetConfig::parse(&text).unwrap()
}

fn ids(g: &HashMap<String, Tensor>, k: &str) -> Tensor {
    g[k].to_dtype(DType::U32).unwrap()
}

/// Relative errors are taken against max(|reference|, GRAD_FLOOR): some gradients are zero
/// up to float noise (the span head's bias: the softmax ignores a shift; the last layer's
/// LayerNorm bias under it), 1e-8 on both sides.
const GRAD_FLOOR: f32 = 1e-3;

/// Every trainable gradient as the golden's `{prefix}{name}`, to 1e-4 relative; returns
/// how many were checked.
fn check_grads(
    store: &ParamStore,
    grads: &candle_core::backprop::GradStore,
    g: &HashMap<String, Tensor>,
    prefix: &str,
    what: &str,
) -> usize {
    let vars = store.vars();
    for (name, var) in &vars {
        let want = &g[&format!("{prefix}{name}")];
        let got = grads.get(var.as_tensor()).unwrap();
        let got = got.reshape(want.shape()).unwrap();
        let rel = max_abs_diff(&got, want) / max_abs(want).max(GRAD_FLOOR);
        assert!(rel < 1e-4, "{what}: gradient of {name} differs by {rel}");
    }
    vars.len()
}

/// The classification model over `weights`, every tensor it reads trainable.
fn classifier(weights: HashMap<String, Tensor>, labels: usize) -> (ParamStore, Xlnet, SummaryHead) {
    let cfg = config();
    let store = ParamStore::new(weights, Device::Cpu, 0, Box::new(|_| true));
    let encoder = Xlnet::load(&store.root().pp("transformer"), &cfg).unwrap();
    let head = SummaryHead::load(&store.root(), &cfg, labels).unwrap();
    assert!(store.created().is_empty(), "{:?}", store.created());
    (store, encoder, head)
}

#[test]
fn xlnet_matches_transformers_in_eval_mode() {
    let g = load("golden.safetensors");
    let weights = load("model.safetensors");
    let cfg = config();
    let pos = positions(24, cfg.d_model, cfg.clamp_len, &Device::Cpu).unwrap();
    let d = max_abs_diff(&pos, &g["pos_emb"]);
    assert!(d < 1e-5, "relative encoding differs by {d}");

    let (store, encoder, head) = classifier(weights.clone(), 3);
    let (input, types, mask) = (
        ids(&g, "input_ids"),
        ids(&g, "token_type_ids"),
        ids(&g, "attention_mask"),
    );
    let ctx = Ctx::eval();
    let hidden = encoder.forward(&input, &types, &mask, &ctx).unwrap();
    let d = max_abs_diff(&hidden, &g["last_hidden_state"]);
    assert!(d < 1e-5, "last hidden state differs by {d}");
    let logits = head.forward(&hidden, &mask, &ctx).unwrap();
    let d = max_abs_diff(&logits, &g["logits"]);
    assert!(d < 1e-5, "logits differ by {d}");
    let loss = peft::loss::cross_entropy(&logits, &ids(&g, "labels")).unwrap();
    let d = max_abs_diff(&loss.reshape(1).unwrap(), &g["loss"]);
    assert!(d < 1e-5, "loss differs by {d}");
    let grads = loss.backward().unwrap();
    // Every parameter but mask_emb (the query stream's), which the golden has no gradient of.
    let n = check_grads(&store, &grads, &g, "grad.", "classification");
    let want = g.keys().filter(|k| k.starts_with("grad.")).count();
    assert_eq!(n, want, "every gradient checked");

    // Regression: a fresh one-output head on the same encoder, MSE.
    let mut reg = weights;
    reg.retain(|k, _| k.starts_with("transformer."));
    for (k, t) in g.iter().filter(|(k, _)| k.starts_with("reg_head.")) {
        reg.insert(k["reg_head.".len()..].to_string(), t.clone());
    }
    let (store, encoder, head) = classifier(reg, 1);
    let hidden = encoder.forward(&input, &types, &mask, &ctx).unwrap();
    let logits = head.forward(&hidden, &mask, &ctx).unwrap();
    let d = max_abs_diff(&logits, &g["reg_logits"]);
    assert!(d < 1e-5, "regression logits differ by {d}");
    let loss = peft::loss::mse(&logits, &g["reg_labels"]).unwrap();
    let d = max_abs_diff(&loss.reshape(1).unwrap(), &g["reg_loss"]);
    assert!(d < 1e-5, "regression loss differs by {d}");
    let grads = loss.backward().unwrap();
    check_grads(&store, &grads, &g, "reg_grad.", "regression");
}

/// Train mode: every dropout (word embeddings, the relative encoding expanded over the
/// batch, attention probabilities, both residual branches and the feed-forward's inner
/// activation per layer, the encoder's output, the summary's last dropout) draws the
/// masks transformers drew with peft's hashed masks, in the same order and layout.
#[test]
fn xlnet_matches_transformers_in_train_mode() {
    let g = load("golden.safetensors");
    let t = load("train_golden.safetensors");
    let scalar = |k: &str| t[k].flatten_all().unwrap().to_vec1::<i64>().unwrap()[0] as u64;
    let (store, encoder, head) = classifier(load("model.safetensors"), 3);
    let ctx = Ctx::train(scalar("seed"));
    let hidden = encoder
        .forward(
            &ids(&g, "input_ids"),
            &ids(&g, "token_type_ids"),
            &ids(&g, "attention_mask"),
            &ctx,
        )
        .unwrap();
    let mask = ids(&g, "attention_mask");
    let logits = head.forward(&hidden, &mask, &ctx).unwrap();
    assert_eq!(ctx.calls(), scalar("calls"), "dropout masks drawn");
    let d = max_abs_diff(&logits, &t["logits"]);
    assert!(d < 1e-5, "train-mode logits differ by {d}");
    let loss = peft::loss::cross_entropy(&logits, &ids(&g, "labels")).unwrap();
    let d = max_abs_diff(&loss.reshape(1).unwrap(), &t["loss"]);
    assert!(d < 1e-5, "train-mode loss differs by {d}");
    let grads = loss.backward().unwrap();
    check_grads(&store, &grads, &t, "grad.", "train mode");
    // Another seed draws other masks: the comparison can fail.
    let other = head
        .forward(
            &encoder
                .forward(
                    &ids(&g, "input_ids"),
                    &ids(&g, "token_type_ids"),
                    &ids(&g, "attention_mask"),
                    &Ctx::train(scalar("seed") + 1),
                )
                .unwrap(),
            &mask,
            &Ctx::train(scalar("seed") + 1),
        )
        .unwrap();
    assert!(max_abs_diff(&other, &t["logits"]) > 1e-4);
}

/// `XLNetForQuestionAnsweringSimple`: span logits on unpadded sequences, the mean of the
/// start and end cross-entropies, every gradient; and on the same sequences padded on the
/// left, every position's logits (padding attends to itself and the real tokens).
#[test]
fn xlnet_span_head_matches_transformers() {
    let q = load("qa_golden.safetensors");
    let cfg = config();
    let mut weights = load("model.safetensors");
    weights.retain(|k, _| k.starts_with("transformer."));
    for k in ["qa_outputs.weight", "qa_outputs.bias"] {
        weights.insert(k.to_string(), q[k].clone());
    }
    let store = ParamStore::new(weights, Device::Cpu, 0, Box::new(|_| true));
    let encoder = Xlnet::load(&store.root().pp("transformer"), &cfg).unwrap();
    let head = SpanHead::load(&store.root(), &cfg).unwrap();
    let ctx = Ctx::eval();
    let run = |prefix: &str| {
        let hidden = encoder
            .forward(
                &ids(&q, &format!("{prefix}input_ids")),
                &ids(&q, &format!("{prefix}token_type_ids")),
                &ids(&q, &format!("{prefix}attention_mask")),
                &ctx,
            )
            .unwrap();
        let logits = head.forward(&hidden, &ctx).unwrap();
        let column = |i: usize| {
            let c = logits.narrow(2, i, 1).unwrap().squeeze(2).unwrap();
            c.contiguous().unwrap()
        };
        let (start, end) = (column(0), column(1));
        for (got, k) in [(&start, "start_logits"), (&end, "end_logits")] {
            let d = max_abs_diff(got, &q[&format!("{prefix}{k}")]);
            assert!(d < 1e-5, "{prefix}{k} differ by {d}");
        }
        (start, end)
    };
    run("padded.");
    let (start, end) = run("");
    let positions = ids(&q, "positions");
    let column = |i: usize| {
        let c = positions.narrow(1, i, 1).unwrap().squeeze(1).unwrap();
        c.contiguous().unwrap()
    };
    let loss = ((peft::loss::cross_entropy(&start, &column(0)).unwrap()
        + peft::loss::cross_entropy(&end, &column(1)).unwrap())
    .unwrap()
        / 2.0)
        .unwrap();
    let d = max_abs_diff(&loss.reshape(1).unwrap(), &q["loss"]);
    assert!(d < 1e-5, "span loss differs by {d}");
    let grads = loss.backward().unwrap();
    check_grads(&store, &grads, &q, "grad.", "span");
}

#[test]
fn xlnet_configs_fine_tuning_cannot_run_are_refused_by_key() {
    let text = std::fs::read_to_string(fixture_dir("tiny-xlnet").join("config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    for (key, value, named) in [
        ("attn_type", serde_json::json!("uni"), "attn_type"),
        ("bi_data", serde_json::json!(true), "bi_data"),
        ("summary_type", serde_json::json!("mean"), "summary_type"),
        ("d_model", serde_json::json!(33), "d_model"),
    ] {
        let saved = v[key].clone();
        v[key] = value;
        let err = XlnetConfig::parse(&v.to_string())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(named), "{key}: {err}");
        v[key] = saved;
    }
    assert!(XlnetConfig::parse(&v.to_string()).is_ok());
}

/// The tokenizer built from `spiece.model` (no tokenizer.json) and the one transformers
/// 5.25 writes to tokenizer.json give transformers' ids, token types and offsets on the
/// goldens' texts: runs of whitespace, accents, `` and '' quotes, the precompiled map's
/// ligatures and circled digits, pairs, and special tokens written in the text.
#[test]
fn xlnet_tokenizers_match_transformers() {
    let cases: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(fixture_dir("tiny-xlnet").join("tokenizer_golden.json")).unwrap(),
    )
    .unwrap();
    assert!(cases.len() >= 10);
    let from_spiece = peft::tokenize::xlnet::from_spiece(&fixture_dir("tiny-xlnet")).unwrap();
    let from_json =
        tokenizers::Tokenizer::from_file(fixture_dir("tiny-xlnet-fast").join("tokenizer.json"))
            .unwrap();
    for (which, tok) in [
        ("spiece.model", &from_spiece),
        ("tokenizer.json", &from_json),
    ] {
        for case in &cases {
            let first = case["first"].as_str().unwrap();
            let enc = match case["second"].as_str() {
                Some(second) => tok.encode((first, second), true),
                None => tok.encode(first, true),
            }
            .unwrap();
            let want = |k: &str| -> Vec<u32> { serde_json::from_value(case[k].clone()).unwrap() };
            assert_eq!(enc.get_ids(), want("ids"), "{which}: ids of {first:?}");
            assert_eq!(
                enc.get_type_ids(),
                want("type_ids"),
                "{which}: types of {first:?}"
            );
            // transformers counts characters, `tokenizers` bytes.
            let texts = [first, case["second"].as_str().unwrap_or("")];
            let chars: Vec<(usize, usize)> = enc
                .get_offsets()
                .iter()
                .zip(enc.get_sequence_ids())
                .map(|(&(a, b), seq)| match seq {
                    Some(s) => {
                        let count = |i: usize| texts[s][..i].chars().count();
                        (count(a), count(b))
                    }
                    None => (a, b),
                })
                .collect();
            let offsets: Vec<(usize, usize)> =
                serde_json::from_value(case["offsets"].clone()).unwrap();
            assert_eq!(chars, offsets, "{which}: offsets of {first:?}");
        }
    }
}

/// Through `Model`, as `peft` runs it: the checkpoint read under its `transformer.` prefix,
/// the rows padded on the right (collate) where transformers pads on the left. Real tokens
/// see no padding and relative attention reads distances only, so the summary of the last
/// real token gives transformers' logits, loss and every gradient.
#[test]
fn the_model_padded_on_the_right_gives_transformers_left_padded_results() {
    use peft::model::{read_checkpoint, Model};
    use peft::tokenize::{collate, Encoded};
    let g = load("golden.safetensors");
    let (cfg, weights) = read_checkpoint(&fixture_dir("tiny-xlnet")).unwrap();
    assert!(
        !weights.contains_key("mask_emb"),
        "the query stream's tensor is left out"
    );
    let store = ParamStore::new(weights, Device::Cpu, 0, Box::new(|_| true));
    let model = Model::load(&store, &cfg, Some(3)).unwrap();
    assert!(store.created().is_empty(), "{:?}", store.created());
    let rows = |k: &str| g[k].to_dtype(DType::U32).unwrap().to_vec2::<u32>().unwrap();
    let (input, types, mask) = (
        rows("input_ids"),
        rows("token_type_ids"),
        rows("attention_mask"),
    );
    let encoded: Vec<Encoded> = (0..input.len())
        .map(|r| {
            let real = |v: &Vec<u32>| -> Vec<u32> {
                v.iter()
                    .zip(&mask[r])
                    .filter(|(_, m)| **m == 1)
                    .map(|(x, _)| *x)
                    .collect()
            };
            Encoded {
                ids: real(&input[r]),
                type_ids: real(&types[r]),
            }
        })
        .collect();
    let refs: Vec<&Encoded> = encoded.iter().collect();
    let batch = collate(&refs, cfg.pad_token_id, &Device::Cpu).unwrap();
    let right = batch.attention_mask.to_vec2::<f32>().unwrap();
    assert!(
        right.iter().any(|r| r[0] == 1.0 && r[r.len() - 1] == 0.0),
        "padded on the right"
    );
    let logits = model.logits(&batch, &Ctx::eval()).unwrap();
    let d = max_abs_diff(&logits, &g["logits"]);
    assert!(d < 1e-5, "logits differ by {d}");
    let loss = peft::loss::cross_entropy(&logits, &ids(&g, "labels")).unwrap();
    let grads = loss.backward().unwrap();
    let vars = store.vars();
    for (name, var) in &vars {
        let hf = cfg.model_type.task_model_name(name);
        let want = &g[&format!("grad.{hf}")];
        let got = grads
            .get(var.as_tensor())
            .unwrap()
            .reshape(want.shape())
            .unwrap();
        let rel = max_abs_diff(&got, want) / max_abs(want).max(GRAD_FLOOR);
        assert!(rel < 1e-4, "gradient of {name} ({hf}) differs by {rel}");
    }
    assert_eq!(
        vars.len(),
        g.keys().filter(|k| k.starts_with("grad.")).count()
    );
}

/// Through the binary: XLNet trains with the methods that apply beyond those of the
/// every-method table (full, bitfit with its three attention biases, top-layers, head), on
/// GLUE and SQuAD 2.0, and `peft eval` re-scores each run to its best evaluation; adapters
/// are refused naming XLNet; `merge` writes the tensors transformers saved for this model
/// (every name and shape but the head's label count), `mask_emb` included, under XLNet's
/// task classes, with its SentencePiece model beside them.
#[test]
fn xlnet_trains_and_merges_through_the_binary() {
    use crate::common::{metrics, ok, peft, stderr, tensors, train, write_rte, write_squad};
    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 32, 8);
    write_squad(tmp.path(), "v2.0", 16, 8);
    let model = crate::common::fixture("tiny-xlnet");
    let base = load("model.safetensors");
    let steps = ["--max-steps", "3", "--lr", "1e-2", "--warmup-ratio", "0"];
    for (task, method, trains) in [
        ("rte", "full", None),
        ("rte", "bitfit", Some("r_s_bias")),
        ("rte", "top-layers", Some("layer.1.ff.layer_1.weight")),
        ("rte", "head", None),
        ("squad_v2", "full", None),
        ("squad_v2", "bitfit", Some("r_w_bias")),
    ] {
        let out = tmp.path().join(format!("{task}-{method}"));
        let mut args = vec!["--task", task, "--method", method];
        if method == "top-layers" {
            args.extend(["--layers", "1"]);
        }
        args.extend(steps);
        train(&model, tmp.path(), &out, &args);
        let trained = tensors(&out.join("last.safetensors"));
        if let Some(part) = trains {
            assert!(
                trained.keys().any(|k| k.contains(part)),
                "{method}: {part} not trained"
            );
        }
        if method == "head" {
            assert!(
                trained
                    .keys()
                    .all(|k| k.starts_with("sequence_summary.") || k.starts_with("logits_proj.")),
                "{:?}",
                trained.keys()
            );
        }
        let metric = if task == "rte" { "accuracy" } else { "f1" };
        let m = metrics(&out);
        let best = m.iter().find(|r| r["best"].as_bool().unwrap()).unwrap()["dev"]["dev"][metric]
            .as_f64()
            .unwrap();
        let shown = ok(peft(&[
            "eval",
            "--checkpoint",
            out.to_str().unwrap(),
            "--json",
        ]));
        let v: serde_json::Value = serde_json::from_str(shown.trim()).unwrap();
        assert_eq!(
            v["metrics"][metric].as_f64().unwrap(),
            best,
            "{task} {method}"
        );
    }

    for method in ["lora", "ia3", "dora", "ina", "loreft"] {
        let out = tmp.path().join(method);
        let o = peft(&[
            "train",
            "--model",
            &model,
            "--data-dir",
            tmp.path().to_str().unwrap(),
            "--task",
            "rte",
            "--method",
            method,
            "--output-dir",
            out.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(2), "{method}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains("XLNet") && e.contains(method), "{method}: {e}");
    }

    for (task, class, head) in [
        (
            "rte",
            "XLNetForSequenceClassification",
            "logits_proj.weight",
        ),
        (
            "squad_v2",
            "XLNetForQuestionAnsweringSimple",
            "qa_outputs.weight",
        ),
    ] {
        let merged = tmp.path().join(format!("merged-{task}"));
        let run = tmp.path().join(format!("{task}-full"));
        ok(peft(&[
            "merge",
            "--checkpoint",
            run.to_str().unwrap(),
            "--output",
            merged.to_str().unwrap(),
        ]));
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(merged.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["architectures"][0], class);
        assert!(merged.join("spiece.model").is_file());
        let written = tensors(&merged.join("model.safetensors"));
        // transformers' own save of this model, with the other task's head swapped in.
        let mut want: Vec<(String, Vec<usize>)> = base
            .iter()
            .filter(|(k, _)| k.starts_with("transformer."))
            .map(|(k, t)| (k.clone(), t.dims().to_vec()))
            .collect();
        for (k, t) in written
            .iter()
            .filter(|(k, _)| !k.starts_with("transformer."))
        {
            want.push((k.clone(), t.dims().to_vec()));
        }
        want.sort();
        let mut got: Vec<(String, Vec<usize>)> = written
            .iter()
            .map(|(k, t)| (k.clone(), t.dims().to_vec()))
            .collect();
        got.sort();
        assert_eq!(got, want, "{task}");
        assert!(written.contains_key(head), "{task}: no {head}");
        if task == "rte" {
            assert!(written.contains_key("sequence_summary.summary.weight"));
            assert_eq!(written.len(), base.len(), "every tensor transformers saved");
        }
    }
}
