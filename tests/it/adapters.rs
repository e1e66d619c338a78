//! LoRA and InA adapters: an untrained adapter is a no-op that still receives gradient,
//! a run trains and saves only adapters and head, `peft eval` reproduces it, `peft merge`
//! folds LoRA into plain weights, and `peft eval --alpha` interpolates.

use std::collections::HashMap;
use std::path::Path;

use crate::common::*;
use candle_core::{DType, Device, Tensor};
use peft::model::{
    fit_head, read_checkpoint, AdapterConfig, AdapterKind, Batch, Ctx, InaActivation, Model,
    ModelConfig, ParamStore,
};
use peft::run::weights::RunWeights;
use peft::run::weights::Which;
use peft::tokenize::{collate, TextEncoder};

pub(crate) fn lora(r: usize, targets: &[&str]) -> AdapterConfig {
    AdapterConfig {
        kind: AdapterKind::Lora,
        r,
        alpha: 16.0,
        dropout: 0.1,
        targets: targets.iter().map(|s| s.to_string()).collect(),
        rslora: false,
        init: None,
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

use crate::common::max_abs_diff as max_diff;

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
            let model = Model::load_with_adapters(&store, &cfg, Some(3.into()), Some(ad)).unwrap();
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

/// Logits of a run rebuilt as `peft eval` does: base, then the saved tensors, adapters on.
pub(crate) fn run_logits(model_dir: &str, run: &Path, adapter: Option<&AdapterConfig>) -> Tensor {
    let (cfg, mut w) = read_checkpoint(Path::new(model_dir)).unwrap();
    fit_head(&mut w, 2.into());
    w.extend(tensors(&run.join("last.safetensors")));
    let model = Model::load_with_adapters(
        &ParamStore::frozen(w, Device::Cpu),
        &cfg,
        Some(2.into()),
        adapter,
    )
    .unwrap();
    model
        .logits(&batch(Path::new(model_dir), &cfg), &Ctx::eval())
        .unwrap()
}

pub(crate) fn dir_logits(dir: &Path) -> Tensor {
    let (cfg, w) = read_checkpoint(dir).unwrap();
    let model = Model::load(&ParamStore::frozen(w, Device::Cpu), &cfg, Some(2)).unwrap();
    model.logits(&batch(dir, &cfg), &Ctx::eval()).unwrap()
}

pub(crate) fn merge(run: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "merge",
        "--checkpoint",
        run.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--which",
        "last",
    ];
    args.extend_from_slice(extra);
    peft(&args)
}

#[test]
fn merge_folds_lora_into_a_plain_model_directory() {
    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 32, 8);
    for (kind, prefix) in [("tiny-bert", "bert"), ("tiny-roberta", "roberta")] {
        let model = fixture(kind);
        let run = tmp.path().join(format!("{kind}-lora"));
        let targets = ["query", "value", "intermediate.dense"];
        let mut args = STEPS.to_vec();
        args.extend_from_slice(&["--method", "lora", "--lora-r", "4", "--lora-targets"]);
        args.push("query,value,intermediate.dense");
        args.extend_from_slice(&["--lr", "1e-2"]);
        train(&model, tmp.path(), &run, &args);
        let saved = tensors(&run.join("last.safetensors"));
        let b = &saved["encoder.layer.0.attention.self.query.lora_B.weight"];
        assert!(abs_sum(b) > 0.0, "{kind}: B did not move");

        // Interpolating a LoRA run scales its delta: B, not A.
        let rw = RunWeights::load(&run, Which::Last, None, None).unwrap();
        let half = rw.weights(0.5).unwrap();
        let name = "encoder.layer.0.attention.self.query.lora_B.weight";
        assert_eq!(bits(&half[name]), bits(&(b * 0.5).unwrap()));
        let name = "encoder.layer.0.attention.self.query.lora_A.weight";
        assert_eq!(bits(&half[name]), bits(&saved[name]));

        let merged = tmp.path().join(format!("{kind}-merged"));
        ok(merge(&run, &merged, &[]));
        let want = run_logits(&model, &run, Some(&lora(4, &targets)));
        let d = max_diff(&dir_logits(&merged), &want);
        assert!(d <= 1e-5, "{kind}: merged logits differ by {d}");

        let raw = tensors(&merged.join("model.safetensors"));
        assert!(raw.contains_key(&format!(
            "{prefix}.encoder.layer.0.attention.self.query.weight"
        )));
        assert!(raw.keys().any(|k| k.starts_with("classifier.")));
        assert!(
            raw.keys().all(|k| !k.contains("lora_")),
            "{kind}: adapter left over"
        );
        assert!(raw
            .keys()
            .all(|k| k.starts_with(&format!("{prefix}.")) || k.starts_with("classifier.")));
        let cfg = config(&merged);
        let arch = if prefix == "bert" { "Bert" } else { "Roberta" };
        assert_eq!(
            cfg["architectures"][0],
            format!("{arch}ForSequenceClassification")
        );
        assert_eq!(cfg["id2label"]["0"], "entailment");
        assert_eq!(cfg["label2id"]["not_entailment"], 1);
        assert!(merged.join("tokenizer.json").is_file());

        // alpha 0: the base encoder, bit for bit, under the trained head.
        let zero = tmp.path().join(format!("{kind}-zero"));
        ok(merge(&run, &zero, &["--alpha", "0"]));
        let (_, got) = read_checkpoint(&zero).unwrap();
        let (_, base) = read_checkpoint(Path::new(&model)).unwrap();
        for (name, t) in &got {
            let want = if name.starts_with("classifier.") {
                &saved[name]
            } else {
                &base[name]
            };
            assert_eq!(bits(t), bits(want), "{kind}: {name}");
        }

        let again = merge(&run, &merged, &[]);
        assert_eq!(again.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&again.stderr).contains("--overwrite"));
        ok(merge(&run, &merged, &["--overwrite"]));
    }

    let ina_run = tmp.path().join("ina");
    let mut args = STEPS.to_vec();
    args.extend_from_slice(&["--method", "ina"]);
    train(&fixture("tiny-bert"), tmp.path(), &ina_run, &args);
    let out = merge(&ina_run, &tmp.path().join("ina-merged"), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("InA") && err.contains("cannot be merged"),
        "{err}"
    );
}

