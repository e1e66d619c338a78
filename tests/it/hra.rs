//! HRA against Hugging Face PEFT itself (scripts/hra_reference.py, tests/fixtures/hra:
//! PEFT 0.21.2's HRAConfig, r 4 on query and value of the tiny BERT, every hra_u set away
//! from its start): logits, loss and every gradient; PEFT's merge; the symmetric start
//! leaving the model as it was; a PEFT-saved HRA adapter read back; and `--method hra`
//! through the binary, its PEFT export and merge.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use peft::model::{read_checkpoint, AdapterConfig, AdapterKind, Arch, Ctx, Model, ParamStore};

use crate::adapters::{dir_logits, merge, run_logits};
use crate::common::*;

fn hra(r: usize) -> AdapterConfig {
    AdapterConfig {
        kind: AdapterKind::Hra,
        r,
        alpha: 0.0,
        dropout: 0.0,
        targets: vec!["query".into(), "value".into()],
        rslora: false,
        init: None,
    }
}

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture_dir("hra").join("plain.safetensors"), &Device::Cpu)
        .unwrap()
}

#[test]
fn hra_matches_peft() {
    let g = reference();
    let trains = |n: &str| n.ends_with(".hra_u") || n.starts_with("classifier.");
    let base = matches_reference("tiny-bert", &g, &hra(4), trains);

    // PEFT's merge: W·H.
    let mut folded = base;
    AdapterKind::Hra.def().fold(&hra(4), &mut folded).unwrap();
    let name = "encoder.layer.0.attention.self.query.weight";
    let d = max_abs_diff(&folded[name], &g[&format!("merged.{name}")]);
    assert!(d < 1e-5, "merged weight differs by {d}");
    assert!(!folded.keys().any(|k| k.ends_with(".hra_u")));
}

/// PEFT's symmetric start (pairs of equal reflections) is the base model; an odd r, whose
/// start PEFT warns about, is not.
#[test]
fn the_symmetric_start_is_the_base_model() {
    let dir = fixture_dir("tiny-bert");
    let (cfg, w) = read_checkpoint(&dir).unwrap();
    let batch = golden_batch(&dir);
    let logits = |a: Option<&AdapterConfig>| {
        let store = ParamStore::new(w.clone(), Device::Cpu, 3, Box::new(|_| false));
        Model::load_with_adapters(&store, &cfg, Some(3.into()), a)
            .unwrap()
            .logits(&batch, &Ctx::eval())
            .unwrap()
    };
    let base = logits(None);
    let d = max_abs_diff(&logits(Some(&hra(4))), &base);
    assert!(d < 1e-5, "even r: {d}");
    assert!(
        max_abs_diff(&logits(Some(&hra(3))), &base) > 1e-4,
        "odd r changed nothing"
    );
}

/// An adapter PEFT saved (save_pretrained): read as ours, it gives PEFT's probabilities.
#[test]
fn a_peft_saved_hra_adapter_reads_back() {
    let dir = fixture_dir("tiny-bert");
    let (cfg, mut weights) = read_checkpoint(&dir).unwrap();
    peft::model::drop_head(&mut weights);
    let saved =
        peft::run::peft_format::read(&fixture_dir("hra").join("adapter"), Arch::Bert).unwrap();
    let a = saved.config.unwrap();
    assert_eq!((a.kind, a.r), (AdapterKind::Hra, 4));
    weights.extend(saved.tensors);
    let model = Model::load_with_adapters(
        &ParamStore::frozen(weights, Device::Cpu),
        &cfg,
        Some(2.into()),
        Some(&a),
    )
    .unwrap();
    let probs =
        candle_nn::ops::softmax(&model.logits(&golden_batch(&dir), &Ctx::eval()).unwrap(), 1)
            .unwrap();
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_dir("hra").join("adapter/expected.json")).unwrap(),
    )
    .unwrap();
    let want: Vec<Vec<f32>> = serde_json::from_value(expected["probabilities"].clone()).unwrap();
    let want = Tensor::new(want, &Device::Cpu).unwrap();
    let d = max_abs_diff(&probs, &want);
    assert!(d < 1e-5, "probabilities differ by {d}");
}

