//! SQuAD through the binary: training on windows, dev scores as the official script
//! computes them, `peft eval` writing the official predictions file, `peft predict`
//! answering questions, and the data and answer errors a user can make.

use std::collections::BTreeMap;
use std::path::Path;

use crate::common::*;

/// Four steps of SQuAD 2.0 windows at 32 tokens, 8 apart.
const QA_STEPS: [&str; 10] = [
    "--task",
    "squad_v2",
    "--doc-stride",
    "8",
    "--max-steps",
    "4",
    "--lr",
    "1e-2",
    "--warmup-ratio",
    "0",
];

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The best evaluation's dev metrics as the run recorded them.
fn best_dev(out: &Path) -> BTreeMap<String, f64> {
    let m = metrics(out);
    let best = m.iter().find(|r| r["best"].as_bool().unwrap()).unwrap();
    serde_json::from_value(best["dev"]["dev"].clone()).unwrap()
}

#[test]
fn squad_v2_trains_scores_and_answers_on_every_family() {
    let tmp = tempfile::tempdir().unwrap();
    write_squad(tmp.path(), "v2.0", 24, 12);
    for family in ["tiny-bert", "tiny-roberta", "tiny-electra"] {
        let out = tmp.path().join(family);
        let mut args = QA_STEPS.to_vec();
        args.extend_from_slice(&["--method", "layernorm"]);
        train(&fixture(family), tmp.path(), &out, &args);
        let dev = best_dev(&out);
        for key in [
            "exact",
            "f1",
            "HasAns_exact",
            "HasAns_f1",
            "NoAns_exact",
            "best_f1",
            "best_f1_thresh",
        ] {
            assert!(dev.contains_key(key), "{family}: no {key} in {dev:?}");
        }
        assert_eq!(dev["total"], 12.0);
        assert_eq!(dev["HasAns_total"], 9.0);
        assert!((0.0..=1.0).contains(&dev["f1"]), "{dev:?}");

        // eval re-scores the run to the same figures and writes the official files.
        let preds = tmp.path().join(format!("{family}.json"));
        let shown = ok(peft(&[
            "eval",
            "--checkpoint",
            out.to_str().unwrap(),
            "--json",
            "--predictions",
            preds.to_str().unwrap(),
        ]));
        let v: serde_json::Value = serde_json::from_str(shown.trim()).unwrap();
        let again: BTreeMap<String, f64> = serde_json::from_value(v["metrics"].clone()).unwrap();
        assert_eq!(
            again, dev,
            "{family}: eval differs from training's evaluation"
        );
        let answers = json(&preds);
        let answers = answers.as_object().unwrap();
        assert_eq!(answers.len(), 12);
        assert!(answers.keys().all(|k| k.starts_with("dev-")));
        assert!(answers.values().all(|a| a.is_string()));
        let odds = json(&tmp.path().join(format!("{family}.json.null_odds.json")));
        assert_eq!(odds.as_object().unwrap().len(), 12);
        assert!(odds.as_object().unwrap().values().all(|v| v.is_f64()));

        // predict: one answer line per question line, with the null score difference.
        let input = tmp.path().join("questions.tsv");
        std::fs::write(
            &input,
            "cat sat ?\tthe man saw the cat sat on the red car\nwho ran ?\tthe dog ran\n",
        )
        .unwrap();
        let lines = predict_lines(&out, &input);
        let lines: Vec<&str> = lines.lines().collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        for line in lines {
            let (answer, diff) = line.rsplit_once('\t').unwrap();
            diff.parse::<f64>().unwrap();
            assert!(!answer.contains('\t'));
        }
    }
}

