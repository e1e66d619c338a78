//! See mod.rs. Small inputs with unbounded cost: each size is counted before anything of
//! it is built, and refused (exit 2) with a message naming where it came from and the
//! bound; nothing that was there before is touched.

use super::*;

/// What a refusal may take: the bound is checked before the work, so seconds, not the
/// minutes or the gigabytes the input asked for.
const QUICK: Duration = Duration::from_secs(60);

fn glue_dir(root: &Path) -> PathBuf {
    let data = root.join("glue");
    write_rte(&data, 16, 8);
    data
}

/// `peft train` on `model` (tiny-bert) with `data` as its GLUE or SQuAD folder.
fn train_args<'a>(
    model: &'a str,
    data: &'a Path,
    out: &'a Path,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "train",
        "--model",
        model,
        "--data-dir",
        s(data),
        "--output-dir",
        s(out),
        "--max-steps",
        "1",
    ];
    args.extend_from_slice(&SMALL);
    args.extend_from_slice(extra);
    args
}

// --- 1. a grid plan's cells are counted before they are built ---

#[test]
fn a_plan_of_ten_billion_cells_is_counted_not_built() {
    let tmp = tempfile::tempdir().unwrap();
    let plan = tmp.path().join("plan.toml");
    let mut text = format!(
        "output_dir = \"{}\"\n[base]\nmodel = \"m\"\ntask = \"rte\"\n[grid]\n",
        tmp.path().join("grid").display()
    );
    for key in [
        "lr",
        "seed",
        "epochs",
        "batch_size",
        "lora_r",
        "lora_alpha",
        "warmup_ratio",
        "weight_decay",
        "max_seq_len",
        "grad_accum",
    ] {
        let values: Vec<String> = (1..=10).map(|v| v.to_string()).collect();
        text.push_str(&format!("{key} = [{}]\n", values.join(", ")));
    }
    assert!(text.len() < 1_000, "a small plan: {} bytes", text.len());
    std::fs::write(&plan, &text).unwrap();
    let before = snapshot(tmp.path());
    let out = peft_hostile(&["grid", s(&plan), "--list"], QUICK);
    assert_refused(
        "10^10 cells",
        &out,
        &["plan.toml", "10000000000 cells", "100000"],
    );
    // Refused before output_dir and its grid.json were written.
    assert_unchanged("10^10 cells", &before, tmp.path());
}

// --- 2. adapter ranks are bounded by the matrices they adapt ---

#[test]
fn adapter_ranks_above_what_the_layers_allow_are_refused() {
    let model = fixture("tiny-bert");
    let tmp = tempfile::tempdir().unwrap();
    let data = glue_dir(tmp.path());
    let before = snapshot(&data);
    // tiny-bert: hidden 32, intermediate 64.
    for (what, flags, names) in [
        (
            "lora rank",
            &["--task", "rte", "--method", "lora", "--lora-r", "100000000"][..],
            &["--lora-r", "100000000", "32", "attention.self.query"][..],
        ),
        (
            "dora rank",
            &["--task", "rte", "--method", "dora", "--lora-r", "33"][..],
            &["--lora-r", "33", "32"][..],
        ),
        (
            "ina rank",
            &["--task", "rte", "--method", "ina", "--ina-r", "100000000"][..],
            &["--ina-r", "100000000", "32"][..],
        ),
        (
            "loreft rank",
            &[
                "--task",
                "rte",
                "--method",
                "loreft",
                "--loreft-r",
                "100000000",
            ][..],
            &["--loreft-r", "100000000", "hidden size 32"][..],
        ),
    ] {
        let out_dir = tmp.path().join(what.replace(' ', "-"));
        let out = peft_hostile(&train_args(&model, &data, &out_dir, flags), QUICK);
        assert_refused(what, &out, names);
    }
    assert_unchanged("ranks", &before, &data);
    // The largest rank the layers take still trains.
    let out_dir = tmp.path().join("r32");
    let flags = ["--task", "rte", "--method", "lora", "--lora-r", "32"];
    let out = peft_hostile(
        &train_args(&model, &data, &out_dir, &flags),
        Duration::from_secs(300),
    );
    assert!(out.status.success(), "lora r 32: {}", stderr(&out));
}

// --- 3. text fields are bounded before they are tokenized ---

