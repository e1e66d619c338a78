//! Every bad input a user can hand the binary: exit code 2 and one message that names the
//! culprit (file and line, key or tensor), never a panic or a backtrace.

use std::path::{Path, PathBuf};

use crate::common::*;

struct Case {
    what: &'static str,
    args: Vec<String>,
    /// Every one of these must appear in stderr.
    names: Vec<String>,
}

/// A flat copy of a run directory.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn s(x: impl AsRef<str>) -> String {
    x.as_ref().to_string()
}

fn p(x: &Path) -> String {
    x.to_string_lossy().into_owned()
}

/// `peft train` on tiny-bert with `data` and `extra`, into a fresh output directory.
fn train_args(data: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    model_args(&fixture("tiny-bert"), data, out, extra)
}

fn model_args(model: &str, data: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = vec![
        s("train"),
        s("--model"),
        s(model),
        s("--data-dir"),
        p(data),
        s("--output-dir"),
        p(out),
        s("--max-steps"),
        s("1"),
        s("--max-seq-len"),
        s("16"),
    ];
    a.extend(extra.iter().map(s));
    a
}

/// A GLUE folder with tiny RTE and STS-B files, then `edit` applied to one of them.
fn data_with(root: &Path, name: &str, edit: impl FnOnce(&Path)) -> PathBuf {
    let d = root.join(name);
    write_rte(&d, 16, 8);
    write_stsb(&d, 16, 8);
    edit(&d);
    d
}

fn rewrite(path: &Path, f: impl FnOnce(String) -> String) {
    let text = std::fs::read_to_string(path).unwrap();
    std::fs::write(path, f(text)).unwrap();
}

/// Tensors of the tiny model with one changed by `f`.
fn edit_weights(
    dir: &Path,
    f: impl FnOnce(&mut std::collections::HashMap<String, candle_core::Tensor>),
) {
    let path = dir.join("model.safetensors");
    let mut t = tensors(&path);
    f(&mut t);
    candle_core::safetensors::save(&t, &path).unwrap();
}