/// SQuAD 1.1 always answers; its official keys are exact_match and f1. The question
/// answering head is saved with the run and comes back in `peft merge`'s model.
#[test]
fn squad_v1_scores_exact_match_and_merges_a_question_answering_model() {
    let tmp = tempfile::tempdir().unwrap();
    write_squad(tmp.path(), "v1.1", 24, 8);
    let out = tmp.path().join("run");
    // The default stride (half the window here) is what `eval --model` uses too.
    let mut args = QA_STEPS.to_vec();
    args.drain(..4);
    args.extend_from_slice(&["--task", "squad", "--method", "lora"]);
    train(&fixture("tiny-bert"), tmp.path(), &out, &args);
    let dev = best_dev(&out);
    assert_eq!(
        dev.keys().collect::<Vec<_>>(),
        ["exact_match", "f1"],
        "{dev:?}"
    );
    let adapter = json(&out.join("adapter_config.json"));
    assert_eq!(adapter["task_type"], "QUESTION_ANS");
    assert_eq!(
        adapter["modules_to_save"],
        serde_json::json!(["qa_outputs"])
    );
    let merged = tmp.path().join("merged");
    ok(peft(&[
        "merge",
        "--checkpoint",
        out.to_str().unwrap(),
        "--output",
        merged.to_str().unwrap(),
    ]));
    let cfg = json(&merged.join("config.json"));
    assert_eq!(
        cfg["architectures"],
        serde_json::json!(["BertForQuestionAnswering"])
    );
    // The merged checkpoint scores the same, read as a model trained elsewhere.
    let shown = ok(peft(&[
        "eval",
        "--model",
        merged.to_str().unwrap(),
        "--task",
        "squad",
        "--data-dir",
        tmp.path().to_str().unwrap(),
        "--max-seq-len",
        "32",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(shown.trim()).unwrap();
    let merged: BTreeMap<String, f64> = serde_json::from_value(v["metrics"].clone()).unwrap();
    assert_eq!(merged, dev, "the merged model answers as the run did");
}

#[test]
fn squad_input_errors_name_the_file_and_question() {
    let tmp = tempfile::tempdir().unwrap();
    // A 2.0 file (unanswerable questions) read as 1.1.
    write_squad(tmp.path(), "v2.0", 8, 4);
    let train_file = tmp.path().join("train-v2.0.json");
    let dev_file = tmp.path().join("dev-v2.0.json");
    let out = tmp.path().join("run");
    let base = [
        "train",
        "--model",
        &fixture("tiny-bert"),
        "--output-dir",
        out.to_str().unwrap(),
        "--max-seq-len",
        "32",
        "--max-steps",
        "1",
    ];
    let run = |extra: &[&str]| {
        let mut a = base.to_vec();
        a.extend_from_slice(extra);
        peft(&a)
    };
    let o = run(&[
        "--task",
        "squad",
        "--train",
        train_file.to_str().unwrap(),
        "--dev",
        dev_file.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("train-v2.0.json") && e.contains("train-3") && e.contains("--task squad_v2"),
        "{e}"
    );
    // --train without --dev, and column flags that belong to custom data.
    let o = run(&[
        "--task",
        "squad_v2",
        "--train",
        train_file.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("both --train FILE and --dev FILE"),
        "{}",
        stderr(&o)
    );
    let o = run(&["--task", "squad_v2", "--label-column", "x"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--label-column applies to --task custom"));
    // SQuAD settings on a GLUE task, and a stride as long as the window.
    let o = run(&["--task", "rte", "--doc-stride", "8"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--doc-stride"), "{}", stderr(&o));
    let o = run(&[
        "--task",
        "squad_v2",
        "--data-dir",
        tmp.path().to_str().unwrap(),
        "--doc-stride",
        "32",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--doc-stride 32 must be less than --max-seq-len 32"));
    // Not SQuAD JSON: the file and line.
    std::fs::write(&dev_file, "{\"data\": [{\"paragraphs\": 3}]}").unwrap();
    let o = run(&[
        "--task",
        "squad_v2",
        "--data-dir",
        tmp.path().to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains("dev-v2.0.json: line 1"), "{e}");
}

/// SQuAD-format JSON examples as `rajpurkar/squad_v2`'s parquet holds them: `id`,
/// `title`, `context`, `question`, and `answers` a struct of two lists, written with the
/// nesting and optional fields pyarrow gives `datasets` files.
fn write_squad_parquet(json_file: &Path, parquet_file: &Path) {
    use parquet::data_type::{ByteArray, ByteArrayType, Int32Type};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use std::sync::Arc;

    let v = json(json_file);
    let mut rows = Vec::new();
    for article in v["data"].as_array().unwrap() {
        for p in article["paragraphs"].as_array().unwrap() {
            for q in p["qas"].as_array().unwrap() {
                rows.push((
                    q["id"].as_str().unwrap().to_string(),
                    article["title"].as_str().unwrap().to_string(),
                    p["context"].as_str().unwrap().to_string(),
                    q["question"].as_str().unwrap().to_string(),
                    q["answers"].as_array().unwrap().clone(),
                ));
            }
        }
    }
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
    std::fs::create_dir_all(parquet_file.parent().unwrap()).unwrap();
    let file = std::fs::File::create(parquet_file).unwrap();
    let props = Arc::new(WriterProperties::builder().build());
    let mut w = SerializedFileWriter::new(file, schema, props).unwrap();
    let mut rg = w.next_row_group().unwrap();
    for col in 0..4 {
        let data: Vec<ByteArray> = rows
            .iter()
            .map(|r| ByteArray::from([&r.0, &r.1, &r.2, &r.3][col].as_str()))
            .collect();
        let mut cw = rg.next_column().unwrap().unwrap();
        cw.typed::<ByteArrayType>()
            .write_batch(&data, Some(&vec![1; rows.len()]), None)
            .unwrap();
        cw.close().unwrap();
    }
    // A list's levels: definition 4 for an element, 2 for an empty list; repetition 1 for
    // every element after a row's first.
    let levels = || {
        let (mut def, mut rep) = (Vec::new(), Vec::new());
        for r in &rows {
            if r.4.is_empty() {
                def.push(2);
                rep.push(0);
            }
            for i in 0..r.4.len() {
                def.push(4);
                rep.push(i16::from(i > 0));
            }
        }
        (def, rep)
    };
    let (def, rep) = levels();
    let texts: Vec<ByteArray> = rows
        .iter()
        .flat_map(|r| {
            r.4.iter()
                .map(|a| ByteArray::from(a["text"].as_str().unwrap()))
        })
        .collect();
    let mut cw = rg.next_column().unwrap().unwrap();
    cw.typed::<ByteArrayType>()
        .write_batch(&texts, Some(&def), Some(&rep))
        .unwrap();
    cw.close().unwrap();
    let starts: Vec<i32> = rows
        .iter()
        .flat_map(|r| {
            r.4.iter()
                .map(|a| a["answer_start"].as_i64().unwrap() as i32)
        })
        .collect();
    let mut cw = rg.next_column().unwrap().unwrap();
    cw.typed::<Int32Type>()
        .write_batch(&starts, Some(&def), Some(&rep))
        .unwrap();
    cw.close().unwrap();
    rg.close().unwrap();
    w.close().unwrap();
}

/// Without --data-dir, SQuAD comes from the hub's parquet (here a cache folder, offline):
/// the same examples as the JSON files, so the same run.
#[test]
fn squad_from_the_hub_trains_like_the_json_files() {
    let tmp = tempfile::tempdir().unwrap();
    write_squad(tmp.path(), "v2.0", 24, 12);
    let cache = tmp.path().join("cache");
    let snap = hub_snapshot(
        &cache,
        "datasets--rajpurkar--squad_v2",
        "00112233445566778899aabbccddeeff00112233",
    );
    for (split, hub) in [("train", "train"), ("dev", "validation")] {
        write_squad_parquet(
            &tmp.path().join(format!("{split}-v2.0.json")),
            &snap.join(format!("squad_v2/{hub}-00000-of-00001.parquet")),
        );
    }
    let mut args = QA_STEPS.to_vec();
    args.extend_from_slice(&["--method", "bitfit"]);
    let local = tmp.path().join("local");
    train(&fixture("tiny-bert"), tmp.path(), &local, &args);
    let hub = tmp.path().join("hub");
    let model = fixture("tiny-bert");
    let mut hub_args = vec![
        "train",
        "--model",
        &model,
        "--output-dir",
        hub.to_str().unwrap(),
    ];
    hub_args.extend_from_slice(&SMALL);
    hub_args.extend_from_slice(&args);
    let o = peft_offline(&cache, &hub_args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(best_dev(&hub), best_dev(&local));
    let (a, b) = (
        tensors(&hub.join("last.safetensors")),
        tensors(&local.join("last.safetensors")),
    );
    assert_eq!(a.len(), b.len());
    for (k, t) in &a {
        assert_eq!(bits(t), bits(&b[k]), "{k}");
    }
}
