//! The files a command reads back from a run directory are input like its flags:
//! `config.json` (every reader), `resume.safetensors` (`train --resume`) and the trained
//! tensors (`trainable.safetensors`, `last.safetensors`: eval, predict, merge, diff). Each
//! edited or forged one is refused with exit 2, naming the file and the key or tensor, and
//! the run is left as it was.

use std::collections::BTreeMap;
use std::collections::HashMap;

use candle_core::{DType, Tensor};
use serde_json::{json, Value};

use super::*;

const LIMIT: Duration = Duration::from_secs(300);

/// A copy of the run directory `from` at `to`.
pub(crate) fn copy_run(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_run(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// `assert_unchanged` for a command that writes the run: it takes the writer's lock
/// (`run.lock`, holding the holder's pid) before it reads anything, and that is all it may
/// leave behind.
#[track_caller]
fn assert_run_unchanged(what: &str, before: &BTreeMap<PathBuf, Vec<u8>>, dir: &Path) {
    let lock = dir.join("run.lock");
    let mut before = before.clone();
    before.remove(&lock);
    let mut after = snapshot(dir);
    after.remove(&lock);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "{what}: files appeared or went"
    );
    for (path, bytes) in &before {
        assert!(&after[path] == bytes, "{what}: {} changed", path.display());
    }
}

fn save(path: &Path, tensors: &HashMap<String, Tensor>) {
    candle_core::safetensors::save(tensors, path).unwrap();
}

fn nan_like(t: &Tensor) -> Tensor {
    let mut v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    v[0] = f32::NAN;
    Tensor::from_vec(v, t.dims(), t.device()).unwrap()
}

// --- 1. config.json ---

#[test]
fn config_json_is_checked_as_the_flags_are() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let run = tiny_run(root, "run", &[]);
    let input = root.join("pairs.txt");
    std::fs::write(&input, "a cat\ta dog\n").unwrap();
    type Edit = fn(&mut Value);
    let cases: [(&str, Edit, &str); 9] = [
        (
            "batch_size 0",
            |v| v["train"]["optimisation"]["batch_size"] = json!(0),
            "batch_size",
        ),
        (
            "eval_batch_size 0",
            |v| v["train"]["output"]["eval_batch_size"] = json!(0),
            "eval_batch_size",
        ),
        (
            "lr 0",
            |v| v["train"]["optimisation"]["lr"] = json!(0.0),
            "lr",
        ),
        (
            "lr negative",
            |v| v["train"]["optimisation"]["lr"] = json!(-1e-3),
            "lr",
        ),
        (
            "max_seq_len 0",
            |v| v["train"]["data"]["max_seq_len"] = json!(0),
            "max_seq_len",
        ),
        (
            "grad_accum 0",
            |v| v["train"]["optimisation"]["grad_accum"] = json!(0),
            "grad_accum",
        ),
        ("num_labels 0", |v| v["num_labels"] = json!(0), "num_labels"),
        (
            "nothing trained",
            |v| v["trainable_tensors"] = json!([]),
            "trainable_tensors",
        ),
        (
            "a tensor listed twice",
            |v| {
                let first = v["trainable_tensors"][0].clone();
                v["trainable_tensors"].as_array_mut().unwrap().push(first);
            },
            "trainable_tensors",
        ),
    ];
    for (i, (what, edit, key)) in cases.into_iter().enumerate() {
        let dir = root.join(format!("case-{i}"));
        copy_run(&run, &dir);
        let config = dir.join("config.json");
        edit_json(&config, edit);
        let before = snapshot(&dir);
        let d = s(&dir);
        for args in [
            vec!["eval", "--checkpoint", d],
            vec!["predict", "--checkpoint", d, "--input", s(&input)],
            vec!["diff", "--checkpoint", d],
        ] {
            let out = peft_hostile(&args, LIMIT);
            assert_refused(&format!("{what}: {}", args[0]), &out, &[s(&config), key]);
            assert_unchanged(&format!("{what}: {}", args[0]), &before, &dir);
        }
        let out = peft_hostile(&["train", "--resume", d], LIMIT);
        assert_refused(&format!("{what}: train --resume"), &out, &[s(&config), key]);
        assert_run_unchanged(&format!("{what}: train --resume"), &before, &dir);
    }
}