#[test]
fn bad_inputs_exit_2_and_name_the_culprit() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let good = data_with(root, "good", |_| {});
    let out = |n: &str| root.join("runs").join(n);
    let mut cases = Vec::new();

    // --- data ---
    let d = data_with(root, "nodev", |d| {
        std::fs::remove_file(d.join("RTE/dev.tsv")).unwrap()
    });
    cases.push(Case {
        what: "missing split file",
        args: train_args(&d, &out("a"), &["--task", "rte"]),
        names: vec![p(&d.join("RTE/dev.tsv"))],
    });
    let d = data_with(root, "fields", |d| {
        rewrite(&d.join("RTE/train.tsv"), |t| {
            t.replacen("\tentailment\n", "\tentailment\textra\n", 1)
        })
    });
    cases.push(Case {
        what: "wrong number of fields",
        args: train_args(&d, &out("b"), &["--task", "rte"]),
        names: vec![s("train.tsv:")],
    });
    let d = data_with(root, "label", |d| {
        rewrite(&d.join("RTE/train.tsv"), |t| {
            t.replacen("not_entailment", "contradiction", 1)
        })
    });
    cases.push(Case {
        what: "unknown label",
        args: train_args(&d, &out("c"), &["--task", "rte"]),
        names: vec![s("train.tsv:"), s("contradiction")],
    });
    let d = data_with(root, "empty", |d| {
        std::fs::write(d.join("RTE/train.tsv"), "").unwrap()
    });
    cases.push(Case {
        what: "empty file",
        args: train_args(&d, &out("d"), &["--task", "rte"]),
        names: vec![s("train.tsv")],
    });
    let d = data_with(root, "utf8", |d| {
        let path = d.join("RTE/train.tsv");
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.iter().position(|&b| b == b'\n').unwrap() + 3;
        bytes[at] = 0xff;
        std::fs::write(&path, bytes).unwrap();
    });
    cases.push(Case {
        what: "non-UTF-8 byte",
        args: train_args(&d, &out("e"), &["--task", "rte"]),
        names: vec![s("train.tsv:2")],
    });
    let d = data_with(root, "score", |d| {
        rewrite(&d.join("STS-B/train.tsv"), |t| {
            let mut lines: Vec<String> = t.lines().map(String::from).collect();
            let (head, _) = lines[3].rsplit_once('\t').unwrap();
            lines[3] = format!("{head}\t7.5");
            lines.join("\n") + "\n"
        })
    });
    cases.push(Case {
        what: "STS-B score out of range",
        args: train_args(&d, &out("f"), &["--task", "stsb"]),
        names: vec![s("train.tsv:4"), s("7.5")],
    });
    let d = data_with(root, "header", |d| {
        rewrite(&d.join("RTE/train.tsv"), |t| {
            t.replacen("sentence2", "hypothesis", 1)
        })
    });
    cases.push(Case {
        what: "header that does not match the task",
        args: train_args(&d, &out("g"), &["--task", "rte"]),
        names: vec![s("train.tsv"), s("sentence2")],
    });

    // --- custom data ---
    let custom = root.join("custom");
    std::fs::create_dir_all(&custom).unwrap();
    let file = |name: &str, text: &str| {
        let path = custom.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let train_csv = file("train.csv", "text,y\na b,pos\nc d,neg\ne f,pos\n");
    let custom_args = |train: &Path, dev: &Path, out: &Path, extra: &[&str]| {
        let mut a = vec![
            s("train"),
            s("--model"),
            fixture("tiny-bert"),
            s("--task"),
            s("custom"),
            s("--train"),
            p(train),
            s("--dev"),
            p(dev),
            s("--text-columns"),
            s("text"),
            s("--label-column"),
            s("y"),
            s("--output-dir"),
            p(out),
            s("--max-steps"),
            s("1"),
            s("--max-seq-len"),
            s("16"),
        ];
        a.extend(extra.iter().map(s));
        a
    };
    let f = file("columns.csv", "sentence,label\na b,pos\n");
    cases.push(Case {
        what: "custom file without the named column",
        args: custom_args(&f, &train_csv, &out("c1"), &[]),
        names: vec![p(&f), s("`text`"), s("columns present: sentence, label")],
    });
    let f = file("ragged.csv", "text,y\na b,pos\nc d,neg,extra\n");
    cases.push(Case {
        what: "custom row with too many fields",
        args: custom_args(&f, &train_csv, &out("c2"), &[]),
        names: vec![format!("{}:3", p(&f))],
    });
    let f = file("dev.csv", "text,y\na b,pos\nc d,maybe\n");
    cases.push(Case {
        what: "custom dev label not in the training file",
        args: custom_args(&train_csv, &f, &out("c3"), &[]),
        names: vec![format!("{}:3", p(&f)), s("maybe"), p(&train_csv)],
    });
    let f = file("scores.tsv", "text\ty\na b\t0.5\nc d\thigh\n");
    cases.push(Case {
        what: "custom regression label that is not a number",
        args: custom_args(&f, &f, &out("c4"), &["--problem", "regression"]),
        names: vec![format!("{}:3", p(&f)), s("`y`"), s("high")],
    });
    let f = file(
        "rows.jsonl",
        "{\"text\": \"a b\", \"y\": \"pos\"}\n{\"text\": \"a\"\n",
    );
    cases.push(Case {
        what: "custom JSON line that does not parse",
        args: custom_args(&f, &f, &out("c5"), &[]),
        names: vec![format!("{}:2", p(&f)), s("JSON")],
    });
    let f = file("data.txt", "text,y\n");
    cases.push(Case {
        what: "custom file of an unknown type",
        args: custom_args(&f, &train_csv, &out("c6"), &[]),
        names: vec![p(&f), s(".csv, .tsv or .jsonl")],
    });
    let mut a = custom_args(&train_csv, &train_csv, &out("c8"), &[]);
    let at = a.iter().position(|x| x == "--label-column").unwrap();
    a.drain(at..at + 2);
    cases.push(Case {
        what: "custom data without a label column",
        args: a,
        names: vec![s("--label-column")],
    });
    let mut a = train_args(&good, &out("c7"), &["--task", "rte"]);
    a.extend([s("--train"), p(&train_csv)]);
    cases.push(Case {
        what: "custom-data flag with a GLUE task",
        args: a,
        names: vec![s("--train"), s("--task custom")],
    });

    // --- models ---
    let m = model_with(root, "noconfig", |m| {
        std::fs::remove_file(m.join("config.json")).unwrap()
    });
    cases.push(Case {
        what: "model directory without config.json",
        args: model_args(&p(&m), &good, &out("h"), &["--task", "rte"]),
        names: vec![p(&m.join("config.json"))],
    });
    // Not a directory and not a hub id (three parts): nothing is looked up on the network.
    let m = root.join("no/such/model");
    cases.push(Case {
        what: "model path that does not exist",
        args: model_args(&p(&m), &good, &out("h2"), &["--task", "rte"]),
        names: vec![format!("{}: no such directory", p(&m))],
    });
    let m = model_with(root, "modeltype", |m| {
        rewrite(&m.join("config.json"), |t| {
            t.replace("\"model_type\": \"bert\"", "\"model_type\": \"gpt2\"")
        })
    });
    cases.push(Case {
        what: "unknown model_type",
        args: model_args(&p(&m), &good, &out("i"), &["--task", "rte"]),
        names: vec![s("config.json"), s("gpt2")],
    });
    let m = model_with(root, "missing", |m| {
        edit_weights(m, |t| {
            t.remove("bert.encoder.layer.1.attention.self.key.weight");
        })
    });
    cases.push(Case {
        what: "missing tensor",
        args: model_args(&p(&m), &good, &out("j"), &["--task", "rte"]),
        names: vec![s("encoder.layer.1.attention.self.key.weight")],
    });
    let m = model_with(root, "shape", |m| {
        edit_weights(m, |t| {
            let k = "bert.encoder.layer.0.output.dense.weight";
            let w = t[k].narrow(1, 0, 8).unwrap();
            t.insert(k.into(), w);
        })
    });
    cases.push(Case {
        what: "misshaped tensor",
        args: model_args(&p(&m), &good, &out("k"), &["--task", "rte"]),
        names: vec![s("encoder.layer.0.output.dense.weight")],
    });
    let m = model_with(root, "small-embedding", |m| {
        rewrite(&m.join("config.json"), |t| {
            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
            let n = v["vocab_size"].as_u64().unwrap();
            t.replace(
                &format!("\"vocab_size\": {n}"),
                &format!("\"vocab_size\": {}", n / 4),
            )
        });
        edit_weights(m, |t| {
            let k = "bert.embeddings.word_embeddings.weight";
            let rows = t[k].dim(0).unwrap() / 4;
            let w = t[k].narrow(0, 0, rows).unwrap();
            t.insert(k.into(), w);
        })
    });
    cases.push(Case {
        what: "tokenizer vocabulary larger than the embedding",
        args: model_args(&p(&m), &good, &out("l"), &["--task", "rte"]),
        // What the message says, not the folder's name: the largest id and the vocab_size
        // it passes.
        names: vec![
            s("the tokenizer's largest id is"),
            s("past the model's word embeddings"),
            s("vocab_size in"),
        ],
    });

    let m = model_with(root, "dtype", |m| {
        edit_weights(m, |t| {
            let k = "bert.encoder.layer.0.output.dense.bias";
            let w = t[k].to_dtype(candle_core::DType::I64).unwrap();
            t.insert(k.into(), w);
        })
    });
    cases.push(Case {
        what: "tensor of an integer dtype",
        args: model_args(&p(&m), &good, &out("k2"), &["--task", "rte"]),
        names: vec![
            p(&m.join("model.safetensors")),
            s("bert.encoder.layer.0.output.dense.bias"),
            s("dtype I64"),
        ],
    });
    // --max-seq-len beyond the position table: refused before training, not mid-run.
    let with_len = |model: &str, out: &Path, len: &str| {
        let mut a = model_args(model, &good, out, &["--task", "rte"]);
        let at = a.iter().position(|x| x == "--max-seq-len").unwrap();
        a[at + 1] = s(len);
        a
    };
    cases.push(Case {
        what: "--max-seq-len above BERT's max_position_embeddings",
        args: with_len(&fixture("tiny-bert"), &out("k3"), "65"),
        names: vec![
            s("--max-seq-len 65"),
            s("at most 64 tokens"),
            s("max_position_embeddings 64"),
        ],
    });
    // RoBERTa's positions start after the padding index: 50 rows hold 48 tokens.
    cases.push(Case {
        what: "--max-seq-len above RoBERTa's usable positions",
        args: with_len(&fixture("tiny-roberta"), &out("k4"), "49"),
        names: vec![s("--max-seq-len 49"), s("at most 48 tokens")],
    });
    let texts = root.join("texts.txt");
    std::fs::write(&texts, "a cat\n").unwrap();
    cases.push(Case {
        what: "embed: --max-seq-len above the position table",
        args: vec![
            s("embed"),
            s("--model"),
            fixture("tiny-bert"),
            s("--input"),
            p(&texts),
            s("--max-seq-len"),
            s("65"),
        ],
        names: vec![s("--max-seq-len 65"), s("at most 64 tokens")],
    });
    cases.push(Case {
        what: "bench: --seq above the position table",
        args: vec![
            s("bench"),
            s("--model"),
            fixture("tiny-bert"),
            s("--seq"),
            s("65"),
            s("--steps"),
            s("1"),
        ],
        names: vec![s("--seq 65"), s("at most 64 tokens")],
    });

    // --- flags and configs ---
    let cfg = root.join("typo.toml");
    std::fs::write(&cfg, "epochs = 2\nlearning_rate = 1e-3\n").unwrap();
    let mut a = train_args(&good, &out("m"), &["--task", "rte"]);
    a.extend([s("--config"), p(&cfg)]);
    cases.push(Case {
        what: "unknown key in a TOML config",
        args: a,
        names: vec![s("typo.toml:2"), s("`learning_rate`; did you mean `lr`?")],
    });
    for (what, extra, key) in [
        (
            "fraction outside (0, 1]",
            &["--method", "random-layernorm", "--fraction", "1.5"][..],
            "fraction",
        ),
        ("rank 0", &["--method", "lora", "--lora-r", "0"][..], "rank"),
        ("negative learning rate", &["--lr=-0.1"][..], "lr"),
        (
            "flag of another method",
            &["--method", "bitfit", "--lora-r", "4"][..],
            "--lora-r",
        ),
        ("unknown task", &["--task", "rtee"][..], "rtee"),
        (
            "LoReFT positions pyreft does not write",
            &["--method", "loreft", "--loreft-positions", "x1"][..],
            "loreft_positions",
        ),
        (
            "a LoReFT layer the model lacks",
            &["--method", "loreft", "--loreft-layers", "99"][..],
            "loreft layer `99`",
        ),
        (
            "two adapter kinds",
            &["--method", "lora+dora"][..],
            "one adapter kind at a time",
        ),
    ] {
        let mut a = train_args(&good, &out("n"), extra);
        if !extra.contains(&"--task") {
            a.extend([s("--task"), s("rte")]);
        }
        cases.push(Case {
            what,
            args: a,
            names: vec![s(key)],
        });
    }

    // --- runs and checkpoints ---
    let run = out("done");
    train(
        &fixture("tiny-bert"),
        &good,
        &run,
        &["--task", "rte", "--max-steps", "2"],
    );
    cases.push(Case {
        what: "output directory that already holds a run",
        args: train_args(&good, &run, &["--task", "rte"]),
        names: vec![p(&run), s("--overwrite")],
    });
    let m = model_with(root, "retrained", |m| {
        edit_weights(m, |t| {
            let k = "bert.pooler.dense.bias";
            let b = (&t[k] + 1.0).unwrap();
            t.insert(k.into(), b);
        })
    });
    cases.push(Case {
        what: "checkpoint of another base model",
        args: vec![s("eval"), s("--checkpoint"), p(&run), s("--model"), p(&m)],
        names: vec![s("sha256"), p(&run)],
    });
    // An RTE run directory holding an STS-B run's tensors (files copied between runs).
    let other = out("stsb");
    train(
        &fixture("tiny-bert"),
        &good,
        &other,
        &["--task", "stsb", "--max-steps", "1"],
    );
    let mixed = out("mixed");
    copy_dir(&run, &mixed);
    std::fs::copy(
        other.join("trainable.safetensors"),
        mixed.join("trainable.safetensors"),
    )
    .unwrap();
    cases.push(Case {
        what: "checkpoint of another task",
        args: vec![s("eval"), s("--checkpoint"), p(&mixed)],
        names: vec![p(&mixed.join("trainable.safetensors")), s("another task")],
    });
    cases.push(Case {
        what: "diff against another base model",
        args: vec![s("diff"), s("--checkpoint"), p(&run), s("--base"), p(&m)],
        names: vec![s("sha256"), p(&run)],
    });
    // A run file holding a tensor that is no float (an edited or foreign file).
    let ints = out("ints");
    copy_dir(&run, &ints);
    let file = ints.join("trainable.safetensors");
    let mut t = tensors(&file);
    let b = t["classifier.bias"]
        .to_dtype(candle_core::DType::I64)
        .unwrap();
    t.insert("classifier.bias".into(), b);
    candle_core::safetensors::save(&t, &file).unwrap();
    cases.push(Case {
        what: "run tensor of an integer dtype",
        args: vec![s("eval"), s("--checkpoint"), p(&ints)],
        names: vec![p(&file), s("classifier.bias"), s("dtype I64")],
    });
    cases.push(Case {
        what: "diff of a run tensor of an integer dtype",
        args: vec![
            s("diff"),
            s("--checkpoint"),
            p(&ints),
            s("--which"),
            s("best"),
        ],
        names: vec![p(&file), s("classifier.bias")],
    });
    cases.push(Case {
        what: "resume of a finished run",
        args: vec![s("train"), s("--resume"), p(&run)],
        names: vec![p(&run.join("resume.safetensors"))],
    });
    cases.push(Case {
        what: "not a run directory",
        args: vec![s("eval"), s("--checkpoint"), p(&good)],
        names: vec![p(&good.join("config.json"))],
    });

    // --- predict and report ---
    let pairs = root.join("pairs.txt");
    std::fs::write(&pairs, "a cat\ta dog\nthe red car\nx\ty\n").unwrap();
    cases.push(Case {
        what: "predict: a line without the pair task's TAB",
        args: vec![
            s("predict"),
            s("--checkpoint"),
            p(&run),
            s("--input"),
            p(&pairs),
        ],
        names: vec![format!("{}:2", p(&pairs)), s("TAB")],
    });
    let empty = root.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    cases.push(Case {
        what: "predict: an empty input",
        args: vec![
            s("predict"),
            s("--checkpoint"),
            p(&run),
            s("--input"),
            p(&empty),
        ],
        names: vec![p(&empty), s("empty")],
    });
    let nowhere = root.join("nowhere.txt");
    cases.push(Case {
        what: "predict: a missing input file",
        args: vec![
            s("predict"),
            s("--checkpoint"),
            p(&run),
            s("--input"),
            p(&nowhere),
        ],
        names: vec![p(&nowhere)],
    });
    cases.push(Case {
        what: "predict: not a run directory",
        args: vec![
            s("predict"),
            s("--checkpoint"),
            p(&good),
            s("--input"),
            p(&pairs),
        ],
        names: vec![p(&good.join("config.json"))],
    });
    cases.push(Case {
        what: "report: a folder that is not a run and holds none",
        args: vec![s("report"), p(&run), p(&good)],
        names: vec![p(&good), s("not a run directory")],
    });
    cases.push(Case {
        what: "report: an unknown format",
        args: vec![s("report"), p(&run), s("--format"), s("xml")],
        names: vec![s("xml"), s("--format")],
    });
    let jpg = root.join("plot.jpg");
    cases.push(Case {
        what: "report: a plot that is neither PNG nor SVG",
        args: vec![s("report"), p(&run), s("--plot"), p(&jpg)],
        names: vec![p(&jpg), s(".png or .svg")],
    });
    let mut a = train_args(&good, &out("seeds"), &["--task", "rte", "--seeds", "1,2"]);
    a.extend([s("--seed"), s("3")]);
    cases.push(Case {
        what: "train: --seeds with --seed",
        args: a,
        names: vec![s("--seeds"), s("--seed <SEED>")],
    });

    let mut failures = Vec::new();
    for c in &cases {
        let args: Vec<&str> = c.args.iter().map(String::as_str).collect();
        let o = peft(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        if std::env::var_os("SHOW_ERRORS").is_some() {
            eprintln!("== {}: {:?}\n{err}", c.what, o.status.code());
        }
        let missing: Vec<&String> = c
            .names
            .iter()
            .filter(|n| !err.contains(n.as_str()))
            .collect();
        if o.status.code() != Some(2) || !missing.is_empty() || err.contains("panicked") {
            failures.push(format!(
                "{}: exit {:?}, missing {missing:?} in:\n{err}",
                c.what,
                o.status.code()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
}