/// A text past the bound (1,000,000 bytes) of plain words.
fn long_text(bytes: usize) -> String {
    "word ".repeat(bytes / 5 + 1)
}

#[test]
fn a_long_glue_field_or_line_is_refused_naming_file_and_line() {
    let model = fixture("tiny-bert");
    let tmp = tempfile::tempdir().unwrap();
    let data = glue_dir(tmp.path());
    let train = data.join("RTE/train.tsv");
    let mut text = std::fs::read_to_string(&train).unwrap();
    // Line 3: a field of 1.5 MB.
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    lines[2] = format!("1\t{}\tthe cat\tentailment", long_text(1_500_000));
    std::fs::write(&train, lines.join("\n") + "\n").unwrap();
    let before = snapshot(&data);
    let out = peft_hostile(
        &train_args(&model, &data, &tmp.path().join("a"), &["--task", "rte"]),
        QUICK,
    );
    assert_refused("1.5 MB field", &out, &["train.tsv:3", "field 2", "1000000"]);
    assert_unchanged("1.5 MB field", &before, &data);

    // A 50 MB single line with --max-seq-len 32: refused after reading the line's bound,
    // not tokenized whole.
    text = format!(
        "index\tsentence1\tsentence2\tlabel\n0\t{}",
        "x".repeat(50 << 20)
    );
    std::fs::write(&train, &text).unwrap();
    drop(text);
    let before = snapshot(&data);
    let out = peft_hostile(
        &train_args(&model, &data, &tmp.path().join("b"), &["--task", "rte"]),
        QUICK,
    );
    assert_refused(
        "50 MB line",
        &out,
        &["train.tsv:2", "longer than", "1000000"],
    );
    assert_unchanged("50 MB line", &before, &data);
}

#[test]
fn long_custom_texts_are_refused_in_every_format() {
    let tmp = tempfile::tempdir().unwrap();
    let long = long_text(1_200_000);
    let dev = tmp.path().join("dev.csv");
    std::fs::write(&dev, "text,label\nthe cat,a\nthe dog,b\n").unwrap();
    for (name, body, at) in [
        (
            "train.csv",
            format!("text,label\nthe cat,a\n\"{long}\",b\n"),
            "train.csv:3",
        ),
        (
            "train.tsv",
            format!("text\tlabel\n{long}\ta\nthe dog\tb\n"),
            "train.tsv:2",
        ),
        (
            "train.jsonl",
            format!(
                "{}\n{}\n",
                serde_json::json!({"text": "the cat", "label": "a"}),
                serde_json::json!({"text": long, "label": "b"})
            ),
            "train.jsonl:2",
        ),
    ] {
        let train = tmp.path().join(name);
        std::fs::write(&train, body).unwrap();
        let before = snapshot(tmp.path());
        let out = peft_hostile(
            &[
                "train",
                "--model",
                &fixture("tiny-bert"),
                "--task",
                "custom",
                "--train",
                s(&train),
                "--dev",
                s(&dev),
                "--text-columns",
                "text",
                "--label-column",
                "label",
                "--output-dir",
                s(&tmp.path().join("out").join(name)),
                "--max-seq-len",
                "32",
                "--max-steps",
                "1",
            ],
            QUICK,
        );
        assert_refused(name, &out, &[at, "`text`", "1000000"]);
        // Nothing under the data's folder changed but the refused run's own directory.
        let mut after = snapshot(tmp.path());
        after.retain(|p, _| !p.starts_with(tmp.path().join("out")));
        let mut want = before.clone();
        want.retain(|p, _| !p.starts_with(tmp.path().join("out")));
        assert_eq!(want, after, "{name}: data files changed");
        std::fs::remove_file(&train).unwrap();
    }
}