#[test]
fn config_json_with_a_setting_of_another_method_or_one_missing_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let run = tiny_run(root, "lora", &["--method", "lora"]);
    type Edit = fn(&mut Value);
    let cases: [(&str, Edit, &str); 3] = [
        // Without lora_r the run would be scored without its adapters.
        (
            "lora_r removed",
            |v| {
                let lora = &mut v["train"]["method"]["lora"];
                lora.as_object_mut().unwrap().remove("r");
            },
            "method.lora: missing field `r`",
        ),
        (
            "reserve of child-tuning",
            |v| v["train"]["method"]["child_tuning"] = json!({"reserve": 0.3}),
            "reserve",
        ),
        (
            "unknown method",
            |v| v["train"]["method"]["name"] = json!("lorax"),
            "lorax",
        ),
    ];
    for (i, (what, edit, key)) in cases.into_iter().enumerate() {
        let dir = root.join(format!("case-{i}"));
        copy_run(&run, &dir);
        let config = dir.join("config.json");
        edit_json(&config, edit);
        let before = snapshot(&dir);
        let out = peft_hostile(&["eval", "--checkpoint", s(&dir)], LIMIT);
        assert_refused(what, &out, &[s(&config), key]);
        assert_unchanged(what, &before, &dir);
    }
}

// --- 2. resume.safetensors ---

