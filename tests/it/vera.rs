//! VeRA against Hugging Face PEFT itself (scripts/vera_reference.py, tests/fixtures/vera:
//! PEFT 0.21.2's VeraConfig, r 4 on query and value of the tiny BERT, projection key 0,
//! every λ set away from its start): the shared projections drawn from the key bit for
//! bit, logits, loss and every gradient, PEFT's merge, a PEFT-saved adapter read back
//! (and one whose projections are not the key's refused), and `--method vera` through the
//! binary with its export and merge.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use peft::model::{read_checkpoint, AdapterConfig, AdapterKind, Arch, Ctx, Model, ParamStore};

use crate::adapters::{dir_logits, merge, run_logits};
use crate::common::*;

fn vera(r: usize) -> AdapterConfig {
    AdapterConfig {
        kind: AdapterKind::Vera {
            key: 0,
            d_initial: 0.1,
            max: (0, 0),
        },
        r,
        alpha: 0.0,
        dropout: 0.0,
        targets: vec!["query".into(), "value".into()],
        rslora: false,
        init: None,
    }
}

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture_dir("vera").join("vera.safetensors"), &Device::Cpu)
        .unwrap()
}

#[test]
fn projections_are_drawn_from_the_key_as_torch_draws_them() {
    let g = reference();
    let (a, b) = peft::model::vera::projections(7, 3, (10, 5), &Device::Cpu).unwrap();
    assert_eq!(bits(&a), bits(&g["rng.a"]));
    assert_eq!(bits(&b), bits(&g["rng.b"]));
    let (a, b) = peft::model::vera::projections(0, 4, (32, 32), &Device::Cpu).unwrap();
    assert_eq!(bits(&a), bits(&g["vera_A"]));
    assert_eq!(bits(&b), bits(&g["vera_B"]));
    let (other, _) = peft::model::vera::projections(1, 4, (32, 32), &Device::Cpu).unwrap();
    assert_ne!(bits(&other), bits(&g["vera_A"]));
}

#[test]
fn vera_matches_peft() {
    let g = reference();
    let trains = |n: &str| n.contains(".vera_lambda_") || n.starts_with("classifier.");
    let base = matches_reference("tiny-bert", &g, &vera(4), trains);

    let mut folded = base;
    vera(4).kind.def().fold(&vera(4), &mut folded).unwrap();
    let name = "encoder.layer.0.attention.self.query.weight";
    let d = max_abs_diff(&folded[name], &g[&format!("merged.{name}")]);
    assert!(d < 1e-5, "merged weight differs by {d}");
}

/// An adapter PEFT saved (save_projection true): read as ours, PEFT's probabilities; the
/// same file with other projections is refused by name.
#[test]
fn a_peft_saved_vera_adapter_reads_back() {
    let dir = fixture_dir("tiny-bert");
    let (cfg, mut weights) = read_checkpoint(&dir).unwrap();
    peft::model::drop_head(&mut weights);
    let fx = fixture_dir("vera").join("adapter");
    let saved = peft::run::peft_format::read(&fx, Arch::Bert).unwrap();
    let a = saved.config.unwrap();
    assert_eq!(a.r, 4);
    weights.extend(saved.tensors);
    let store = ParamStore::frozen(weights, Device::Cpu);
    let model = Model::load_with_adapters(&store, &cfg, Some(2.into()), Some(&a)).unwrap();
    let logits = model.logits(&golden_batch(&dir), &Ctx::eval()).unwrap();
    let probs = candle_nn::ops::softmax(&logits, 1).unwrap();
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fx.join("expected.json")).unwrap()).unwrap();
    let want: Vec<Vec<f32>> = serde_json::from_value(expected["probabilities"].clone()).unwrap();
    let d = max_abs_diff(&probs, &Tensor::new(want, &Device::Cpu).unwrap());
    assert!(d < 1e-5, "probabilities differ by {d}");

    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        fx.join("adapter_config.json"),
        tmp.path().join("adapter_config.json"),
    )
    .unwrap();
    let mut t = tensors(&fx.join("adapter_model.safetensors"));
    let doubled = (&t["base_model.vera_A"] * 2.0).unwrap();
    t.insert("base_model.vera_A".into(), doubled);
    candle_core::safetensors::save(&t, tmp.path().join("adapter_model.safetensors")).unwrap();
    let err = peft::run::peft_format::read(tmp.path(), Arch::Bert)
        .err()
        .unwrap();
    assert!(err.to_string().contains("projection_prng_key"), "{err}");
}

/// Through the binary on BERT and RoBERTa, GLUE and SQuAD: only the λ vectors and the
/// head train, the run exports PEFT's VERA format, merge gives the run's logits, WiSE-FT
/// at 0 zeroes λ_b.
#[test]
fn vera_trains_exports_and_merges() {
    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 24, 8);
    write_squad(tmp.path(), "v2.0", 12, 6);
    for family in ["tiny-bert", "tiny-roberta"] {
        for task in ["rte", "squad_v2"] {
            let out = tmp.path().join(format!("{family}-{task}"));
            let args = [
                "--task",
                task,
                "--method",
                "vera",
                "--vera-r",
                "64",
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
                let head = ["classifier.", "qa_outputs.", "pooler."]
                    .iter()
                    .any(|p| k.starts_with(p));
                assert!(
                    k.contains(".vera_lambda_") || head,
                    "{family} {task}: {k} trained"
                );
            }
            assert!(saved.keys().any(|k| k.ends_with(".vera_lambda_b")));
        }
        let run = tmp.path().join(format!("{family}-rte"));
        let exported: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(run.join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(exported["peft_type"], "VERA");
        assert_eq!(exported["projection_prng_key"], 0);
        let merged = tmp.path().join(format!("{family}-merged"));
        ok(merge(&run, &merged, &[]));
        let d = max_abs_diff(
            &dir_logits(&merged),
            &run_logits(&fixture(family), &run, Some(&vera(64))),
        );
        assert!(d <= 1e-5, "{family}: merged logits differ by {d}");
        let rw =
            peft::run::weights::RunWeights::load(&run, peft::run::weights::Which::Last, None, None)
                .unwrap();
        for (k, t) in rw
            .weights(0.0)
            .unwrap()
            .iter()
            .filter(|(k, _)| k.ends_with(".vera_lambda_b"))
        {
            assert_eq!(max_abs(t), 0.0, "{k}");
        }
    }
}
