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
        let tiny = fixture("tiny-bert");
        let before = snapshot(tmp.path());
        let out = peft_hostile(
            &custom_train_args(
                &tiny,
                &train,
                &dev,
                &tmp.path().join("out").join(name),
                &["--max-seq-len", "32", "--max-steps", "1"],
            ),
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
    let tiny = fixture("tiny-bert");
    let before = snapshot(tmp.path());
    let out = peft_hostile(
        &custom_train_args(&tiny, &train, &dev, &tmp.path().join("out"), &[]),
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

// --- 8. what a small file asks to be copied: hub texts, SQuAD contexts, labels, inputs ---

const GLUE_SHA: &str = "fedcba9876543210fedcba9876543210fedcba98";
const SQUAD_SHA: &str = "00112233445566778899aabbccddeeff00112233";

/// `rows` unanswerable questions as `rajpurkar/squad_v2`'s parquet holds them (the nesting
/// of tests/it/squad.rs), every one about `context`: stored once (one dictionary entry)
/// and shared in memory here, as a small file can repeat it in every row.
fn squad_parquet(path: &Path, context: &str, rows: usize) {
    use parquet::data_type::{ByteArray, ByteArrayType, Int32Type};
    use parquet::file::properties::{EnabledStatistics, WriterProperties};
    use parquet::file::writer::SerializedFileWriter;
    use std::sync::Arc;

    let schema = "message schema {
        OPTIONAL BYTE_ARRAY id (STRING);
        OPTIONAL BYTE_ARRAY title (STRING);
        OPTIONAL BYTE_ARRAY context (STRING);
        OPTIONAL BYTE_ARRAY question (STRING);
        OPTIONAL group answers {
            OPTIONAL group text (LIST) { REPEATED group list { OPTIONAL BYTE_ARRAY element (STRING); } }
            OPTIONAL group answer_start (LIST) { REPEATED group list { OPTIONAL INT32 element; } }
        }
    }";
    let schema = Arc::new(parquet::schema::parser::parse_message_type(schema).unwrap());
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let props = WriterProperties::builder()
        .set_statistics_enabled(EnabledStatistics::None)
        .build();
    let file = std::fs::File::create(path).unwrap();
    let mut w = SerializedFileWriter::new(file, schema, Arc::new(props)).unwrap();
    let mut rg = w.next_row_group().unwrap();
    let strings: [Vec<ByteArray>; 4] = [
        (0..rows).map(|i| format!("q{i}").as_str().into()).collect(),
        vec!["tiny".into(); rows],
        vec![ByteArray::from(context); rows],
        (0..rows)
            .map(|i| format!("what is {i} ?").as_str().into())
            .collect(),
    ];
    for data in &strings {
        let mut cw = rg.next_column().unwrap().unwrap();
        cw.typed::<ByteArrayType>()
            .write_batch(data, Some(&vec![1; rows]), None)
            .unwrap();
        cw.close().unwrap();
    }
    // Empty answer lists: definition level 2, no values.
    let (def, rep) = (vec![2; rows], vec![0; rows]);
    let mut cw = rg.next_column().unwrap().unwrap();
    cw.typed::<ByteArrayType>()
        .write_batch(&[], Some(&def), Some(&rep))
        .unwrap();
    cw.close().unwrap();
    let mut cw = rg.next_column().unwrap().unwrap();
    cw.typed::<Int32Type>()
        .write_batch(&[], Some(&def), Some(&rep))
        .unwrap();
    cw.close().unwrap();
    rg.close().unwrap();
    w.close().unwrap();
}

#[test]
fn a_long_text_in_a_hub_parquet_file_is_refused_naming_file_row_and_column() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let glue = hub_snapshot(&cache, "datasets--nyu-mll--glue", GLUE_SHA);
    let long = long_text(1_100_000);
    let texts = |second: &str| {
        Col::Str(vec![
            "the cat".into(),
            second.into(),
            "a dog".into(),
            "the end".into(),
        ])
    };
    write_parquet(
        &glue.join("rte/train-00000-of-00001.parquet"),
        &[
            ("sentence1", texts("the dog")),
            ("sentence2", texts(&long)),
            ("label", Col::I64(vec![0, 1, 0, 1])),
            ("idx", Col::I32(vec![0, 1, 2, 3])),
        ],
        None,
    );
    let squad = hub_snapshot(&cache, "datasets--rajpurkar--squad_v2", SQUAD_SHA);
    squad_parquet(
        &squad.join("squad_v2/train-00000-of-00001.parquet"),
        &long,
        1,
    );
    let before = snapshot(&cache);
    let model = fixture("tiny-bert");
    for (task, names) in [
        (
            "rte",
            &[
                "rte/train-00000-of-00001.parquet",
                "row 2",
                "column `sentence2`",
                "1000000",
            ][..],
        ),
        (
            "squad_v2",
            &[
                "squad_v2/train-00000-of-00001.parquet",
                "row 1",
                "column `context`",
                "1000000",
            ][..],
        ),
    ] {
        let out_dir = tmp.path().join(task);
        let mut args = vec![
            "train",
            "--model",
            model.as_str(),
            "--task",
            task,
            "--output-dir",
            s(&out_dir),
            "--max-steps",
            "1",
        ];
        args.extend_from_slice(&SMALL);
        let out = peft_hostile_offline(&cache, &args, QUICK);
        assert_refused(task, &out, names);
    }
    assert_unchanged("hub texts", &before, &cache);
}