/// Write `run`'s resume.safetensors as `peft train` would at step 1 of 3 (epoch 0, 2
/// steps per epoch: 16 examples in batches of 8): the parameters of last.safetensors, zero
/// moments, then `progress` and `tensors` edited.
pub(crate) fn write_resume(
    run: &Path,
    progress: impl FnOnce(&mut Value),
    tensors: impl FnOnce(&mut BTreeMap<String, Tensor>),
) {
    let mut t = BTreeMap::new();
    for (name, p) in crate::common::tensors(&run.join("last.safetensors")) {
        t.insert(format!("adam_m/{name}"), p.zeros_like().unwrap());
        t.insert(format!("adam_v/{name}"), p.zeros_like().unwrap());
        t.insert(format!("param/{name}"), p);
    }
    tensors(&mut t);
    let mut p = json!({
        "step": 1, "epoch": 0, "steps_in_epoch": 1, "dropout_calls": 0, "skipped": 0,
        "loss_sum": 0.0, "loss_n": 0, "tokens": 0, "examples": 0, "train_time": 0.0,
        "elapsed_s": 0.0, "best": null, "last": null
    });
    progress(&mut p);
    let meta: HashMap<String, String> = [
        ("format", "peft-resume-1".to_string()),
        ("progress", p.to_string()),
        ("optimizer_step", "1".into()),
        ("mask_rng_seed", "44".into()),
        ("mask_rng_word_pos", "0".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    safetensors::serialize_to_file(t, Some(meta), &run.join("resume.safetensors")).unwrap();
}

/// A one-step tiny run made resumable: its horizon raised to 3 steps, a checkpoint at 1.
fn resumable(root: &Path) -> PathBuf {
    let run = tiny_run(root, "run", &[]);
    edit_json(&run.join("config.json"), |v| {
        v["train"]["optimisation"]["max_steps"] = json!(3)
    });
    write_resume(&run, |_| {}, |_| {});
    run
}

#[test]
fn a_checkpoint_of_the_run_resumes_to_its_end() {
    // What the refusals below are measured against: the same file, unedited, is accepted.
    let tmp = tempfile::tempdir().unwrap();
    let run = resumable(tmp.path());
    let out = peft_hostile(&["train", "--resume", s(&run)], LIMIT);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!run.join("resume.safetensors").exists());
    let steps: Vec<u64> = crate::common::metrics(&run)
        .iter()
        .map(|m| m["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [1, 2, 3]);
}

#[test]
fn resume_progress_is_bounded_by_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let run = resumable(root);
    type Edit = fn(&mut Value);
    let cases: [(&str, Edit, &str); 11] = [
        // Replayed the data order of 1e15 epochs: a hang.
        (
            "epoch 1e15",
            |p| p["epoch"] = json!(1_000_000_000_000_000u64),
            "epoch",
        ),
        // Marked the run finished with nothing trained.
        (
            "step 1e15",
            |p| p["step"] = json!(1_000_000_000_000_000u64),
            "step",
        ),
        (
            "step at the end",
            |p| {
                p["step"] = json!(3);
                p["epoch"] = json!(1);
            },
            "step",
        ),
        (
            "steps_in_epoch past the epoch",
            |p| p["steps_in_epoch"] = json!(5),
            "steps_in_epoch",
        ),
        (
            "step not where epoch says",
            |p| p["epoch"] = json!(1),
            "epoch",
        ),
        ("negative step", |p| p["step"] = json!(-1), "step"),
        ("fractional epoch", |p| p["epoch"] = json!(0.5), "epoch"),
        (
            "skipped more than taken",
            |p| p["skipped"] = json!(9),
            "skipped",
        ),
        (
            "loss_n more than taken",
            |p| p["loss_n"] = json!(9),
            "loss_n",
        ),
        (
            "elapsed_s past any clock",
            |p| p["elapsed_s"] = json!(1e300),
            "elapsed_s",
        ),
        // Overflowed the dropout counter on the next draw.
        (
            "dropout_calls at the counter's end",
            |p| p["dropout_calls"] = json!(u64::MAX),
            "dropout_calls",
        ),
    ];
    for (i, (what, edit, field)) in cases.into_iter().enumerate() {
        let dir = root.join(format!("case-{i}"));
        copy_run(&run, &dir);
        write_resume(&dir, edit, |_| {});
        let before = snapshot(&dir);
        let out = peft_hostile(&["train", "--resume", s(&dir)], LIMIT);
        let file = dir.join("resume.safetensors");
        assert_refused(what, &out, &[s(&file), field]);
        assert_run_unchanged(what, &before, &dir);
    }
}

#[test]
fn resume_tensors_must_be_the_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let run = resumable(root);
    type Edit = fn(&mut BTreeMap<String, Tensor>);
    let cases: [(&str, Edit, &str); 7] = [
        (
            "a parameter missing",
            |t| {
                t.remove("param/classifier.bias");
            },
            "param/classifier.bias",
        ),
        (
            "a parameter the run never trains",
            |t| {
                let b = t["param/classifier.bias"].clone();
                t.insert("param/encoder.extra.bias".into(), b);
            },
            "param/encoder.extra.bias",
        ),
        (
            "a moment of another shape",
            |t| {
                let m = t["adam_m/classifier.weight"].flatten_all().unwrap();
                t.insert("adam_m/classifier.weight".into(), m);
            },
            "adam_m/classifier.weight",
        ),
        (
            "a NaN moment",
            |t| {
                let m = nan_like(&t["adam_m/classifier.weight"]);
                t.insert("adam_m/classifier.weight".into(), m);
            },
            "adam_m/classifier.weight",
        ),
        (
            "a negative second moment",
            |t| {
                let v = (t["adam_v/classifier.bias"].clone() - 1.0).unwrap();
                t.insert("adam_v/classifier.bias".into(), v);
            },
            "adam_v/classifier.bias",
        ),
        (
            "a second moment alone",
            |t| {
                t.remove("adam_m/classifier.bias");
            },
            "adam_m/classifier.bias",
        ),
        (
            "an integer parameter",
            |t| {
                let p = t["param/classifier.bias"].to_dtype(DType::I64).unwrap();
                t.insert("param/classifier.bias".into(), p);
            },
            "param/classifier.bias",
        ),
    ];
    for (i, (what, edit, tensor)) in cases.into_iter().enumerate() {
        let dir = root.join(format!("case-{i}"));
        copy_run(&run, &dir);
        write_resume(&dir, |_| {}, edit);
        let before = snapshot(&dir);
        let out = peft_hostile(&["train", "--resume", s(&dir)], LIMIT);
        let file = dir.join("resume.safetensors");
        assert_refused(what, &out, &[s(&file), tensor]);
        assert_run_unchanged(what, &before, &dir);
    }
    // A horizon that overflows the step counter, from config.json.
    let dir = root.join("epochs");
    copy_run(&run, &dir);
    let config = dir.join("config.json");
    edit_json(&config, |v| {
        v["train"]["optimisation"]["max_steps"] = Value::Null;
        v["train"]["optimisation"]["epochs"] = json!(u64::MAX);
    });
    let before = snapshot(&dir);
    let out = peft_hostile(&["train", "--resume", s(&dir)], LIMIT);
    assert_refused("epochs overflow", &out, &[s(&config), "epochs"]);
    assert_run_unchanged("epochs overflow", &before, &dir);
}

// --- 3. trainable.safetensors and last.safetensors ---

/// `args` on the run `dir` are refused naming `names`, and the run is left as it was.
#[track_caller]
fn refused(what: &str, dir: &Path, args: &[&str], names: &[&str]) {
    let before = snapshot(dir);
    let out = peft_hostile(args, LIMIT);
    assert_refused(what, &out, names);
    assert_unchanged(what, &before, dir);
}

#[test]
fn run_tensors_that_are_not_finite_are_refused_by_every_reader() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let run = tiny_run(root, "run", &[]);
    let input = root.join("pairs.txt");
    std::fs::write(&input, "a cat\ta dog\n").unwrap();
    let name = "classifier.weight";
    for file in ["trainable.safetensors", "last.safetensors"] {
        let dir = root.join(format!("nan-{file}"));
        copy_run(&run, &dir);
        let path = dir.join(file);
        let mut t = crate::common::tensors(&path);
        let bad = nan_like(&t[name]);
        t.insert(name.into(), bad);
        save(&path, &t);
        let which = if file == "last.safetensors" {
            "last"
        } else {
            "best"
        };
        let d = s(&dir);
        let merged = root.join(format!("merged-{file}"));
        for args in [
            vec!["eval", "--checkpoint", d, "--which", which],
            vec![
                "predict",
                "--checkpoint",
                d,
                "--which",
                which,
                "--input",
                s(&input),
            ],
            vec!["diff", "--checkpoint", d, "--which", which],
            vec![
                "merge",
                "--checkpoint",
                d,
                "--which",
                which,
                "--output",
                s(&merged),
            ],
        ] {
            refused(
                &format!("NaN in {file}: {}", args[0]),
                &dir,
                &args,
                &[s(&path), name],
            );
        }
        assert!(
            !merged.exists(),
            "a refused merge wrote {}",
            merged.display()
        );
    }
}

