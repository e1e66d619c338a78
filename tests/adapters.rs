//! LoRA and InA adapters: an untrained adapter is a no-op that still receives gradient,
//! a run trains and saves only adapters and head, `peft eval` reproduces it, `peft merge`
//! folds LoRA into plain weights, and `peft eval --alpha` interpolates.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use common::*;
use peft::model::{
    read_checkpoint, AdapterConfig, AdapterKind, Batch, Ctx, InaActivation, Model, ModelConfig,
    ParamStore,
};
use peft::tokenize::{collate, TextEncoder};

fn lora(r: usize, targets: &[&str]) -> AdapterConfig {
    AdapterConfig {
        kind: AdapterKind::Lora,
        r,
        alpha: 16.0,
        dropout: 0.1,
        targets: targets.iter().map(|s| s.to_string()).collect(),
    }
}

fn ina(activation: InaActivation) -> AdapterConfig {
    AdapterConfig {
        kind: AdapterKind::Ina {
            inhibition: 0.1,
            activation,
        },
        ..lora(4, &["query", "key", "value"])
    }
}

fn batch(dir: &Path, cfg: &ModelConfig) -> Batch {
    let enc = TextEncoder::load(dir, cfg, 32).unwrap();
    let ex: Vec<_> = (0..5)
        .map(|i| {
            enc.encode(&sentence(i, 3 + i), Some(&sentence(i + 9, 2 + i % 3)))
                .unwrap()
        })
        .collect();
    let refs: Vec<_> = ex.iter().collect();
    collate(&refs, enc.pad_id(), &Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn abs_sum(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn trainable(weights: HashMap<String, Tensor>) -> ParamStore {
    ParamStore::new(weights, Device::Cpu, 7, Box::new(|_| true))
}

#[test]
fn an_untrained_adapter_changes_nothing_and_gets_gradient() {
    let configs = [
        lora(4, &["query", "value", "intermediate.dense", "output.dense"]),
        ina(InaActivation::LeakyRelu),
        ina(InaActivation::Gelu),
    ];
    for kind in ["tiny-bert", "tiny-roberta"] {
        let dir = fixture(kind);
        let (cfg, weights) = read_checkpoint(Path::new(&dir)).unwrap();
        let b = batch(Path::new(&dir), &cfg);
        let plain = Model::load(&trainable(weights.clone()), &cfg, Some(3)).unwrap();
        let want = plain.logits(&b, &Ctx::eval()).unwrap();
        for ad in &configs {
            let store = trainable(weights.clone());
            let model = Model::load_with_adapters(&store, &cfg, Some(3), Some(ad)).unwrap();
            let got = model.logits(&b, &Ctx::eval()).unwrap();
            let d = max_diff(&got, &want);
            assert!(d <= 1e-6, "{kind} {:?}: logits moved by {d}", ad.kind);

            let grads = got.sum_all().unwrap().backward().unwrap();
            let vars = store.vars();
            let grad = |name: &str| {
                let v = vars
                    .get(name)
                    .unwrap_or_else(|| panic!("no variable {name}"));
                grads.get(v.as_tensor()).map(abs_sum).unwrap_or(0.0)
            };
            let q = "encoder.layer.1.attention.self.query";
            assert!(
                grad(&format!("{q}.lora_B.weight")) > 0.0,
                "{kind} {:?}: B",
                ad.kind
            );
            // B starts at zero, so nothing flows back through it to A yet.
            assert_eq!(
                grad(&format!("{q}.lora_A.weight")),
                0.0,
                "{kind} {:?}: A",
                ad.kind
            );
            if ad.kind == AdapterKind::Lora {
                let o = "encoder.layer.0.output.dense.lora_B.weight";
                assert!(grad(o) > 0.0, "{kind}: {o}");
                assert!(!vars.contains_key("encoder.layer.0.attention.self.key.lora_A.weight"));
            }
        }
    }
}

fn config(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap()
}

fn best_accuracy(out: &Path) -> f64 {
    metrics(out)
        .iter()
        .rfind(|r| r["best"].as_bool().unwrap())
        .unwrap()["dev"]["dev"]["accuracy"]
        .as_f64()
        .unwrap()
}

fn eval_json(args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["eval", "--json"];
    all.extend_from_slice(args);
    ok(peft(&all))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const STEPS: &[&str] = &["--task", "rte", "--max-steps", "4", "--warmup-ratio", "0"];

#[test]
fn adapter_runs_train_save_and_reproduce() {
    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 32, 16);
    let model = fixture("tiny-bert");
    let head = 2 * 32 + 2;
    let rows: &[(&[&str], usize)] = &[
        (
            &[
                "--method",
                "lora",
                "--lora-r",
                "4",
                "--lora-targets",
                "query,value",
            ],
            2 * 2 * 4 * (32 + 32) + head,
        ),
        (&["--method", "ina", "--ina-r", "4"], 2 * 3 * 4 * 64 + head),
    ];
    for (i, (flags, count)) in rows.iter().enumerate() {
        let out = tmp.path().join(format!("run{i}"));
        let mut args = STEPS.to_vec();
        args.extend_from_slice(flags);
        train(&model, tmp.path(), &out, &args);
        let info = config(&out);
        assert_eq!(
            info["trainable_params"].as_u64().unwrap() as usize,
            *count,
            "{flags:?}"
        );
        let saved = tensors(&out.join("last.safetensors"));
        for name in saved.keys() {
            assert!(
                name.ends_with(".lora_A.weight")
                    || name.ends_with(".lora_B.weight")
                    || name.starts_with("classifier."),
                "{flags:?}: saved {name}"
            );
        }
        let n: usize = saved.values().map(|t| t.elem_count()).sum();
        assert_eq!(n, *count, "{flags:?}: saved elements");
        let v = eval_json(&["--checkpoint", out.to_str().unwrap()]);
        assert_eq!(
            v[0]["metrics"]["accuracy"].as_f64().unwrap(),
            best_accuracy(&out),
            "{flags:?}: eval differs"
        );
    }
}

fn fails_naming(args: &[&str], needle: &str) {
    let out = peft(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: {err}");
}

#[test]
fn adapter_flags_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 8, 4);
    let model = fixture("tiny-bert");
    let data = tmp.path().to_str().unwrap();
    let out = tmp.path().join("run");
    let base = [
        "train",
        "--model",
        &model,
        "--data-dir",
        data,
        "--task",
        "rte",
        "--output-dir",
        out.to_str().unwrap(),
    ];
    let with = |extra: &[&'static str]| {
        let mut v = base.to_vec();
        v.extend_from_slice(extra);
        v
    };
    fails_naming(&with(&["--method", "full", "--lora-r", "4"]), "--lora-r");
    fails_naming(&with(&["--method", "lora", "--lora-targets", "foo"]), "foo");
    fails_naming(
        &with(&["--method", "ina", "--ina-targets", "query,bar"]),
        "bar",
    );
    assert!(!out.join("config.json").exists());
}
