//! Messages that point at the wrong culprit, or let a broken input through (issue 28): a
//! tokenizer without an unknown token, or with ids past the embedding table; config.json
//! values that build a broken encoder (LayerNorm eps, dropouts, sizes); a PEFT adapter
//! whose target_modules name no module; `peft fisher` asked for no examples. Each is
//! refused with exit 2, naming the file and key or flag, and what was on disk survives.

#![allow(unused_imports)]

use super::*;

const LIMIT: Duration = Duration::from_secs(120);

/// A GLUE folder with tiny RTE files.
fn glue(root: &Path) -> PathBuf {
    let d = root.join("glue");
    if !d.join("RTE").exists() {
        write_rte(&d, 16, 8);
    }
    d
}

/// `peft train` of one step on RTE with `model`, into `out`.
fn train_on(model: &Path, data: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        "--model",
        s(model),
        "--data-dir",
        s(data),
        "--output-dir",
        s(out),
        "--task",
        "rte",
        "--max-steps",
        "1",
        "--max-seq-len",
        "16",
    ];
    args.extend_from_slice(extra);
    peft_hostile(&args, LIMIT)
}

/// A finished one-step run on `model` (a copy, so that the test may break it afterwards),
/// its files, and `peft eval --checkpoint` of it once `break_model` has been applied: the
/// run must be refused and left as it was.
fn eval_after(root: &Path, model: &Path, break_model: impl FnOnce(&Path)) -> Output {
    let run = root.join(format!(
        "run-{}",
        model.file_name().unwrap().to_string_lossy()
    ));
    train(
        s(model),
        &glue(root),
        &run,
        &["--task", "rte", "--max-steps", "1"],
    );
    let before = snapshot(&run);
    break_model(model);
    let out = peft_hostile(&["eval", "--checkpoint", s(&run)], LIMIT);
    assert_unchanged("a refused eval", &before, &run);
    out
}

#[test]
fn a_tokenizer_without_an_unknown_token_is_named_at_load() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let data = glue(root);
    // tokenizer.json whose model.unk_token is not in its vocabulary: the first word
    // outside it used to fail with a data sentence as the culprit.
    let m = model_with(root, "no-unk", |m| {
        edit_json(&m.join("tokenizer.json"), |v| {
            v["model"]["unk_token"] = "[NOPE]".into();
        })
    });
    let json = m.join("tokenizer.json");
    let out = train_on(&m, &data, &root.join("a"), &[]);
    assert_refused(
        "tokenizer.json without its unk_token",
        &out,
        &[s(&json), "`[NOPE]`", "unk_token", "not in the vocabulary"],
    );
    // The same through a run rebuilt by `peft eval`: the run survives.
    let m = model_with(root, "no-unk-eval", |_| {});
    let out = eval_after(root, &m, |m| {
        edit_json(&m.join("tokenizer.json"), |v| {
            v["model"]["unk_token"] = "[NOPE]".into();
        })
    });
    assert_refused(
        "eval with a tokenizer.json without its unk_token",
        &out,
        &[s(&m.join("tokenizer.json")), "`[NOPE]`"],
    );
    // vocab.txt (no tokenizer.json) without the [UNK] line.
    let m = model_with(root, "vocab-no-unk", |m| {
        std::fs::remove_file(m.join("tokenizer.json")).unwrap();
        let path = m.join("vocab.txt");
        let text = std::fs::read_to_string(&path).unwrap();
        let kept: Vec<&str> = text.lines().filter(|l| *l != "[UNK]").collect();
        std::fs::write(&path, kept.join("\n") + "\n").unwrap();
    });
    let out = train_on(&m, &data, &root.join("b"), &[]);
    assert_refused(
        "vocab.txt without [UNK]",
        &out,
        &[s(&m.join("vocab.txt")), "`[UNK]`"],
    );
}