#[test]
fn eval_alpha_interpolates_between_base_and_run() {
    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 32, 16);
    let model = fixture("tiny-bert");
    let run = tmp.path().join("full");
    let mut args = STEPS.to_vec();
    args.extend_from_slice(&["--method", "full", "--lr", "1e-3"]);
    train(&model, tmp.path(), &run, &args);
    let dir = run.to_str().unwrap();
    let rows = eval_json(&["--checkpoint", dir, "--alpha", "0,0.25,0.5,0.75,1"]);
    let alphas: Vec<f64> = rows.iter().map(|r| r["alpha"].as_f64().unwrap()).collect();
    assert_eq!(alphas, vec![0.0, 0.25, 0.5, 0.75, 1.0]);
    let plain = eval_json(&["--checkpoint", dir]);
    assert_eq!(
        rows[4]["metrics"], plain[0]["metrics"],
        "alpha 1 is the run"
    );

    // alpha 0 is the base encoder under the trained head: a run that saved only its head.
    let head_only = tmp.path().join("head-only");
    std::fs::create_dir(&head_only).unwrap();
    let head: HashMap<String, Tensor> = tensors(&run.join("trainable.safetensors"))
        .into_iter()
        .filter(|(n, _)| n.starts_with("classifier."))
        .collect();
    // Its config.json says so: a run's tensors are exactly those it lists as trained.
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    cfg["trainable_tensors"] = serde_json::json!(head.keys().collect::<Vec<_>>());
    std::fs::write(head_only.join("config.json"), cfg.to_string()).unwrap();
    candle_core::safetensors::save(&head, head_only.join("trainable.safetensors")).unwrap();
    let base = eval_json(&["--checkpoint", head_only.to_str().unwrap()]);
    assert_eq!(
        rows[0]["metrics"], base[0]["metrics"],
        "alpha 0 is the base"
    );

    // Tiny dev sets hide small moves in accuracy; check the interpolated tensors too.
    let rw = RunWeights::load(&run, Which::Best, None, None).unwrap();
    let (zero, half, one) = (
        rw.weights(0.0).unwrap(),
        rw.weights(0.5).unwrap(),
        rw.weights(1.0).unwrap(),
    );
    let mut moved = 0;
    for (name, t) in &rw.trained {
        assert_eq!(bits(&one[name]), bits(t), "alpha 1: {name}");
        if name.starts_with("classifier.") {
            assert_eq!(bits(&zero[name]), bits(t), "alpha 0 keeps the head: {name}");
            continue;
        }
        let b = &rw.base[name];
        assert_eq!(bits(&zero[name]), bits(b), "alpha 0: {name}");
        let mid = ((b + t).unwrap() * 0.5).unwrap();
        assert!(max_diff(&half[name], &mid) <= 1e-6, "alpha 0.5: {name}");
        moved += (abs_sum(&(t - b).unwrap()) > 0.0) as usize;
    }
    assert!(moved > 10, "only {moved} tensors moved");

    let text = ok(peft(&["eval", "--checkpoint", dir, "--alpha", "0.5"]));
    assert!(text.starts_with("alpha 0.5 dev: accuracy"), "{text}");
    let bad = peft(&["eval", "--checkpoint", dir, "--alpha", "nan"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--alpha"));
}

#[test]
fn lora_runs_export_in_peft_format() {
    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 16, 8);
    let model = fixture("tiny-bert");
    let run = tmp.path().join("lora");
    let mut args = STEPS.to_vec();
    args.extend_from_slice(&["--method", "lora", "--lora-r", "4"]);
    args.extend_from_slice(&["--lora-targets", "query,value"]);
    train(&model, tmp.path(), &run, &args);

    // What PEFT 0.21.2's save_pretrained wrote for the same adapter (scripts/peft_roundtrip.py).
    let reference = Path::new(&fixture("peft-lora-bert")).to_path_buf();
    let shapes = |p: &Path| {
        let mut v: Vec<(String, Vec<usize>)> = tensors(p)
            .into_iter()
            .map(|(k, t)| (k, t.dims().to_vec()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        shapes(&run.join("adapter_model.safetensors")),
        shapes(&reference.join("adapter_model.safetensors"))
    );
    let ours: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("adapter_config.json")).unwrap())
            .unwrap();
    let theirs: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(reference.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    for key in ["peft_type", "task_type", "r", "lora_dropout", "bias"] {
        assert_eq!(ours[key], theirs[key], "{key}");
    }
    // PEFT keeps target_modules as a set: its order is arbitrary.
    let sorted = |v: &serde_json::Value| {
        let mut t: Vec<String> = serde_json::from_value(v.clone()).unwrap();
        t.sort();
        t
    };
    assert_eq!(
        sorted(&ours["target_modules"]),
        sorted(&theirs["target_modules"])
    );
    assert_eq!(ours["lora_alpha"].as_f64(), theirs["lora_alpha"].as_f64());
    assert!(theirs["modules_to_save"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!("classifier")));
    assert_eq!(ours["modules_to_save"], serde_json::json!(["classifier"]));

    // The exported weights are the best state, renamed.
    let best = tensors(&run.join("trainable.safetensors"));
    let exported = tensors(&run.join("adapter_model.safetensors"));
    for (name, t) in &best {
        let key = if name.starts_with("classifier.") {
            format!("base_model.model.{name}")
        } else {
            format!("base_model.model.bert.{name}")
        };
        assert_eq!(bits(&exported[&key]), bits(t), "{key}");
    }

    // A run of another method over the same directory leaves no stale export behind.
    let mut args = STEPS.to_vec();
    args.extend_from_slice(&["--method", "bitfit", "--overwrite"]);
    train(&model, tmp.path(), &run, &args);
    assert!(!run.join("adapter_config.json").exists());
    assert!(!run.join("adapter_model.safetensors").exists());
}

/// `peft eval --model M --task T` scores a sequence-classification checkpoint it did not
/// train: `peft merge`'s output scores as the run does, a checkpoint whose outputs are in
/// another label order (named by id2label) scores the same once matched by name, and
/// labels that match nothing are refused.
#[test]
fn eval_scores_classifiers_trained_elsewhere() {
    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 32, 16);
    let model = fixture("tiny-bert");
    let run = tmp.path().join("run");
    let mut args = STEPS.to_vec();
    args.extend_from_slice(&["--method", "full"]);
    train(&model, tmp.path(), &run, &args);
    let data = tmp.path().to_str().unwrap();
    let (run_s, merged) = (run.to_str().unwrap(), tmp.path().join("merged"));
    ok(peft(&[
        "merge",
        "--checkpoint",
        run_s,
        "--output",
        merged.to_str().unwrap(),
    ]));
    let preds = |name: &str| tmp.path().join(name).to_string_lossy().into_owned();
    let by_run = ok(peft(&[
        "eval",
        "--checkpoint",
        run_s,
        "--json",
        "--predictions",
        &preds("run.jsonl"),
    ]));
    let score = |dir: &Path, out: &str| {
        ok(peft(&[
            "eval",
            "--model",
            dir.to_str().unwrap(),
            "--task",
            "rte",
            "--data-dir",
            data,
            "--max-seq-len",
            "32",
            "--json",
            "--predictions",
            &preds(out),
        ]))
    };
    assert_eq!(score(&merged, "merged.jsonl"), by_run);
    let read = |name: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(tmp.path().join(name))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    // Batches of another size may round differently in the last bits.
    let same = |a: &str, b: &str| {
        let (a, b) = (read(a), read(b));
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!((&x["id"], &x["prediction"]), (&y["id"], &y["prediction"]));
            let (lx, ly): (Vec<f64>, Vec<f64>) = (
                serde_json::from_value(x["logits"].clone()).unwrap(),
                serde_json::from_value(y["logits"].clone()).unwrap(),
            );
            assert!(
                lx.iter().zip(&ly).all(|(p, q)| (p - q).abs() < 1e-5),
                "{x} vs {y}"
            );
        }
    };
    same("merged.jsonl", "run.jsonl");
    assert_eq!(read("run.jsonl").len(), 16);

    // The same classifier with its two outputs swapped and named so.
    let swapped = tmp.path().join("swapped");
    std::fs::create_dir_all(&swapped).unwrap();
    for f in std::fs::read_dir(&merged).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), swapped.join(f.file_name())).unwrap();
    }
    let mut weights = tensors(&merged.join("model.safetensors"));
    let idx = Tensor::new(&[1u32, 0], &Device::Cpu).unwrap();
    for k in ["classifier.weight", "classifier.bias"] {
        let t = weights[k].index_select(&idx, 0).unwrap();
        weights.insert(k.to_string(), t);
    }
    candle_core::safetensors::save(&weights, swapped.join("model.safetensors")).unwrap();
    let set_labels = |names: [&str; 2]| {
        let path = swapped.join("config.json");
        let mut cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        cfg["id2label"] = serde_json::json!({"0": names[0], "1": names[1]});
        std::fs::write(&path, cfg.to_string()).unwrap();
    };
    set_labels(["NOT_ENTAILMENT", "entailment"]);
    assert_eq!(score(&swapped, "swapped.jsonl"), by_run);
    same("swapped.jsonl", "run.jsonl");

    set_labels(["yes", "no"]);
    let out = peft(&[
        "eval",
        "--model",
        swapped.to_str().unwrap(),
        "--task",
        "rte",
        "--data-dir",
        data,
        "--max-seq-len",
        "32",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("config.json") && err.contains("cannot match"),
        "{err}"
    );
    // WiSE-FT needs a base to interpolate towards.
    let out = peft(&[
        "eval",
        "--model",
        merged.to_str().unwrap(),
        "--task",
        "rte",
        "--data-dir",
        data,
        "--alpha",
        "0.5",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

/// A LoRA adapter trained and saved by Hugging Face PEFT in Python
/// (`scripts/peft_adapter_fixture.py`) scores here as it scored there: the same dev
/// accuracy and every example's probabilities within 1e-5. Also with rsLoRA's scaling
/// (`--rslora`: alpha/√r), which the plain LoRA scale would get wrong.
#[test]
fn eval_scores_a_peft_adapter_as_python_does() {
    scores_as_python("peft-rslora-trained");
    scores_as_python("peft-lora-trained");
}

/// PEFT's own LoRA, DoRA and IA3 on DeBERTa v1 with PEFT's default targets, its fused
/// `in_proj` (and IA3's `output.dense`), trained and saved by PEFT
/// (`scripts/peft_deberta_v1.py`): read by `eval --adapter`, every example's probabilities
/// within 1e-5 of PEFT's.
#[test]
fn peft_adapters_on_deberta_v1_in_proj_score_as_python() {
    for kind in ["lora", "dora", "ia3"] {
        let name = format!("peft-deberta-v1/{kind}");
        let fx = Path::new(&fixture(&name)).join("expected.json");
        let expected: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fx).unwrap()).unwrap();
        assert_eq!(
            expected["targets"][0], "in_proj",
            "{kind}: PEFT's default for DeBERTa v1"
        );
        scores_as_python_on(&name, "tiny-deberta");
    }
}

fn scores_as_python(name: &str) {
    let (tmp, glue) = scores_as_python_on(name, "tiny-bert");
    let fx = Path::new(&fixture(name)).to_path_buf();
    // A config that claims DoRA while the file holds no magnitudes is refused by name.
    let bad = tmp.path().join("dora");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::copy(
        fx.join("adapter_model.safetensors"),
        bad.join("adapter_model.safetensors"),
    )
    .unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fx.join("adapter_config.json")).unwrap())
            .unwrap();
    cfg["use_dora"] = true.into();
    std::fs::write(bad.join("adapter_config.json"), cfg.to_string()).unwrap();
    let out = peft(&[
        "eval",
        "--adapter",
        bad.to_str().unwrap(),
        "--model",
        &fixture("tiny-bert"),
        "--task",
        "rte",
        "--data-dir",
        glue.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("use_dora"), "{err}");
}

