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

/// The per-example estimate in batches (probes on LayerNorms, linear layers and embedding
/// tables, the rest one example at a time) against the definition computed here one
/// example at a time: the golden batch's ten examples, of lengths that pad each batch,
/// over LayerNorm tensors, biases and every parameter, on BERT, ELECTRA (its embeddings
/// narrower than the encoder) and DeBERTa v3's layout (whose relative embeddings, their
/// LayerNorm and the query and key projections they share no probe reaches), and on a
/// regression head (RoBERTa) and a question-answering head (span loss).
#[test]
fn batched_per_example_fisher_equals_one_example_at_a_time() {
    use peft::data::tasks::Label;
    use peft::methods::{is_bias, is_layernorm};
    use peft::model::HeadKind;
    type Scope = fn(&str) -> bool;
    let scopes: [(&str, Scope); 3] = [
        ("layernorm", |n| is_layernorm(n)),
        ("bias", |n| is_bias(n)),
        ("everything", |_| true),
    ];
    for (kind, head) in [
        ("tiny-bert", HeadKind::Classes(3)),
        ("tiny-deberta-v2", HeadKind::Classes(3)),
        ("tiny-electra", HeadKind::Classes(3)),
        ("tiny-roberta", HeadKind::Classes(1)),
        ("tiny-bert", HeadKind::Span),
    ] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(kind);
        let (cfg, weights) = read_checkpoint(&dir).unwrap();
        let g =
            candle_core::safetensors::load(dir.join("golden.safetensors"), &Device::Cpu).unwrap();
        let v2 = |k: &str| g[k].to_dtype(DType::U32).unwrap().to_vec2::<u32>().unwrap();
        let (ids, types, mask) = (v2("input_ids"), v2("token_type_ids"), v2("attention_mask"));
        let classes = g["labels"]
            .to_dtype(DType::U32)
            .unwrap()
            .to_vec1::<u32>()
            .unwrap();
        let scores = g["reg_labels"].to_vec1::<f32>().unwrap();
        let mut data = Dataset {
            split: "train".into(),
            ids: Vec::new(),
            inputs: Vec::new(),
            labels: Vec::new(),
            qa: None,
        };
        for i in 0..ids.len() {
            let n = mask[i].iter().sum::<u32>() as usize;
            data.ids.push(i.to_string());
            data.inputs.push(Encoded {
                ids: ids[i][..n].to_vec(),
                type_ids: types[i][..n].to_vec(),
            });
            data.labels.push(match head {
                HeadKind::Classes(1) => Label::Score(scores[i]),
                HeadKind::Classes(_) => Label::Class(classes[i]),
                HeadKind::Span => {
                    let start = (1 + i % (n - 2)) as u32;
                    Label::Span {
                        start,
                        end: (start + 1).min(n as u32 - 1),
                    }
                }
            });
        }
        let mut weights = weights;
        peft::model::fit_head(&mut weights, head);
        for (scope, trains) in scopes {
            let store = ParamStore::new(weights.clone(), Device::Cpu, 3, Box::new(trains));
            let model = Model::load_with_adapters(&store, &cfg, Some(head), None).unwrap();
            let opts = FisherOptions {
                samples: None,
                estimator: Estimator::PerExample,
                seed: 1,
            };
            let pad = cfg.pad_token_id;
            let ours = estimate(&model, &store, &data, pad, opts, &Device::Cpu).unwrap();
            // What probes reach, batched; the rest goes one example at a time.
            let all: Vec<usize> = (0..data.len()).collect();
            let (_, rest) =
                peft::fisher::batched(&model, &store, &data, pad, &Device::Cpu, &all).unwrap();
            let unreached: &[&str] = match (kind, scope) {
                ("tiny-deberta-v2", "everything") => &[
                    "encoder.LayerNorm.bias",
                    "encoder.LayerNorm.weight",
                    "encoder.layer.0.attention.self.key_proj.bias",
                    "encoder.layer.0.attention.self.key_proj.weight",
                    "encoder.layer.0.attention.self.query_proj.bias",
                    "encoder.layer.0.attention.self.query_proj.weight",
                    "encoder.layer.1.attention.self.key_proj.bias",
                    "encoder.layer.1.attention.self.key_proj.weight",
                    "encoder.layer.1.attention.self.query_proj.bias",
                    "encoder.layer.1.attention.self.query_proj.weight",
                    "encoder.rel_embeddings.weight",
                ],
                ("tiny-deberta-v2", "layernorm") => {
                    &["encoder.LayerNorm.bias", "encoder.LayerNorm.weight"]
                }
                // v3's layout shares the query and key projections with the relative
                // positions.
                ("tiny-deberta-v2", "bias") => &[
                    "encoder.LayerNorm.bias",
                    "encoder.layer.0.attention.self.key_proj.bias",
                    "encoder.layer.0.attention.self.query_proj.bias",
                    "encoder.layer.1.attention.self.key_proj.bias",
                    "encoder.layer.1.attention.self.query_proj.bias",
                ],
                _ => &[],
            };
            assert_eq!(rest, unreached, "{kind} {scope}");
            let want = one_at_a_time(&model, &store, &data, pad, head);
            assert_eq!(ours.len(), want.len(), "{kind} {scope}");
            assert!(!ours.is_empty(), "{kind} {scope}");
            for (name, w) in &want {
                let rel = crate::common::max_abs_diff(&ours[name], w)
                    / crate::common::max_abs(w).max(1e-12);
                assert!(
                    rel < 1e-4,
                    "{kind} {head:?} {scope}: {name} differs by {rel}"
                );
            }
        }
    }
}

/// The definition: each example alone, dropout off, its own loss's squared gradient,
/// averaged (a Gaussian's half squared error for regression).
fn one_at_a_time(
    model: &Model,
    store: &ParamStore,
    data: &Dataset,
    pad: u32,
    head: peft::model::HeadKind,
) -> std::collections::BTreeMap<String, candle_core::Tensor> {
    let mut acc: std::collections::BTreeMap<String, candle_core::Tensor> =
        std::collections::BTreeMap::new();
    for i in 0..data.len() {
        let batch = peft::tokenize::collate(&[&data.inputs[i]], pad, &Device::Cpu).unwrap();
        let labels = data.label_tensor(&[i], &Device::Cpu).unwrap();
        let logits = model.logits(&batch, &peft::model::Ctx::eval()).unwrap();
        let l = match head {
            peft::model::HeadKind::Classes(1) => {
                (peft::loss::mse(&logits, &labels).unwrap() * 0.5).unwrap()
            }
            _ => peft::loss::for_head(head, &logits, &labels, &batch.attention_mask).unwrap(),
        };
        let grads = l.backward().unwrap();
        for (name, var) in store.vars() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let sq = (g.sqr().unwrap() / data.len() as f64).unwrap();
            let sum = match acc.remove(&name) {
                Some(a) => (a + sq).unwrap(),
                None => sq,
            };
            acc.insert(name, sum);
        }
    }
    acc
}