/// Through the binary on BERT and DeBERTa v3 (its `query_proj`), GLUE and SQuAD: only
/// hra_u and the head train, the run exports PEFT's HRA format, merge gives the run's
/// logits, and WiSE-FT is refused.
#[test]
fn hra_trains_exports_and_merges() {
    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 24, 8);
    write_squad(tmp.path(), "v2.0", 12, 6);
    for family in ["tiny-bert", "tiny-deberta-v2"] {
        for task in ["rte", "squad_v2"] {
            let out = tmp.path().join(format!("{family}-{task}"));
            let args = [
                "--task",
                task,
                "--method",
                "hra",
                "--hra-r",
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
                assert!(
                    k.ends_with(".hra_u")
                        || ["classifier.", "qa_outputs.", "pooler."]
                            .iter()
                            .any(|p| k.starts_with(p)),
                    "{family} {task}: {k} trained"
                );
            }
            assert!(saved.keys().any(|k| k.ends_with(".hra_u")));
        }
        let run = tmp.path().join(format!("{family}-rte"));
        let exported: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(run.join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(exported["peft_type"], "HRA");
        assert_eq!(exported["r"], 4);
        let merged = tmp.path().join(format!("{family}-merged"));
        ok(merge(&run, &merged, &[]));
        let mut a = hra(4);
        a.targets = vec!["query".into(), "value".into()];
        let d = max_abs_diff(
            &dir_logits(&merged),
            &run_logits(&fixture(family), &run, Some(&a)),
        );
        assert!(d <= 1e-5, "{family}: merged logits differ by {d}");
        let o = merge(
            &run,
            &tmp.path().join(format!("{family}-half")),
            &["--alpha", "0.5"],
        );
        assert_eq!(o.status.code(), Some(2));
        assert!(stderr(&o).contains("WiSE-FT"), "{}", stderr(&o));
    }
}

/// `--hra-orth-weight 0.1`: the loss gains the HRA authors' regulariser, λ·Σ‖I − ÛᵀÛ‖_F
/// (scripts/hra_orth_reference.py on PEFT's model with the same reflections): the loss
/// within 1e-6 and every gradient within 1e-4 relative of theirs.
#[test]
fn the_orthogonality_regulariser_is_the_authors() {
    use peft::methods::{hra as method, regime, MethodFlags, MethodSpec};
    let g = reference();
    let want =
        candle_core::safetensors::load(fixture_dir("hra").join("orth.safetensors"), &Device::Cpu)
            .unwrap();
    let dir = fixture_dir("tiny-bert");
    let (cfg, mut weights) = read_checkpoint(&dir).unwrap();
    peft::model::drop_head(&mut weights);
    let trains = |n: &str| n.ends_with(".hra_u") || n.starts_with("classifier.");
    for (k, t) in g
        .iter()
        .filter(|(k, _)| !k.starts_with("grad.") && trains(k))
    {
        weights.insert(k.clone(), t.clone());
    }
    let store = ParamStore::new(weights, Device::Cpu, 0, Box::new(trains));
    let model = Model::load_with_adapters(&store, &cfg, Some(2.into()), Some(&hra(4))).unwrap();
    let flags = MethodFlags {
        hra: method::Flags {
            hra_r: Some(4),
            hra_orth_weight: Some(0.1),
            ..Default::default()
        },
        ..Default::default()
    };
    let spec = MethodSpec::new(method::METHOD, flags, 0).unwrap();
    let regime = regime::of(&spec, 10).unwrap().expect("a regulariser");
    let vars = store.vars();
    let logits = model.logits(&golden_batch(&dir), &Ctx::eval()).unwrap();
    let labels = want["labels"].to_dtype(candle_core::DType::U32).unwrap();
    let ce = peft::loss::cross_entropy(&logits, &labels).unwrap();
    let loss = (ce + regime.penalty(&vars).unwrap().unwrap()).unwrap();
    let d = max_abs_diff(&loss.reshape(1).unwrap(), &want["loss"]);
    assert!(d < 1e-6, "loss differs by {d}");
    let grads = loss.backward().unwrap();
    for (name, var) in &vars {
        let w = &want[&format!("grad.{name}")];
        let got = grads.get(var.as_tensor()).unwrap();
        let rel = max_abs_diff(got, w) / max_abs(w).max(1e-6);
        assert!(rel < 1e-4, "gradient of {name} differs by {rel}");
    }
    // Without the flag there is no regulariser, as in PEFT.
    let plain = MethodSpec::new(method::METHOD, MethodFlags::default(), 0).unwrap();
    assert!(regime::of(&plain, 10).unwrap().is_none());
}