/// Score fixture `name`'s dev rows with `eval --adapter` over `model`, and check each
/// probability against the Python reference's within 1e-5; the temporary folder and the
/// GLUE folder it wrote.
pub(crate) fn scores_as_python_on(
    name: &str,
    model: &str,
) -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let fx = Path::new(&fixture(name)).to_path_buf();
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fx.join("expected.json")).unwrap()).unwrap();
    // The dev rows Python scored, as RTE's dev.tsv.
    let mut tsv = String::from("index\tsentence1\tsentence2\tlabel\n");
    for (i, row) in expected["dev"].as_array().unwrap().iter().enumerate() {
        let f: Vec<&str> = row
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        tsv.push_str(&format!("{i}\t{}\t{}\t{}\n", f[0], f[1], f[2]));
    }
    let glue = tmp.path().join("glue");
    std::fs::create_dir_all(glue.join("RTE")).unwrap();
    std::fs::write(glue.join("RTE/dev.tsv"), tsv).unwrap();
    let preds = tmp.path().join("p.jsonl");
    let out = ok(peft(&[
        "eval",
        "--adapter",
        fx.to_str().unwrap(),
        "--model",
        &fixture(model),
        "--task",
        "rte",
        "--data-dir",
        glue.to_str().unwrap(),
        "--max-seq-len",
        "64",
        "--json",
        "--predictions",
        preds.to_str().unwrap(),
    ]));
    let metrics: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let acc = metrics["metrics"]["accuracy"].as_f64().unwrap();
    let want = expected["accuracy"].as_f64().unwrap();
    assert!(
        (acc - want).abs() < 1e-9,
        "accuracy {acc} vs Python's {want}"
    );
    let probs = expected["probabilities"].as_array().unwrap();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&preds)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), probs.len());
    for (line, p) in lines.iter().zip(probs) {
        let logits: Vec<f64> = serde_json::from_value(line["logits"].clone()).unwrap();
        let m = logits.iter().cloned().fold(f64::MIN, f64::max);
        let z: f64 = logits.iter().map(|l| (l - m).exp()).sum();
        for (l, p) in logits.iter().zip(p.as_array().unwrap()) {
            let ours = (l - m).exp() / z;
            let theirs = p.as_f64().unwrap();
            assert!((ours - theirs).abs() < 1e-5, "{line}: {ours} vs {theirs}");
        }
    }
    (tmp, glue)
}

