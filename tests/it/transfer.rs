//! The seeds' transfer experiments as plain commands: a seeded sample of the training set
//! (`--max-train-examples`, Child-Tuning's down-sampled source) and a run scored on
//! another task through a label map (`eval --task --label-map`, its domain transfer).

use crate::common::*;

/// `peft eval ARGS --json`'s dev accuracy.
fn accuracy(args: &[&str]) -> f64 {
    let mut all = vec!["eval", "--json"];
    all.extend_from_slice(args);
    let shown = ok(peft(&all));
    let v: serde_json::Value = serde_json::from_str(shown.trim()).unwrap();
    v["metrics"]["accuracy"].as_f64().unwrap()
}

#[test]
fn max_train_examples_trains_on_a_recorded_sample() {
    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 16, 8);
    let steps = |name: &str, extra: &[&str]| {
        let out = tmp.path().join(name);
        let mut args = vec!["--task", "rte", "--epochs", "1"];
        args.extend_from_slice(extra);
        train(&fixture("tiny-bert"), tmp.path(), &out, &args);
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        let last = metrics(&out).last().unwrap()["step"].as_u64().unwrap();
        (last, config["train"]["data"]["max_train_examples"].clone())
    };
    // 16 examples in batches of 8: 2 steps; 5 of them: 1.
    assert_eq!(steps("all", &[]), (2, serde_json::Value::Null));
    assert_eq!(steps("five", &["--max-train-examples", "5"]), (1, 5.into()));
    // More than the split holds: all of it.
    assert_eq!(steps("more", &["--max-train-examples", "100"]).0, 2);
    let out = peft(&[
        "train",
        "--task",
        "rte",
        "--model",
        "m",
        "--max-train-examples",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("max_train_examples"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_run_scores_on_another_task_through_a_label_map() {
    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 16, 8);
    let run = tmp.path().join("run");
    train(
        &fixture("tiny-bert"),
        tmp.path(),
        &run,
        &["--task", "rte", "--max-steps", "2"],
    );
    let r = run.to_str().unwrap();
    let own = eval_accuracy(&run);
    // The same task by name is the run's own score.
    assert_eq!(accuracy(&["--checkpoint", r, "--task", "rte"]), own);
    // Each label read as the other: every prediction flips, 8 dev examples.
    let swapped = accuracy(&[
        "--checkpoint",
        r,
        "--task",
        "rte",
        "--label-map",
        "entailment=not_entailment,not_entailment=entailment",
    ]);
    assert_eq!(swapped, 1.0 - own, "{own}");
    // A label the other task lacks, unmapped, is refused by name.
    let out = peft(&["eval", "--checkpoint", r, "--task", "cola"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("`entailment`") && stderr(&out).contains("--label-map"),
        "{}",
        stderr(&out)
    );
    // A run is scored with its own tensors: an adapter beside it would be ignored.
    let out = peft(&["eval", "--checkpoint", r, "--task", "rte", "--adapter", r]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    for bad in [
        vec!["eval", "--checkpoint", r, "--task", "stsb"],
        vec![
            "eval",
            "--checkpoint",
            r,
            "--task",
            "rte",
            "--label-map",
            "neutral=entailment",
        ],
        vec![
            "eval",
            "--checkpoint",
            r,
            "--label-map",
            "entailment=not_entailment",
        ],
    ] {
        let out = peft(&bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", stderr(&out));
    }
}

#[test]
fn init_starts_from_a_run_as_merging_it_first_would() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write_rte(root, 16, 8);
    write_stsb(root, 16, 8);
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    // A LoRA run on RTE: its adapters must be folded into what the transfer starts from.
    let source = root.join("rte-lora");
    train(
        &fixture("tiny-bert"),
        root,
        &source,
        &[
            "--task",
            "rte",
            "--method",
            "lora",
            "--max-steps",
            "2",
            "--lr",
            "1e-2",
        ],
    );
    let merged = root.join("merged");
    ok(peft(&[
        "merge",
        "--checkpoint",
        &s(&source),
        "--output",
        &s(&merged),
    ]));
    // Task transfer: a new STS-B head over the RTE encoder, by merging first and by --init.
    let head = [
        "--task",
        "stsb",
        "--method",
        "head",
        "--max-steps",
        "2",
        "--seed",
        "7",
    ];
    let first = root.join("merged-first");
    train(&s(&merged), root, &first, &head);
    let init = root.join("init");
    let (src, data, out) = (s(&source), s(root), s(&init));
    let mut args = vec![
        "train",
        "--init",
        &src,
        "--data-dir",
        &data,
        "--output-dir",
        &out,
    ];
    args.extend_from_slice(&SMALL);
    args.extend_from_slice(&head);
    let shown = ok(peft(&args));
    assert!(shown.contains("init = "), "{shown}");
    let (a, b) = (
        tensors(&first.join("last.safetensors")),
        tensors(&init.join("last.safetensors")),
    );
    assert_eq!(a.len(), 2, "only the head trains: {:?}", a.keys());
    // PEFT has no tuner for the head alone: no adapter files (docs/methods.md).
    assert!(!init.join("adapter_config.json").exists());
    for (name, t) in &a {
        assert_eq!(bits(t), bits(&b[name]), "{name}");
    }
    let pearson = |run: &std::path::Path| {
        let v: serde_json::Value =
            serde_json::from_str(ok(peft(&["eval", "--checkpoint", &s(run), "--json"])).trim())
                .unwrap();
        v["metrics"].clone()
    };
    // Scoring the --init run rebuilds its encoder from the source run.
    assert_eq!(pearson(&init), pearson(&first));
    let out = ok(peft(&["report", &s(&init)]));
    assert!(out.contains("init <- rte-lora"), "{out}");
    // A source that changed since is refused, not silently used.
    let file = source.join("trainable.safetensors");
    let mut edited = tensors(&file);
    let b_name = edited
        .keys()
        .find(|k| k.ends_with("lora_B.weight"))
        .unwrap()
        .clone();
    let t = (&edited[&b_name] + 1.0).unwrap();
    edited.insert(b_name, t);
    candle_core::safetensors::save(&edited, &file).unwrap();
    let out = peft(&["eval", "--checkpoint", &s(&init)]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("changed since a run started from it"),
        "{}",
        stderr(&out)
    );
    let bad = peft(&[
        "train",
        "--init",
        &s(root),
        "--task",
        "stsb",
        "--output-dir",
        &s(&root.join("x")),
    ]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
}

#[test]
fn init_on_another_task_starts_a_new_head_and_on_the_same_task_keeps_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write_rte(root, 16, 8);
    // QNLI's files: RTE's pairs under QNLI's header, the same two labels, so the source's
    // head would fit and only the task tells it is another one.
    let qnli = root.join("QNLI");
    std::fs::create_dir_all(&qnli).unwrap();
    for split in ["train", "dev"] {
        let rte = std::fs::read_to_string(root.join("RTE").join(format!("{split}.tsv"))).unwrap();
        let body = rte.split_once('\n').unwrap().1;
        std::fs::write(
            qnli.join(format!("{split}.tsv")),
            format!("index\tquestion\tsentence\tlabel\n{body}"),
        )
        .unwrap();
    }
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let source = root.join("rte-full");
    train(
        &fixture("tiny-bert"),
        root,
        &source,
        &[
            "--task",
            "rte",
            "--method",
            "full",
            "--max-steps",
            "2",
            "--lr",
            "1e-2",
        ],
    );
    let head = |task: &str| {
        let out = root.join(format!("{task}-head"));
        let (src, data, dir) = (s(&source), s(root), s(&out));
        let mut args = vec![
            "train",
            "--init",
            &src,
            "--data-dir",
            &data,
            "--output-dir",
            &dir,
            "--task",
            task,
            "--method",
            "head",
            "--max-steps",
            "1",
            "--lr",
            "1e-9",
        ];
        args.extend_from_slice(&SMALL);
        let shown = peft(&args);
        assert!(shown.status.success(), "{}", stderr(&shown));
        (
            tensors(&out.join("last.safetensors"))["classifier.weight"].clone(),
            stderr(&shown),
        )
    };
    // --init starts from the source's best state.
    let source_head = tensors(&source.join("trainable.safetensors"))["classifier.weight"].clone();
    let gap = |a: &candle_core::Tensor| {
        (a - &source_head)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let (same, said) = head("rte");
    assert!(
        gap(&same) < 1e-6,
        "RTE to RTE keeps the head: {}",
        gap(&same)
    );
    assert!(!said.contains("a new head"), "{said}");
    let (other, said) = head("qnli");
    assert!(
        gap(&other) > 1e-3,
        "RTE to QNLI starts a new head: {}",
        gap(&other)
    );
    assert!(
        said.contains("trained on rte: a new head for qnli"),
        "{said}"
    );
}