#[test]
fn tokenizer_ids_past_the_embedding_table_are_refused_naming_both_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let data = glue(root);
    // As many tokens as vocab_size (218), so a count passes, but one id is 5000.
    let m = model_with(root, "sparse", |m| {
        edit_json(&m.join("tokenizer.json"), |v| {
            let vocab = v["model"]["vocab"].as_object_mut().unwrap();
            let (word, _) = vocab
                .iter()
                .find(|(_, id)| id.as_u64() == Some(100))
                .unwrap();
            let word = word.clone();
            vocab.insert(word, 5000.into());
        })
    });
    let out = train_on(&m, &data, &root.join("a"), &[]);
    assert_refused(
        "a vocabulary id past vocab_size",
        &out,
        &[
            s(&m.join("tokenizer.json")),
            "largest id is 5000",
            "vocab_size",
            "218",
            "config.json",
        ],
    );
    // Only the post-processor's [SEP] id is past the table: every vocabulary id fits.
    let m = model_with(root, "post", |m| {
        edit_json(&m.join("tokenizer.json"), |v| {
            v["post_processor"]["sep"][1] = 218.into();
        })
    });
    let out = train_on(&m, &data, &root.join("b"), &[]);
    assert_refused(
        "a special token id past vocab_size",
        &out,
        &[
            s(&m.join("tokenizer.json")),
            "largest id is 218",
            "vocab_size",
        ],
    );
    // `peft embed` reads the same tokenizer: refused, not an index-select failure.
    let texts = root.join("texts.txt");
    std::fs::write(&texts, "the cat sat\n").unwrap();
    let out = peft_hostile(
        &[
            "embed",
            "--model",
            s(&m),
            "--input",
            s(&texts),
            "--max-seq-len",
            "16",
        ],
        LIMIT,
    );
    assert_refused(
        "embed with a special id past vocab_size",
        &out,
        &["vocab_size"],
    );
}

#[test]
fn layer_norm_eps_that_is_not_positive_is_refused_at_config_load() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let data = glue(root);
    let texts = root.join("texts.txt");
    std::fs::write(&texts, "the cat sat\n").unwrap();
    for eps in [0.0, -1e-12] {
        let m = model_with(root, &format!("eps{eps}"), |m| {
            edit_json(&m.join("config.json"), |v| v["layer_norm_eps"] = eps.into())
        });
        let config = m.join("config.json");
        // embed used to write null embeddings with exit 0.
        let out = peft_hostile(
            &[
                "embed",
                "--model",
                s(&m),
                "--input",
                s(&texts),
                "--max-seq-len",
                "16",
            ],
            LIMIT,
        );
        assert_refused(
            &format!("embed with layer_norm_eps {eps}"),
            &out,
            &[s(&config), "layer_norm_eps"],
        );
        let out = train_on(&m, &data, &root.join(format!("out{eps}")), &[]);
        assert_refused(
            &format!("train with layer_norm_eps {eps}"),
            &out,
            &[s(&config), "layer_norm_eps"],
        );
    }
    let m = model_with(root, "eps-eval", |_| {});
    let out = eval_after(root, &m, |m| {
        edit_json(&m.join("config.json"), |v| v["layer_norm_eps"] = 0.into())
    });
    assert_refused(
        "eval with layer_norm_eps 0",
        &out,
        &["config.json", "layer_norm_eps"],
    );
}

#[test]
fn dropout_probabilities_outside_zero_to_one_are_refused_by_key() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let data = glue(root);
    for (key, p) in [
        ("classifier_dropout", 5.0),
        ("hidden_dropout_prob", 1.0),
        ("attention_probs_dropout_prob", -0.5),
    ] {
        let m = model_with(root, key, |m| {
            edit_json(&m.join("config.json"), |v| v[key] = p.into())
        });
        let out = train_on(&m, &data, &root.join(format!("out-{key}")), &[]);
        assert_refused(key, &out, &[s(&m.join("config.json")), key]);
    }
    // The flags were already checked; this keeps them so.
    let out = train_on(
        Path::new(&fixture("tiny-bert")),
        &data,
        &root.join("flag"),
        &["--method", "lora", "--lora-dropout", "1.5"],
    );
    assert_refused("--lora-dropout 1.5", &out, &["lora_dropout"]);
}