/// rsLoRA (`--lora-rslora`, alpha/√r) trains, exports PEFT's `use_rslora`, and the exported
/// adapter, read back with `eval --adapter`, scores as the run; `--lora-rslora` is LoRA's
/// flag only. (PEFT itself loads the export: `scripts/peft_roundtrip.py compare`, 6e-8.)
#[test]
fn rslora_trains_exports_and_reads_back() {
    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 48, 16);
    let out = tmp.path().join("run");
    let args = [
        "--task",
        "rte",
        "--method",
        "lora",
        "--lora-rslora",
        "--lora-r",
        "4",
        "--max-steps",
        "4",
        "--lr",
        "1e-2",
    ];
    train(&fixture("tiny-bert"), tmp.path(), &out, &args);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["use_rslora"], true);
    export_scores_as_run(&out, tmp.path(), &fixture("tiny-bert"));
    let o = peft(&[
        "train",
        "--model",
        &fixture("tiny-bert"),
        "--task",
        "rte",
        "--method",
        "bitfit",
        "--lora-rslora",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--lora-rslora does not apply to --method bitfit"));
}

/// The model of tiny-bert with `adapter` and the learned tensors of
/// `tests/fixtures/<fx>/reference.safetensors` (a PEFT model's, by our names): its logits,
/// loss and the gradient of every trainable tensor must be PEFT's (logits and loss within
/// 1e-5, gradients within 1e-4 relative). Returns the weights and the golden batch, with
/// the reference, for the caller's merge check.
fn matches_reference(
    fx: &str,
    adapter: &AdapterConfig,
    learned: fn(&str) -> bool,
    count: usize,
) -> (
    HashMap<String, Tensor>,
    Batch,
    HashMap<String, Tensor>,
    ModelConfig,
    Tensor,
) {
    let fx = Path::new(&fixture(fx)).join("reference.safetensors");
    let r = candle_core::safetensors::load(&fx, &Device::Cpu).unwrap();
    let dir = Path::new(&fixture("tiny-bert")).to_path_buf();
    let (cfg, mut weights) = peft::model::read_checkpoint(&dir).unwrap();
    weights.retain(|k, _| !k.starts_with("classifier"));
    let names: Vec<&String> = r
        .keys()
        .filter(|k| !k.starts_with("grad.") && (learned(k) || k.starts_with("classifier")))
        .collect();
    assert_eq!(names.len(), count, "{names:?}");
    for k in &names {
        weights.insert(k.to_string(), r[*k].clone());
    }
    let store = ParamStore::new(
        weights.clone(),
        Device::Cpu,
        0,
        Box::new(move |n| learned(n) || n.starts_with("classifier")),
    );
    let model = Model::load_with_adapters(&store, &cfg, Some(2.into()), Some(adapter)).unwrap();
    assert!(store.created().is_empty(), "{:?}", store.created());
    assert_eq!(store.vars().len(), count);
    let batch = golden_batch(&dir);
    let logits = model.logits(&batch, &Ctx::eval()).unwrap();
    let d = max_abs_diff(&logits, &r["logits"]);
    assert!(d < 1e-5, "logits differ by {d}");
    let labels = r["labels"].to_dtype(DType::U32).unwrap();
    let loss = peft::loss::cross_entropy(&logits, &labels).unwrap();
    let d = max_abs_diff(&loss.reshape(1).unwrap(), &r["loss"]);
    assert!(d < 1e-5, "loss differs by {d}");
    let grads = loss.backward().unwrap();
    for (name, var) in store.vars() {
        let want = &r[&format!("grad.{name}")];
        let got = grads.get(var.as_tensor()).unwrap();
        let rel = max_abs_diff(got, want) / max_abs(want).max(1e-6);
        assert!(rel < 1e-4, "gradient of {name} differs by {rel}");
    }
    (weights, batch, r, cfg, logits)
}

/// IA3 as PEFT's IA3Config builds it for BERT (scripts/ia3_reference.py): vectors on key
/// and value scale their output, on both dense output layers (PEFT matches
/// `output.dense` by suffix) their input. Logits, loss and gradients as PEFT's; and the run
/// folded into its weights (`merge`) gives the same logits.
#[test]
fn ia3_matches_peft() {
    let ia3 = peft::run::setup::default_adapter(peft::methods::ia3::METHOD).unwrap();
    let (mut merged, batch, _, cfg, logits) =
        matches_reference("ia3", &ia3, |k| k.ends_with("ia3_l"), 10);
    // Folded into the weights, as `peft merge` writes them: the same logits.
    peft::model::adapters::fold_ia3(&mut merged).unwrap();
    assert!(!merged.keys().any(|k| k.ends_with("ia3_l")));
    let plain = Model::load(&ParamStore::frozen(merged, Device::Cpu), &cfg, Some(2)).unwrap();
    let d = max_abs_diff(&plain.logits(&batch, &Ctx::eval()).unwrap(), &logits);
    assert!(d < 1e-5, "merged logits differ by {d}");
}

/// DoRA as PEFT's `use_dora` builds it (scripts/dora_reference.py: r 4, alpha 8 on query and
/// value, A, B and magnitudes perturbed so that each matters): logits, loss and gradients
/// as PEFT's, the norm detached as PEFT detaches it (a norm in the graph changes the
/// gradient of A by 6%). Folded (`merge`), the logits
/// equal PEFT's merge_and_unload.
#[test]
fn dora_matches_peft() {
    let dora = AdapterConfig {
        kind: AdapterKind::Dora,
        alpha: 8.0,
        dropout: 0.0,
        ..lora(4, &["query", "value"])
    };
    let (mut merged, batch, r, cfg, logits) =
        matches_reference("dora", &dora, |k| k.contains(".lora_"), 14);
    peft::model::adapters::fold_lora(&mut merged, dora.scale()).unwrap();
    assert!(!merged.keys().any(|k| k.contains(".lora_")));
    let plain = Model::load(&ParamStore::frozen(merged, Device::Cpu), &cfg, Some(2)).unwrap();
    let folded = plain.logits(&batch, &Ctx::eval()).unwrap();
    let d = max_abs_diff(&folded, &r["merged_logits"]);
    assert!(d < 1e-5, "merged logits differ from PEFT's merge by {d}");
    let d = max_abs_diff(&folded, &logits);
    assert!(d < 1e-5, "merged logits differ from the adapter's by {d}");
}

/// The adapter PEFT saved in `tests/fixtures/<fx>/adapter/`, read as `eval --adapter`
/// reads it: its `count` tensors are the reference's, bit for bit, under our names, and
/// over tiny-bert (every tensor from the files, none made up) they give PEFT's logits on
/// the golden batch within 1e-5. Returns its settings.
fn reads_back_as_saved(fx: &str, count: usize) -> AdapterConfig {
    let fx = Path::new(&fixture(fx)).to_path_buf();
    let r = candle_core::safetensors::load(fx.join("reference.safetensors"), &Device::Cpu).unwrap();
    let a = peft::run::peft_format::read(&fx.join("adapter"), peft::model::Arch::Bert).unwrap();
    let c = a.config.clone().unwrap();
    assert_eq!(a.tensors.len(), count);
    for (name, t) in &a.tensors {
        assert_eq!(max_abs_diff(t, &r[name]), 0.0, "{name}");
    }
    let dir = Path::new(&fixture("tiny-bert")).to_path_buf();
    let (cfg, mut weights) = read_checkpoint(&dir).unwrap();
    weights.retain(|k, _| !k.starts_with("classifier"));
    weights.extend(a.tensors);
    let store = ParamStore::frozen(weights, Device::Cpu);
    let model = Model::load_with_adapters(&store, &cfg, Some(2.into()), Some(&c)).unwrap();
    assert!(store.created().is_empty(), "{:?}", store.created());
    let d = max_abs_diff(
        &model.logits(&golden_batch(&dir), &Ctx::eval()).unwrap(),
        &r["logits"],
    );
    assert!(d < 1e-5, "logits differ by {d}");
    c
}

/// An IA3 adapter PEFT saved (save_pretrained, scripts/ia3_reference.py) reads back with
/// PEFT's vectors and head under our names and gives PEFT's logits; an IA3 run's own
/// export, read back with `eval --adapter`, scores as the run.
#[test]
fn ia3_adapters_read_back() {
    let c = reads_back_as_saved("ia3", 10);
    assert_eq!(c.kind, AdapterKind::Ia3);
    let mut targets = c.targets.clone();
    targets.sort();
    assert_eq!(targets, ["key", "output.dense", "value"]);

    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 48, 16);
    let out = tmp.path().join("run");
    let args = [
        "--task",
        "rte",
        "--method",
        "ia3",
        "--max-steps",
        "4",
        "--lr",
        "3e-2",
    ];
    train(&fixture("tiny-bert"), tmp.path(), &out, &args);
    export_scores_as_run(&out, tmp.path(), &fixture("tiny-bert"));
}