#[test]
fn a_long_squad_context_is_refused_naming_the_paragraph() {
    let model = fixture("tiny-bert");
    let tmp = tempfile::tempdir().unwrap();
    write_squad(tmp.path(), "v2.0", 8, 4);
    let train = tmp.path().join("train-v2.0.json");
    let mut file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&train).unwrap()).unwrap();
    file["data"][0]["paragraphs"][2]["context"] = long_text(1_100_000).into();
    std::fs::write(&train, file.to_string()).unwrap();
    let before = snapshot(tmp.path());
    let out_dir = tmp.path().join("run");
    let out = peft_hostile(
        &train_args(&model, tmp.path(), &out_dir, &["--task", "squad_v2"]),
        QUICK,
    );
    assert_refused(
        "1.1 MB context",
        &out,
        &[
            "train-v2.0.json",
            "data[0].paragraphs[2]",
            "the context",
            "1000000",
        ],
    );
    let mut after = snapshot(tmp.path());
    after.retain(|p, _| !p.starts_with(&out_dir));
    assert_eq!(before, after, "the SQuAD files changed");
}

#[test]
fn predict_and_embed_refuse_a_long_input_line() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input.txt");
    std::fs::write(&input, format!("the cat\n{}\n", long_text(1_100_000))).unwrap();
    let before = snapshot(tmp.path());
    let out = peft_hostile(
        &[
            "embed",
            "--model",
            &fixture("tiny-bert"),
            "--input",
            s(&input),
        ],
        QUICK,
    );
    assert_refused("embed", &out, &["input.txt:2", "text 1", "1000000"]);
    assert_unchanged("embed", &before, tmp.path());

    let run = tiny_run(tmp.path(), "run", &[]);
    let pair = tmp.path().join("pairs.txt");
    std::fs::write(
        &pair,
        format!("the cat\tthe dog\nthe cat\t{}\n", long_text(1_100_000)),
    )
    .unwrap();
    let before = snapshot(tmp.path());
    let out = peft_hostile(
        &["predict", "--checkpoint", s(&run), "--input", s(&pair)],
        QUICK,
    );
    assert_refused("predict", &out, &["pairs.txt:2", "text 2", "1000000"]);
    assert_unchanged("predict", &before, tmp.path());
}

// --- 4. bench's step shape ---

#[test]
fn bench_refuses_a_step_no_machine_holds() {
    for (batch, seq, names) in [
        (
            "100000000",
            "128",
            &["--batch 100000000", "--seq 128", "1048576"][..],
        ),
        (
            "18446744073709551615",
            "64",
            &["--batch 18446744073709551615", "1048576"][..],
        ),
    ] {
        let out = peft_hostile(
            &[
                "bench",
                "--model",
                &fixture("tiny-bert"),
                "--batch",
                batch,
                "--seq",
                seq,
                "--steps",
                "1",
            ],
            QUICK,
        );
        assert_refused("bench shape", &out, names);
    }
}

// --- 5. a pytorch_model.bin's pickle ---

/// A model folder as tiny-bert's, its weights a pytorch_model.bin whose data.pkl is
/// `pickle`, stored (torch.save writes no compression).
fn model_with_pickle(root: &Path, pickle: &[u8]) -> PathBuf {
    let dir = root.join("model");
    std::fs::create_dir_all(&dir).unwrap();
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
    ] {
        std::fs::copy(fixture_dir("tiny-bert").join(f), dir.join(f)).unwrap();
    }
    let mut zip =
        zip::ZipWriter::new(std::fs::File::create(dir.join("pytorch_model.bin")).unwrap());
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", stored).unwrap();
    std::io::Write::write_all(&mut zip, pickle).unwrap();
    zip.finish().unwrap();
    dir
}

#[test]
fn a_deeply_nested_pickle_is_refused_not_a_stack_overflow() {
    let tmp = tempfile::tempdir().unwrap();
    // 200,000 empty lists, each appended into the one below it: 200 KB, 200,000 deep.
    let n = 200_000;
    let pickle = [&[0x80, 2][..], &vec![b']'; n], &vec![b'a'; n - 1], b"."].concat();
    let model = model_with_pickle(tmp.path(), &pickle);
    let input = tmp.path().join("input.txt");
    std::fs::write(&input, "the cat\n").unwrap();
    let before = snapshot(tmp.path());
    let out = peft_hostile(
        &["embed", "--model", s(&model), "--input", s(&input)],
        QUICK,
    );
    assert_refused(
        "nested pickle",
        &out,
        &["pytorch_model.bin", "data.pkl", "1000 deep"],
    );
    assert_unchanged("nested pickle", &before, tmp.path());

    // A memo that doubles a list forty times: a few hundred bytes, 2^40 objects.
    let mut body = vec![0x80, 2, b']', b'K', 1, b'a', b'q', 0];
    for _ in 0..40 {
        body.extend_from_slice(&[b'h', 0, b'h', 0, 0x86, b'q', 0]);
    }
    body.push(b'.');
    let model = model_with_pickle(&tmp.path().join("memo"), &body);
    let out = peft_hostile(
        &["embed", "--model", s(&model), "--input", s(&input)],
        QUICK,
    );
    assert_refused(
        "memo bomb",
        &out,
        &["pytorch_model.bin", "data.pkl", "would take more"],
    );
}