#[test]
fn run_tensors_are_exactly_those_config_json_lists() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let full = tiny_run(root, "full", &[]);
    let bitfit = tiny_run(root, "bitfit", &["--method", "bitfit"]);
    let query = "encoder.layer.0.attention.self.query.weight";
    let query_weight = crate::common::tensors(&full.join("trainable.safetensors"))[query].clone();

    // Missing: the base's own tensor would silently stand in for the trained one.
    let dir = root.join("missing");
    copy_run(&full, &dir);
    let path = dir.join("trainable.safetensors");
    let mut t = crate::common::tensors(&path);
    t.remove(query);
    save(&path, &t);
    refused(
        "a trained tensor missing",
        &dir,
        &["eval", "--checkpoint", s(&dir)],
        &[s(&path), query],
    );

    // Extra: a tensor BitFit never trains would silently replace the base's.
    let dir = root.join("extra");
    copy_run(&bitfit, &dir);
    let path = dir.join("last.safetensors");
    let mut t = crate::common::tensors(&path);
    t.insert(query.into(), query_weight.clone());
    save(&path, &t);
    let args = ["eval", "--checkpoint", s(&dir), "--which", "last"];
    refused("an extra tensor", &dir, &args, &[s(&path), query]);

    // Extra, and listed in config.json too: the method still never trains it.
    let dir = root.join("extra-listed");
    copy_run(&bitfit, &dir);
    let path = dir.join("trainable.safetensors");
    let mut t = crate::common::tensors(&path);
    t.insert(query.into(), query_weight);
    save(&path, &t);
    let config = dir.join("config.json");
    edit_json(&config, |v| {
        v["trainable_tensors"]
            .as_array_mut()
            .unwrap()
            .push(json!(query))
    });
    let merged = root.join("m");
    let args = ["merge", "--checkpoint", s(&dir), "--output", s(&merged)];
    refused(
        "an extra tensor listed",
        &dir,
        &args,
        &[s(&config), query, "bitfit"],
    );
}

#[test]
fn adapter_tensors_must_fit_the_runs_adapters() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let lora = tiny_run(root, "lora", &["--method", "lora"]);
    let trained = crate::common::tensors(&lora.join("trainable.safetensors"));
    let a = trained
        .keys()
        .find(|n| n.ends_with("query.lora_A.weight"))
        .expect("a LoRA run of query")
        .clone();

    // An adapter matrix of another rank than config.json's lora_r.
    let dir = root.join("rank");
    copy_run(&lora, &dir);
    let path = dir.join("trainable.safetensors");
    let mut t = trained.clone();
    let wide = Tensor::cat(&[&t[&a], &t[&a]], 0).unwrap();
    t.insert(a.clone(), wide);
    save(&path, &t);
    refused(
        "an adapter of another rank",
        &dir,
        &["eval", "--checkpoint", s(&dir)],
        &[s(&path), &a],
    );

    // An adapter on a module the run does not target (key), listed and saved alike.
    let dir = root.join("untargeted");
    copy_run(&lora, &dir);
    let path = dir.join("trainable.safetensors");
    let key_a = a.replace("query", "key");
    let mut t = trained.clone();
    t.insert(key_a.clone(), trained[&a].clone());
    save(&path, &t);
    edit_json(&dir.join("config.json"), |v| {
        v["trainable_tensors"]
            .as_array_mut()
            .unwrap()
            .push(json!(key_a))
    });
    let input = root.join("pairs.txt");
    std::fs::write(&input, "a cat\ta dog\n").unwrap();
    let args = ["predict", "--checkpoint", s(&dir), "--input", s(&input)];
    refused(
        "an adapter on an untargeted module",
        &dir,
        &args,
        &[s(&path), &key_a],
    );
}