/// LoReFT as pyreft itself computes it (scripts/loreft_pyreft.py: pyreft 0.1.0's
/// LoreftIntervention through get_reft_model, run from its own venv, each R's
/// parametrization swapped for peft's `use_trivialization=False`; scripts/loreft_reference.py,
/// the formula transcribed into PyTorch, checks the fixture): the outputs of both layers of
/// tiny-bert edited at the first and the last real token, one rank-2 intervention per group
/// and layer, R under torch's Householder parametrization.
/// Logits, loss and the gradients of the Householder vectors, sources and head as the
/// reference's, and R materialised as torch materialises it. WiSE-FT at 0 edits nothing.
#[test]
fn loreft_matches_pyreft() {
    let loreft = AdapterConfig {
        kind: AdapterKind::Loreft { first: 1, last: 1 },
        r: 2,
        alpha: 0.0,
        dropout: 0.0,
        targets: vec!["all".into()],
        rslora: false,
        init: None,
    };
    let (weights, batch, r, cfg, _) = matches_reference(
        "loreft",
        &loreft,
        |k| k.starts_with("encoder.") && k.contains(".loreft."),
        14,
    );
    for (name, x) in weights.iter().filter(|(k, _)| k.ends_with(".rotate")) {
        let got = peft::model::reft::rotation(x).unwrap();
        let d = max_abs_diff(&got, &r[&format!("materialised.{name}")]);
        assert!(d < 1e-6, "{name}: R differs by {d}");
    }
    // The edit at alpha 0 (W = R, b = 0) is nothing: the base model's logits.
    let base = Model::load_with_adapters(
        &ParamStore::frozen(weights.clone(), Device::Cpu),
        &cfg,
        Some(2.into()),
        None,
    )
    .unwrap()
    .logits(&batch, &Ctx::eval())
    .unwrap();
    let mut zero = weights.clone();
    for (name, t) in weights.iter().filter(|(k, _)| k.contains(".loreft.")) {
        if let Some(x) = name.strip_suffix(".source.weight") {
            let rot = peft::model::reft::rotation(&weights[&format!("{x}.rotate")]).unwrap();
            zero.insert(name.clone(), rot.t().unwrap().contiguous().unwrap());
        } else if name.ends_with(".source.bias") {
            zero.insert(name.clone(), t.zeros_like().unwrap());
        }
    }
    let store = ParamStore::frozen(zero, Device::Cpu);
    let model = Model::load_with_adapters(&store, &cfg, Some(2.into()), Some(&loreft)).unwrap();
    let d = max_abs_diff(&model.logits(&batch, &Ctx::eval()).unwrap(), &base);
    assert!(d < 1e-5, "an edit of zero changes the logits by {d}");
}