// --- 6. a plot of huge values ---

#[test]
fn a_plot_of_a_metric_near_f64_max_finishes_and_says_what_it_left_out() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tiny_run(tmp.path(), "run", &[]);
    let metrics = run.join("metrics.jsonl");
    let text = std::fs::read_to_string(&metrics).unwrap();
    let mut lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!lines.is_empty());
    lines[0]["train_loss"] = 1e308.into();
    let last = lines.len() - 1;
    lines[last]["dev"]["dev"]["accuracy"] = 1e308.into();
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&metrics, text).unwrap();
    let before = snapshot(&run);
    for plot in ["out.png", "out.svg"] {
        let plot = tmp.path().join(plot);
        let out = peft_hostile(&["report", s(&run), "--plot", s(&plot)], QUICK);
        let err = stderr(&out);
        assert!(out.status.success(), "{}: {err}", plot.display());
        assert_clean_message("plot", &err);
        for name in [
            "leaves out train_loss 1e308 at step",
            "accuracy 1e308",
            "metrics.jsonl",
        ] {
            assert!(err.contains(name), "`{name}` not in: {err}");
        }
        assert!(std::fs::metadata(&plot).unwrap().len() > 0);
    }
    assert_unchanged("plot", &before, &run);
}

// --- 7. data files that are not files ---

fn mkfifo(path: &Path) {
    let st = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("run mkfifo");
    assert!(st.success(), "mkfifo {}", path.display());
}

#[test]
fn a_fifo_as_a_data_file_is_refused_not_waited_on() {
    let model = fixture("tiny-bert");
    let tmp = tempfile::tempdir().unwrap();
    // A custom training file: read for its labels, then for its examples.
    let train = tmp.path().join("train.csv");
    mkfifo(&train);
    let dev = tmp.path().join("dev.csv");
    std::fs::write(&dev, "text,label\nthe cat,a\nthe dog,b\n").unwrap();
    let before = snapshot(tmp.path());
    let out = peft_hostile(
        &[
            "train",
            "--model",
            &fixture("tiny-bert"),
            "--task",
            "custom",
            "--train",
            s(&train),
            "--dev",
            s(&dev),
            "--text-columns",
            "text",
            "--label-column",
            "label",
            "--output-dir",
            s(&tmp.path().join("out")),
        ],
        QUICK,
    );
    assert_refused(
        "custom FIFO",
        &out,
        &["train.csv", "FIFO", "read more than once"],
    );
    let mut after = snapshot(tmp.path());
    after.retain(|p, _| !p.starts_with(tmp.path().join("out")));
    assert_eq!(before, after);

    // A GLUE folder's dev.tsv, and a SQuAD file.
    let data = glue_dir(&tmp.path().join("g"));
    std::fs::remove_file(data.join("RTE/dev.tsv")).unwrap();
    mkfifo(&data.join("RTE/dev.tsv"));
    let out = peft_hostile(
        &train_args(&model, &data, &tmp.path().join("g-out"), &["--task", "rte"]),
        QUICK,
    );
    assert_refused("GLUE FIFO", &out, &["dev.tsv", "FIFO"]);
    let squad = tmp.path().join("squad");
    std::fs::create_dir_all(&squad).unwrap();
    write_squad(&squad, "v1.1", 4, 2);
    std::fs::remove_file(squad.join("train-v1.1.json")).unwrap();
    mkfifo(&squad.join("train-v1.1.json"));
    let out = peft_hostile(
        &train_args(
            &model,
            &squad,
            &tmp.path().join("s-out"),
            &["--task", "squad"],
        ),
        QUICK,
    );
    assert_refused("SQuAD FIFO", &out, &["train-v1.1.json", "FIFO"]);
}
