//! AdaLoRA against Hugging Face PEFT itself (scripts/adalora_reference.py,
//! tests/fixtures/adalora: PEFT 0.21.2's AdaLoraConfig and its own training loop with
//! `update_and_allocate`, init_r 4 → target_r 2 over six steps): the first step's logits,
//! loss with the orthogonality penalty and gradients; every tensor after each of six
//! AdamW steps and the rank pattern PEFT keeps after each; a PEFT-saved adapter read back;
//! `--method adalora` through the binary.

use std::collections::{BTreeMap, HashMap};

use candle_core::{Device, Tensor};
use peft::methods::{adalora, regime, MethodFlags, MethodSpec};
use peft::model::{read_checkpoint, Arch, Ctx, Model, ParamStore};
use peft::optim::{AdamWConfig, MaskPlan, MaskedAdamW};

use crate::common::*;

fn fixture_tensors() -> HashMap<String, Tensor> {
    let path = fixture_dir("adalora").join("steps.safetensors");
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

/// The fixture's settings: what scripts/adalora_reference.py gives AdaLoraConfig.
fn spec() -> MethodSpec {
    let flags = MethodFlags {
        adalora: adalora::Flags {
            adalora_init_r: Some(4),
            adalora_target_r: Some(2),
            adalora_tinit: Some(1),
            adalora_tfinal: Some(2),
            ..Default::default()
        },
        ..Default::default()
    };
    MethodSpec::new(adalora::METHOD, flags, 0).unwrap()
}

/// The tiny BERT with the fixture's start, every AdaLoRA tensor and the head trainable.
fn model() -> (ParamStore, Model, peft::model::Batch, Tensor) {
    let g = fixture_tensors();
    let dir = fixture_dir("tiny-bert");
    let (cfg, mut weights) = read_checkpoint(&dir).unwrap();
    peft::model::drop_head(&mut weights);
    for (k, t) in g
        .iter()
        .filter_map(|(k, t)| k.strip_prefix("start.").map(|n| (n, t)))
    {
        weights.insert(k.to_string(), t.clone());
    }
    let trains = |n: &str| n.contains(".lora_") || n.starts_with("classifier.");
    let store = ParamStore::new(weights, Device::Cpu, 0, Box::new(trains));
    let adapter = peft::run::setup::adapter_of(&spec()).unwrap();
    let model = Model::load_with_adapters(&store, &cfg, Some(2.into()), Some(&adapter)).unwrap();
    assert!(store.created().is_empty(), "{:?}", store.created());
    let labels = g["labels"].to_dtype(candle_core::DType::U32).unwrap();
    (store, model, golden_batch(&dir), labels)
}

/// Six steps of PEFT's loop: loss with the penalty, clipping at 1, AdamW (lr 1e-2, no
/// decay), then the allocator; every tensor after every step within 1e-5 of PEFT's, the
/// first step's logits, loss and gradients, and the rank pattern after every step.
#[test]
fn adalora_trains_as_peft_does() {
    let g = fixture_tensors();
    let steps: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_dir("adalora").join("steps.json")).unwrap(),
    )
    .unwrap();
    let (store, model, batch, labels) = model();
    let vars = store.vars();
    let mut regime = regime::of(&spec(), 6)
        .unwrap()
        .expect("adalora has a regime");
    let adam = AdamWConfig {
        weight_decay: 0.0,
        ..Default::default()
    };
    let mut opt = MaskedAdamW::new(vars.clone(), MaskPlan::default(), |_| true, adam, 0).unwrap();
    for step in 0..6 {
        let logits = model.logits(&batch, &Ctx::eval()).unwrap();
        let ce = peft::loss::cross_entropy(&logits, &labels).unwrap();
        let loss = (ce + regime.penalty(&vars).unwrap().unwrap()).unwrap();
        let grads = loss.backward().unwrap();
        let grads: BTreeMap<String, Tensor> = vars
            .iter()
            .map(|(n, v)| (n.clone(), grads.get(v.as_tensor()).unwrap().clone()))
            .collect();
        if step == 0 {
            let d = max_abs_diff(&logits, &g["logits"]);
            assert!(d < 1e-5, "logits differ by {d}");
            let d = max_abs_diff(&loss.reshape(1).unwrap(), &g["loss"]);
            assert!(d < 1e-6, "loss with the penalty differs by {d}");
            for (name, got) in &grads {
                let want = &g[&format!("grad.{name}")];
                let rel = max_abs_diff(got, want) / max_abs(want).max(1e-6);
                assert!(rel < 1e-4, "gradient of {name} differs by {rel}");
            }
        }
        let stats = opt.step(&grads, 1e-2).unwrap();
        let clipped = grads
            .iter()
            .map(|(n, t)| (n.clone(), (t * stats.clip).unwrap()))
            .collect();
        regime.after_step(step, &vars, &clipped).unwrap();
        for (name, var) in &vars {
            let want = &g[&format!("step{step}.{name}")];
            let d = max_abs_diff(var.as_tensor(), want);
            assert!(d < 1e-5, "step {step}: {name} differs by {d}");
        }
        let pattern = &regime.report().unwrap().file.unwrap().1["modules"];
        let want = &steps["steps"][step]["rank_pattern"];
        match want.as_object() {
            None => assert!(pattern.is_null(), "step {step}: {pattern}"),
            Some(w) => {
                for (key, kept) in w {
                    let module = key.strip_suffix(".lora_E").unwrap();
                    assert_eq!(&pattern[module]["kept"], kept, "step {step}: {module}");
                }
            }
        }
    }
}