/// A DoRA adapter PEFT saved (`use_dora`, `….lora_magnitude_vector`) reads back with
/// PEFT's tensors and gives PEFT's logits; a DoRA run exports `use_dora` with its
/// magnitudes, which `eval --adapter` scores as the run, and `merge` folds the run into
/// plain weights that score the same.
#[test]
fn dora_adapters_export_and_read_back() {
    let c = reads_back_as_saved("dora", 14);
    assert_eq!((c.kind, c.r, c.alpha), (AdapterKind::Dora, 4, 8.0));

    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 48, 16);
    let out = tmp.path().join("run");
    let args = [
        "--task",
        "rte",
        "--method",
        "dora",
        "--max-steps",
        "4",
        "--lr",
        "3e-2",
    ];
    train(&fixture("tiny-bert"), tmp.path(), &out, &args);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["use_dora"], true);
    let saved = tensors(&out.join("adapter_model.safetensors"));
    let magnitudes = saved
        .keys()
        .filter(|k| k.ends_with(".lora_magnitude_vector"))
        .count();
    assert_eq!(magnitudes, 4, "{:?}", saved.keys());
    export_scores_as_run(&out, tmp.path(), &fixture("tiny-bert"));
    let merged = tmp.path().join("merged");
    ok(merge(&out, &merged, &[]));
    assert!(!tensors(&merged.join("model.safetensors"))
        .keys()
        .any(|k| k.contains("lora_")));
    let dora = AdapterConfig {
        kind: AdapterKind::Dora,
        ..lora(8, &["query", "value"])
    };
    let want = run_logits(&fixture("tiny-bert"), &out, Some(&dora));
    let d = max_diff(&dir_logits(&merged), &want);
    assert!(d <= 1e-5, "merged logits differ by {d}");
    // WiSE-FT at 0 is the base model: B zero, each magnitude back at its row's ‖W₀‖.
    let rw = RunWeights::load(&out, Which::Last, None, None).unwrap();
    let zero = rw.weights(0.0).unwrap();
    let m = "encoder.layer.1.attention.self.value";
    let m0 = peft::model::adapter::row_norms(&zero[&format!("{m}.weight")]).unwrap();
    assert_eq!(
        max_diff(&zero[&format!("{m}.lora_magnitude_vector")], &m0),
        0.0
    );
    assert!(
        max_diff(
            &saved[&format!("base_model.model.bert.{m}.lora_magnitude_vector")],
            &m0
        ) > 0.0
    );
}

