//! Bottleneck adapters against AdapterHub's `adapters` library itself
//! (scripts/bottleneck_reference.py, tests/fixtures/bottleneck: adapters 1.3.0 on the tiny
//! BERT): logits, encoder output, loss and every trainable tensor's gradient, for the
//! Pfeiffer (`SeqBnConfig`) and Houlsby (`DoubleSeqBnConfig`) placements; and
//! `--method adapter` through the binary on every family, GLUE and SQuAD.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use peft::model::adapter::{BnActivation, Placement};
use peft::model::{read_checkpoint, AdapterConfig, AdapterKind, Ctx, Model, ParamStore};

use crate::common::*;

fn reference(config: &str) -> HashMap<String, Tensor> {
    let path = fixture_dir("bottleneck").join(format!("{config}.safetensors"));
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

/// The library's name of one of our tensors (`bert.` prefix, its adapter named "a").
fn theirs(ours: &str) -> String {
    let name = ours.replace(".adapters.default.", ".adapters.a.");
    match name.starts_with("classifier.") {
        true => name,
        false => format!("bert.{name}"),
    }
}

#[test]
fn bottleneck_adapters_match_adapterhub() {
    for (config, placement, activation, adapted) in [
        ("seq_bn", Placement::Pfeiffer, BnActivation::Relu, 2),
        ("double_seq_bn", Placement::Houlsby, BnActivation::Swish, 4),
    ] {
        let g = reference(config);
        let dir = fixture_dir("tiny-bert");
        let (cfg, mut weights) = read_checkpoint(&dir).unwrap();
        peft::model::drop_head(&mut weights);
        for (k, t) in &g {
            if let Some(rest) = k.strip_prefix("bert.") {
                weights.insert(
                    rest.replace(".adapters.a.", ".adapters.default."),
                    t.clone(),
                );
            } else if k.starts_with("classifier.") {
                weights.insert(k.clone(), t.clone());
            }
        }
        let trains = |n: &str| n.contains(".adapters.") || n.starts_with("classifier.");
        let store = ParamStore::new(weights, Device::Cpu, 0, Box::new(trains));
        let bn = AdapterConfig {
            kind: AdapterKind::Bottleneck {
                reduction: 4,
                placement,
                activation,
            },
            r: 0,
            alpha: 0.0,
            dropout: 0.0,
            targets: Vec::new(),
            rslora: false,
            init: None,
        };
        let model = Model::load_with_adapters(&store, &cfg, Some(2.into()), Some(&bn)).unwrap();
        assert!(
            store.created().is_empty(),
            "{config}: {:?}",
            store.created()
        );
        let out = model.forward(&golden_batch(&dir), &Ctx::eval()).unwrap();
        let d = max_abs_diff(&out.last_hidden_state, &g["last_hidden_state"]);
        assert!(d < 1e-5, "{config}: encoder output differs by {d}");
        let logits = out.logits.unwrap();
        let d = max_abs_diff(&logits, &g["logits"]);
        assert!(d < 1e-5, "{config}: logits differ by {d}");
        let labels = g["labels"].to_dtype(DType::U32).unwrap();
        let loss = peft::loss::cross_entropy(&logits, &labels).unwrap();
        let d = max_abs_diff(&loss.reshape(1).unwrap(), &g["loss"]);
        assert!(d < 1e-6, "{config}: loss differs by {d}");
        let grads = loss.backward().unwrap();
        let vars = store.vars();
        for (name, var) in &vars {
            let want = &g[&format!("grad.{}", theirs(name))];
            let got = grads.get(var.as_tensor()).unwrap();
            let rel = max_abs_diff(got, want) / max_abs(want).max(1e-6);
            assert!(rel < 1e-4, "{config}: gradient of {name} differs by {rel}");
        }
        // Four tensors per adapted sublayer, and the head.
        assert_eq!(vars.len(), 4 * adapted + 2, "{config}");
        assert_eq!(
            vars.len(),
            g.keys().filter(|k| k.starts_with("grad.")).count()
        );
    }
}

/// Through the binary on every family that takes adapters, for classification and
/// question answering: only the adapters and the head are saved, `peft eval` re-scores the
/// run, the placement decides which sublayers hold adapters, WiSE-FT at 0 is the base
/// encoder's output, and `merge` is refused naming why.
#[test]
fn adapter_method_trains_on_every_family() {
    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 24, 8);
    write_squad(tmp.path(), "v2.0", 12, 6);
    for family in [
        "tiny-bert",
        "tiny-roberta",
        "tiny-electra",
        "tiny-deberta-v2",
        "tiny-deberta",
    ] {
        for (task, placement) in [("rte", "houlsby"), ("squad_v2", "pfeiffer")] {
            let out = tmp.path().join(format!("{family}-{task}"));
            let args = [
                "--task",
                task,
                "--method",
                "adapter",
                "--adapter-placement",
                placement,
                "--adapter-reduction",
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
            let adapters: Vec<&String> = saved
                .keys()
                .filter(|k| k.contains(".adapters.default."))
                .collect();
            let attention = adapters
                .iter()
                .filter(|k| k.contains(".attention.output."))
                .count();
            match placement {
                "houlsby" => assert!(attention > 0, "{family}: {adapters:?}"),
                _ => assert_eq!(attention, 0, "{family}: {adapters:?}"),
            }
            for k in saved.keys() {
                assert!(
                    k.contains(".adapters.default.")
                        || ["classifier.", "qa_outputs.", "pooler."]
                            .iter()
                            .any(|p| k.starts_with(p)),
                    "{family} {task}: {k} trained"
                );
            }
            let metric = if task == "rte" { "accuracy" } else { "f1" };
            assert_rescores(&out, metric);
        }
    }
    // WiSE-FT at 0: the up projections at zero, so the encoder is the base's.
    let run = tmp.path().join("tiny-bert-rte");
    let rw =
        peft::run::weights::RunWeights::load(&run, peft::run::weights::Which::Last, None, None)
            .unwrap();
    let zero = rw.weights(0.0).unwrap();
    let ups: Vec<_> = zero
        .iter()
        .filter(|(k, _)| k.contains(".adapter_up."))
        .collect();
    assert!(!ups.is_empty());
    for (k, t) in ups {
        assert_eq!(max_abs(t), 0.0, "{k}");
    }
    let o = peft(&[
        "merge",
        "--checkpoint",
        run.to_str().unwrap(),
        "--output",
        tmp.path().join("m").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("bottleneck"), "{}", stderr(&o));
}

/// AdapterHub's own files: the library's `save_adapter` output (tests/fixtures/bottleneck/
/// <config>/) read as ours gives the library's logits; a run's export
/// (`RUN/adapterhub/`) read back with `eval --adapter` scores as the run.
#[test]
fn adapterhub_files_read_and_write() {
    use peft::model::Arch;
    for config in ["seq_bn", "double_seq_bn"] {
        let g = reference(config);
        let dir = fixture_dir("tiny-bert");
        let (cfg, mut weights) = read_checkpoint(&dir).unwrap();
        peft::model::drop_head(&mut weights);
        let saved =
            peft::run::peft_format::read(&fixture_dir("bottleneck").join(config), Arch::Bert)
                .unwrap();
        let a = saved.config.unwrap();
        weights.extend(saved.tensors);
        let store = ParamStore::frozen(weights, Device::Cpu);
        let model = Model::load_with_adapters(&store, &cfg, Some(2.into()), Some(&a)).unwrap();
        let logits = model.logits(&golden_batch(&dir), &Ctx::eval()).unwrap();
        let d = max_abs_diff(&logits, &g["logits"]);
        assert!(d < 1e-5, "{config}: logits differ by {d}");
    }
    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 24, 16);
    for placement in ["pfeiffer", "houlsby"] {
        let out = tmp.path().join(placement);
        let args = [
            "--task",
            "rte",
            "--method",
            "adapter",
            "--adapter-placement",
            placement,
            "--adapter-reduction",
            "4",
            "--max-steps",
            "3",
            "--lr",
            "1e-2",
            "--warmup-ratio",
            "0",
        ];
        train(&fixture("tiny-bert"), tmp.path(), &out, &args);
        assert!(
            !out.join("adapter_config.json").exists(),
            "no PEFT file for a bottleneck run"
        );
        exported_scores_as_run(
            &out,
            &out.join("adapterhub"),
            tmp.path(),
            &fixture("tiny-bert"),
        );
    }
}