#[test]
fn a_squad_context_asked_many_questions_is_refused_before_it_is_copied() {
    let model = fixture("tiny-bert");
    let tmp = tempfile::tempdir().unwrap();
    // One context of 1,000,000 bytes (the most a text may hold) asked 1,100 questions: a
    // file of 1.1 MB whose questions would carry 1.1 GB of context, past the 1 GiB bound.
    let context = "word ".repeat(200_000);
    let n = 1_100;
    let data = tmp.path().join("json");
    std::fs::create_dir_all(&data).unwrap();
    write_squad(&data, "v2.0", 4, 2);
    let qas: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            serde_json::json!({
                "id": format!("q{i}"),
                "question": format!("what is {i} ?"),
                "answers": [],
                "is_impossible": true,
            })
        })
        .collect();
    let file = serde_json::json!({
        "version": "v2.0",
        "data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}],
    });
    std::fs::write(data.join("train-v2.0.json"), file.to_string()).unwrap();
    let before = snapshot(&data);
    let out = peft_hostile(
        &train_args(
            &model,
            &data,
            &tmp.path().join("json-run"),
            &["--task", "squad_v2"],
        ),
        QUICK,
    );
    assert_refused(
        "JSON",
        &out,
        &[
            "train-v2.0.json",
            "data[0].paragraphs[0] (1100 questions)",
            "1073741824",
        ],
    );
    assert_unchanged("JSON", &before, &data);

    // The hub's parquet repeats the context in every row: refused at the row that passes
    // the bound (1,074 rows of 1 MB), before the rest are read.
    let cache = tmp.path().join("hub");
    let snap = hub_snapshot(&cache, "datasets--rajpurkar--squad_v2", SQUAD_SHA);
    squad_parquet(
        &snap.join("squad_v2/train-00000-of-00001.parquet"),
        &context,
        n,
    );
    let parquet = snap.join("squad_v2/train-00000-of-00001.parquet");
    assert!(std::fs::metadata(&parquet).unwrap().len() < 2_000_000);
    let before = snapshot(&cache);
    let out_dir = tmp.path().join("hub-run");
    let mut args = vec![
        "train",
        "--model",
        model.as_str(),
        "--task",
        "squad_v2",
        "--output-dir",
        s(&out_dir),
        "--max-steps",
        "1",
    ];
    args.extend_from_slice(&SMALL);
    let out = peft_hostile_offline(&cache, &args, QUICK);
    assert_refused(
        "parquet",
        &out,
        &[
            "squad_v2/train-00000-of-00001.parquet: row 1074",
            "1073741824",
        ],
    );
    assert_unchanged("parquet", &before, &cache);
}