/// `peft diff` of an adapter run compares the weights its adapters fold into, as `merge`
/// writes them: a DoRA run on query and value moved those and nothing else; a LoReFT run,
/// which folds into no weight, is refused with the reason.
#[test]
fn diff_folds_adapters_and_refuses_loreft() {
    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 32, 8);
    let dora = tmp.path().join("dora");
    let mut args = STEPS.to_vec();
    args.extend_from_slice(&["--method", "dora", "--lr", "1e-2"]);
    train(&fixture("tiny-bert"), tmp.path(), &dora, &args);
    let text = ok(peft(&[
        "diff",
        "--checkpoint",
        dora.to_str().unwrap(),
        "--json",
    ]));
    let mut components: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["layer"].is_null())
        .map(|v| {
            assert!(v["relative_change"].as_f64().unwrap() > 0.0, "{v}");
            v["component"].as_str().unwrap().to_string()
        })
        .collect();
    components.sort();
    assert_eq!(components, ["query", "value"]);

    let reft = tmp.path().join("loreft");
    let mut args = STEPS.to_vec();
    args.extend_from_slice(&["--method", "loreft"]);
    train(&fixture("tiny-bert"), tmp.path(), &reft, &args);
    let o = peft(&["diff", "--checkpoint", reft.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("LoReFT"), "{}", stderr(&o));
}