/// PEFT saves the kept triplets and the pattern; spread back to init_r they give PEFT's
/// probabilities.
#[test]
fn a_peft_saved_adalora_reads_back() {
    let dir = fixture_dir("tiny-bert");
    let (cfg, mut weights) = read_checkpoint(&dir).unwrap();
    peft::model::drop_head(&mut weights);
    let fx = fixture_dir("adalora").join("adapter");
    let saved = peft::run::peft_format::read(&fx, Arch::Bert).unwrap();
    let a = saved.config.unwrap();
    assert_eq!(a.kind, peft::model::AdapterKind::Adalora);
    assert_eq!((a.r, a.alpha), (4, 8.0));
    let e = &saved.tensors["encoder.layer.0.attention.self.value.lora_E"];
    assert_eq!(e.dims(), [4, 1]);
    weights.extend(saved.tensors);
    assert_scores_as_saved(&cfg, weights, &a, &dir, &fx);
}

/// Through the binary on BERT, RoBERTa, ELECTRA and DeBERTa v3, GLUE and SQuAD: the loop
/// runs the budget itself, so the run ends at the target rank (RUN/rank_pattern.json, and
/// the dropped E are zero in last.safetensors); only the adapters and the head train;
/// `peft eval` re-scores the run; the export (kept triplets, `rank_pattern`) scores as the
/// run; `peft merge` folds it; a schedule with no room to fall is refused by name.
#[test]
fn adalora_runs_its_budget_through_the_binary() {
    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 24, 8);
    write_squad(tmp.path(), "v2.0", 12, 6);
    for family in [
        "tiny-bert",
        "tiny-roberta",
        "tiny-electra",
        "tiny-deberta-v2",
    ] {
        for task in ["rte", "squad_v2"] {
            let out = tmp.path().join(format!("{family}-{task}"));
            let args = [
                "--task",
                task,
                "--method",
                "adalora",
                "--adalora-init-r",
                "4",
                "--adalora-target-r",
                "2",
                "--adalora-tinit",
                "1",
                "--adalora-tfinal",
                "2",
                "--max-steps",
                "6",
                "--lr",
                "1e-2",
                "--warmup-ratio",
                "0",
            ];
            train(&fixture(family), tmp.path(), &out, &args);
            let pattern: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(out.join("rank_pattern.json")).unwrap(),
            )
            .unwrap();
            let modules = pattern["modules"].as_object().unwrap();
            let total: u64 = modules.values().map(|m| m["rank"].as_u64().unwrap()).sum();
            assert_eq!(
                total,
                2 * modules.len() as u64,
                "{family} {task}: {pattern}"
            );
            let last = tensors(&out.join("last.safetensors"));
            for (module, m) in modules {
                let e = last[&format!("{module}.lora_E")]
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                for (v, kept) in e.iter().zip(m["kept"].as_array().unwrap()) {
                    assert!(
                        kept.as_bool().unwrap() || *v == 0.0,
                        "{family} {task} {module}"
                    );
                }
            }
            for k in last.keys() {
                let head = is_task_head(k);
                assert!(k.contains(".lora_") || head, "{family} {task}: {k} trained");
            }
            let metric = if task == "rte" { "accuracy" } else { "f1" };
            assert_rescores(&out, metric);
        }
    }
    let run = tmp.path().join("tiny-bert-rte");
    let exported: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(exported["peft_type"], "ADALORA");
    assert_eq!(exported["total_step"], 6);
    assert!(exported["rank_pattern"].is_object(), "{exported}");
    // The export and the merged model give the run's logits on every dev example.
    export_scores_as_run(&run, tmp.path(), &fixture("tiny-bert"));
    let data = tmp.path().to_str().unwrap();
    let bert = fixture("tiny-bert");
    let scored = ["--task", "rte", "--data-dir", data, "--max-seq-len", "32"];
    let by_run = eval_logits(
        &["--checkpoint", run.to_str().unwrap()],
        &tmp.path().join("run.jsonl"),
    );
    let merged = tmp.path().join("merged");
    ok(peft(&[
        "merge",
        "--checkpoint",
        run.to_str().unwrap(),
        "--output",
        merged.to_str().unwrap(),
    ]));
    let by_merge = eval_logits(
        &[&["--model", merged.to_str().unwrap()][..], &scored].concat(),
        &tmp.path().join("merged.jsonl"),
    );
    // WiSE-FT scales E: at alpha 1 the run itself.
    let wise = eval_logits(
        &["--checkpoint", run.to_str().unwrap(), "--alpha", "1"],
        &tmp.path().join("wise.jsonl"),
    );
    assert_eq!(by_run.len(), 16);
    for other in [&by_merge, &wise] {
        assert_eq!(by_run.len(), other.len());
        for (a, b) in by_run.iter().zip(other) {
            assert!((a - b).abs() < 1e-5, "logits {a} vs {b}");
        }
    }
    let o = peft(&[
        "train",
        "--model",
        &bert,
        "--data-dir",
        data,
        "--task",
        "rte",
        "--method",
        "adalora",
        "--adalora-tinit",
        "4",
        "--adalora-tfinal",
        "2",
        "--max-steps",
        "6",
        "--max-seq-len",
        "32",
        "--output-dir",
        tmp.path().join("refused").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--adalora-tinit 4"), "{}", stderr(&o));
}