#[test]
fn a_custom_file_of_more_than_ten_thousand_labels_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    // 10,001 rows, each its own label: 150 KB asking for a 10,001-row head.
    let rows: String = (0..10_001).map(|i| format!("the cat,c{i}\n")).collect();
    let train = tmp.path().join("train.csv");
    std::fs::write(&train, format!("text,label\n{rows}")).unwrap();
    let dev = tmp.path().join("dev.csv");
    std::fs::write(&dev, "text,label\nthe cat,c0\nthe dog,c1\n").unwrap();
    let tiny = fixture("tiny-bert");
    let before = snapshot(tmp.path());
    let out_dir = tmp.path().join("out");
    let out = peft_hostile(
        &custom_train_args(&tiny, &train, &dev, &out_dir, &["--max-steps", "1"]),
        QUICK,
    );
    assert_refused(
        "10,001 labels",
        &out,
        &[
            "train.csv",
            "column `label`",
            "10001 distinct labels",
            "at most 10000",
        ],
    );
    let mut after = snapshot(tmp.path());
    after.retain(|p, _| !p.starts_with(&out_dir));
    assert_eq!(before, after, "the data files changed");
}

#[test]
fn predict_and_embed_stream_their_input_and_check_it_all_first() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tiny_run(tmp.path(), "run", &[]);
    // More lines than a chunk holds (8,192), the last one bad: refused naming it before
    // anything is written (predict checks before it loads the model).
    let n = 8_300;
    let pairs: Vec<String> = (0..n)
        .map(|i| format!("{}\t{}", sentence(i, 3 + i % 5), sentence(i + 1, 2 + i % 3)))
        .collect();
    let input = tmp.path().join("pairs.txt");
    std::fs::write(&input, format!("{}\nx\ty\tz\n", pairs.join("\n"))).unwrap();
    let written = tmp.path().join("out.tsv");
    let before = snapshot(tmp.path());
    let model = fixture("tiny-bert");
    let predict = [
        "predict",
        "--checkpoint",
        s(&run),
        "--input",
        s(&input),
        "--output",
        s(&written),
    ];
    let out = peft_hostile(&predict, QUICK);
    assert_refused(
        "predict",
        &out,
        &[&format!("pairs.txt:{}", n + 1), "3 fields"],
    );
    let embed = [
        "embed",
        "--model",
        model.as_str(),
        "--input",
        s(&input),
        "--max-seq-len",
        "32",
        "--output",
        s(&written),
    ];
    let out = peft_hostile(&embed, QUICK);
    assert_refused(
        "embed",
        &out,
        &[&format!("pairs.txt:{}", n + 1), "more than one TAB"],
    );
    assert_unchanged("bad last line", &before, tmp.path());

    // Whole, the lines come back in order across the chunks: one output line each, the
    // first and last as each alone gives them.
    std::fs::write(&input, pairs.join("\n") + "\n").unwrap();
    let alone = tmp.path().join("alone.txt");
    let limit = Duration::from_secs(300);
    for (cmd, args) in [("predict", &predict[..]), ("embed", &embed[..])] {
        let out = peft_hostile(args, limit);
        assert!(out.status.success(), "{cmd}: {}", stderr(&out));
        let all = std::fs::read_to_string(&written).unwrap();
        let all: Vec<&str> = all.lines().collect();
        assert_eq!(all.len(), n, "{cmd}");
        for i in [0, n - 1] {
            std::fs::write(&alone, format!("{}\n", pairs[i])).unwrap();
            let mut one = args.to_vec();
            one[4] = s(&alone);
            let out = peft_hostile(&one, limit);
            assert!(out.status.success(), "{cmd}: {}", stderr(&out));
            let got = std::fs::read_to_string(&written).unwrap();
            if cmd == "predict" {
                // The label, and its probability to the last digit or two (alone, the line
                // is batched with other padding).
                let split = |l: &str| -> (String, f64) {
                    let (label, p) = l.split_once('\t').unwrap();
                    (label.to_string(), p.parse().unwrap())
                };
                let ((a, p), (b, q)) = (split(got.trim_end()), split(all[i]));
                assert_eq!(a, b, "{cmd} line {}", i + 1);
                assert!((p - q).abs() < 1e-5, "{cmd} line {}: {p} vs {q}", i + 1);
            } else {
                let v = |l: &str| -> Vec<f64> {
                    let j: serde_json::Value = serde_json::from_str(l).unwrap();
                    j["embedding"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_f64().unwrap())
                        .collect()
                };
                let (a, b) = (v(got.trim_end()), v(all[i]));
                assert_eq!(a.len(), b.len());
                let worst = a
                    .iter()
                    .zip(&b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0, f64::max);
                assert!(worst < 1e-5, "{cmd} line {}: differs by {worst}", i + 1);
            }
        }
    }
}