/// A LayerNorm-only run (all of it, or a Fisher or random subset) is exported as PEFT's
/// LN tuning (`peft_type` LN_TUNING, `….LayerNorm.ln_tuning_layers.*`, which PEFT loads to
/// our merged model's logits exactly: `scripts/peft_roundtrip.py compare`), and read back
/// by `eval --adapter` it scores as the run.
#[test]
fn layernorm_runs_export_ln_tuning_and_read_back() {
    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 48, 16);
    for method in [
        &["--method", "layernorm"][..],
        &["--method", "random-layernorm", "--fraction", "0.3"],
    ] {
        let out = tmp.path().join(method[1]);
        let mut args = vec!["--task", "rte", "--max-steps", "4", "--lr", "3e-2"];
        args.extend_from_slice(method);
        train(&fixture("tiny-bert"), tmp.path(), &out, &args);
        let cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(cfg["peft_type"], "LN_TUNING");
        let saved = tensors(&out.join("adapter_model.safetensors"));
        assert!(saved.contains_key(
            "base_model.model.bert.encoder.layer.1.output.LayerNorm.ln_tuning_layers.weight"
        ));
        assert!(saved.contains_key("base_model.model.classifier.weight"));
        export_scores_as_run(&out, tmp.path(), &fixture("tiny-bert"));
    }
}