#[test]
fn absurd_model_sizes_are_refused_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let data = glue(root);
    for (key, value) in [
        ("hidden_size", serde_json::json!(0)),
        ("hidden_size", serde_json::json!(1u64 << 40)),
        ("num_hidden_layers", serde_json::json!(0)),
        ("num_attention_heads", serde_json::json!(0)),
        ("intermediate_size", serde_json::json!(0)),
        ("vocab_size", serde_json::json!(0)),
        ("max_position_embeddings", serde_json::json!(u64::MAX)),
        ("type_vocab_size", serde_json::json!(1u64 << 30)),
        ("pad_token_id", serde_json::json!(4000)),
    ] {
        let m = model_with(root, &format!("{key}-{value}"), |m| {
            edit_json(&m.join("config.json"), |v| v[key] = value.clone())
        });
        let out = train_on(&m, &data, &root.join(format!("out-{key}-{value}")), &[]);
        assert_refused(
            &format!("{key} = {value}"),
            &out,
            &[s(&m.join("config.json")), &format!("{key} = {value}")],
        );
    }
    // Heads that do not divide the width: named with both keys.
    let m = model_with(root, "heads", |m| {
        edit_json(&m.join("config.json"), |v| {
            v["num_attention_heads"] = 3.into()
        })
    });
    let out = train_on(&m, &data, &root.join("out-heads"), &[]);
    assert_refused(
        "heads not dividing hidden_size",
        &out,
        &["config.json", "hidden_size", "num_attention_heads 3"],
    );
}

/// A copy of the PEFT-trained LoRA fixture with `edit` applied to its adapter_config.json.
fn adapter_with(root: &Path, name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let d = root.join(name);
    std::fs::create_dir_all(&d).unwrap();
    let fx = PathBuf::from(fixture("peft-lora-trained"));
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(fx.join(f), d.join(f)).unwrap();
    }
    edit_json(&d.join("adapter_config.json"), edit);
    d
}

fn eval_adapter(adapter: &Path, data: &Path) -> Output {
    peft_hostile(
        &[
            "eval",
            "--adapter",
            s(adapter),
            "--model",
            &fixture("tiny-bert"),
            "--task",
            "rte",
            "--data-dir",
            s(data),
            "--max-seq-len",
            "16",
        ],
        LIMIT,
    )
}

#[test]
fn adapter_target_modules_that_match_no_module_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let data = glue(root);
    // PEFT: "Target modules {'foo'} not found in the base model".
    let a = adapter_with(root, "foo", |v| {
        v["target_modules"] = serde_json::json!(["foo"])
    });
    let before = snapshot(&a);
    let out = eval_adapter(&a, &data);
    assert_refused(
        "target_modules matching no module",
        &out,
        &[
            s(&a.join("adapter_config.json")),
            "target_modules",
            "foo",
            "no module",
        ],
    );
    assert_unchanged("a refused adapter", &before, &a);
    // `key` is a module of the model, but the tensors adapt query and value, which PEFT
    // would then leave unloaded.
    let a = adapter_with(root, "key", |v| {
        v["target_modules"] = serde_json::json!(["key"])
    });
    let out = eval_adapter(&a, &data);
    assert_refused(
        "target_modules naming other modules than the tensors adapt",
        &out,
        &[
            s(&a.join("adapter_config.json")),
            "target_modules",
            "attention.self.query",
        ],
    );
    let a = adapter_with(root, "drop", |v| v["lora_dropout"] = 2.0.into());
    let out = eval_adapter(&a, &data);
    assert_refused(
        "lora_dropout 2",
        &out,
        &[s(&a.join("adapter_config.json")), "lora_dropout"],
    );
    // The fixture itself, and PEFT's full module paths, still load.
    let a = adapter_with(root, "paths", |v| {
        v["target_modules"] = serde_json::json!([
            "bert.encoder.layer.0.attention.self.query",
            "bert.encoder.layer.1.attention.self.query",
            "value"
        ])
    });
    let out = eval_adapter(&a, &data);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn fisher_with_no_examples_is_refused_naming_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let data = glue(root);
    let output = root.join("fisher-out");
    std::fs::create_dir_all(&output).unwrap();
    std::fs::write(output.join("components.json"), "{}").unwrap();
    let before = snapshot(&output);
    for (flag, value) in [("--samples", "0"), ("--batch-mean", "0")] {
        let out = peft_hostile(
            &[
                "fisher",
                "--model",
                &fixture("tiny-bert"),
                "--task",
                "rte",
                "--data-dir",
                s(&data),
                "--max-seq-len",
                "16",
                "--output",
                s(&output),
                flag,
                value,
            ],
            LIMIT,
        );
        assert_refused(&format!("fisher {flag} 0"), &out, &[&format!("{flag} 0")]);
        assert_unchanged(&format!("fisher {flag} 0"), &before, &output);
    }
}
