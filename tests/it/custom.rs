//! `--task custom`: training and re-scoring on the user's own CSV, TSV and JSON Lines
//! files, for classification and regression.

use std::path::Path;

use crate::common::*;

/// Rows of (text a, text b, class label, score) from the tiny vocabulary.
fn rows(n: usize, offset: usize) -> Vec<(String, String, &'static str, f32)> {
    (0..n)
        .map(|i| {
            let a = sentence(i + offset, 3 + i % 5);
            let b = sentence(i * 3 + offset + 1, 2 + i % 3);
            let label = ["neg", "neutral", "pos"][(a.len() + b.len()) % 3];
            let score = (a.len() % 7) as f32 * 0.5;
            (a, b, label, score)
        })
        .collect()
}

/// `rows` as a file of the extension's format, label column `y` and score column `s`.
fn write(path: &Path, rows: &[(String, String, &str, f32)]) {
    let ext = path.extension().unwrap().to_str().unwrap();
    let mut text = match ext {
        "csv" => "first,second,y,s\n".to_string(),
        "tsv" => "first\tsecond\ty\ts\n".to_string(),
        _ => String::new(),
    };
    for (a, b, y, s) in rows {
        text += &match ext {
            // A quoted comma and quote, which CSV must keep inside the field.
            "csv" => format!("\"{a}, \"\"x\"\"\",{b},{y},{s}\n"),
            "tsv" => format!("{a}\t{b}\t{y}\t{s}\n"),
            _ => format!(
                "{}\n",
                serde_json::json!({"first": a, "second": b, "y": y, "s": s})
            ),
        };
    }
    std::fs::write(path, text).unwrap();
}

fn train_custom(dir: &Path, ext: &str, problem: &str, texts: &str) -> std::path::PathBuf {
    let (train, dev) = (
        dir.join(format!("train.{ext}")),
        dir.join(format!("dev.{ext}")),
    );
    write(&train, &rows(48, 0));
    write(&dev, &rows(16, 500));
    let out = dir.join(format!("run-{ext}-{problem}"));
    let label = if problem == "regression" { "s" } else { "y" };
    ok(peft(&[
        "train",
        "--model",
        &fixture("tiny-bert"),
        "--task",
        "custom",
        "--train",
        train.to_str().unwrap(),
        "--dev",
        dev.to_str().unwrap(),
        "--text-columns",
        texts,
        "--label-column",
        label,
        "--problem",
        problem,
        "--output-dir",
        out.to_str().unwrap(),
        "--batch-size",
        "8",
        "--max-seq-len",
        "32",
        "--max-steps",
        "4",
        "--method",
        "layernorm",
    ]));
    out
}

/// What `peft eval` prints for the run's dev file, as JSON.
fn eval_dev(run: &Path) -> serde_json::Value {
    let out = ok(peft(&[
        "eval",
        "--checkpoint",
        run.to_str().unwrap(),
        "--which",
        "last",
        "--json",
    ]));
    serde_json::from_str(out.trim()).unwrap()
}

#[test]
fn classification_from_csv_tsv_and_jsonl() {
    let tmp = tempfile::tempdir().unwrap();
    for (ext, texts) in [
        ("csv", "first,second"),
        ("tsv", "first"),
        ("jsonl", "first,second"),
    ] {
        let run = train_custom(tmp.path(), ext, "classification", texts);
        let info: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run.join("config.json")).unwrap()).unwrap();
        assert_eq!(
            info["labels"],
            serde_json::json!(["neg", "neutral", "pos"]),
            "{ext}"
        );
        assert_eq!(info["num_labels"], 3);
        assert_eq!(info["train"]["data"]["task"], "custom");
        let last = metrics(&run).pop().unwrap();
        let dev = &last["dev"]["dev"];
        assert!(
            dev["accuracy"].is_number() && dev["macro_f1"].is_number(),
            "{dev}"
        );
        // The run re-scores to the same numbers from its saved labels and files.
        let scored = eval_dev(&run);
        assert_eq!(scored["split"], "dev");
        assert_eq!(&scored["metrics"], dev, "{ext}");
    }
    // merge names the head's classes after the custom labels.
    let merged = tmp.path().join("merged");
    ok(peft(&[
        "merge",
        "--checkpoint",
        tmp.path().join("run-csv-classification").to_str().unwrap(),
        "--output",
        merged.to_str().unwrap(),
    ]));
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(merged.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        cfg["id2label"],
        serde_json::json!({"0": "neg", "1": "neutral", "2": "pos"})
    );
}

#[test]
fn regression_from_tsv_and_jsonl() {
    let tmp = tempfile::tempdir().unwrap();
    for ext in ["tsv", "jsonl"] {
        let run = train_custom(tmp.path(), ext, "regression", "first,second");
        let info: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run.join("config.json")).unwrap()).unwrap();
        assert!(info["labels"].is_null(), "{info}");
        assert_eq!(info["num_labels"], 1);
        let last = metrics(&run).pop().unwrap();
        let dev = &last["dev"]["dev"];
        assert!(
            dev["pearson"].is_number() && dev["spearman"].is_number(),
            "{dev}"
        );
        assert_eq!(&eval_dev(&run)["metrics"], dev, "{ext}");
    }
}

/// `peft predict` on the dev file's texts of a run, one line each (a TAB between a pair's).
fn predict_dev(
    run: &Path,
    dir: &Path,
    texts: &[(String, String, &str, f32)],
    pairs: bool,
) -> Vec<String> {
    let input = dir.join("dev-texts.txt");
    let lines: String = texts
        .iter()
        .map(|(a, b, ..)| {
            if pairs {
                format!("{a}\t{b}\n")
            } else {
                format!("{a}\n")
            }
        })
        .collect();
    std::fs::write(&input, lines).unwrap();
    ok(peft(&[
        "predict",
        "--checkpoint",
        run.to_str().unwrap(),
        "--which",
        "last",
        "--input",
        input.to_str().unwrap(),
    ]))
    .lines()
    .map(String::from)
    .collect()
}

/// A custom task trained on two text columns takes `a<TAB>b` lines, and labels them as
/// `peft eval` scores the same examples: predict's labels give eval's dev metrics.
#[test]
fn predict_takes_pairs_for_a_custom_pair_task_as_eval_scores_them() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = rows(16, 500);

    let run = train_custom(tmp.path(), "tsv", "classification", "first,second");
    let labels = ["neg", "neutral", "pos"];
    let id = |l: &str| labels.iter().position(|x| *x == l).unwrap() as u32;
    let got = predict_dev(&run, tmp.path(), &dev, true);
    assert_eq!(got.len(), dev.len());
    let pred: Vec<u32> = got
        .iter()
        .map(|l| id(l.split('\t').next().unwrap()))
        .collect();
    let gold: Vec<u32> = dev.iter().map(|r| id(r.2)).collect();
    let scored = eval_dev(&run);
    let metric = |k: &str| scored["metrics"][k].as_f64().unwrap();
    assert!((metric("accuracy") - peft::metrics::accuracy(&pred, &gold)).abs() < 1e-12);
    assert!((metric("macro_f1") - peft::metrics::macro_f1(&pred, &gold)).abs() < 1e-12);
    // A line with one text is refused for the pair task, naming file and line.
    let input = tmp.path().join("single.txt");
    std::fs::write(&input, "the cat\tsat\nthe dog\n").unwrap();
    let out = peft(&[
        "predict",
        "--checkpoint",
        run.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("single.txt:2") && err.contains("TAB"), "{err}");

    // Regression on pairs: the scores give eval's Pearson correlation (to the printed
    // six decimals).
    let run = train_custom(tmp.path(), "jsonl", "regression", "first,second");
    let got = predict_dev(&run, tmp.path(), &dev, true);
    let pred: Vec<f64> = got.iter().map(|l| l.parse().unwrap()).collect();
    let gold: Vec<f64> = dev.iter().map(|r| f64::from(r.3)).collect();
    let pearson = eval_dev(&run)["metrics"]["pearson"].as_f64().unwrap();
    let ours = peft::metrics::pearson(&pred, &gold);
    assert!(
        (pearson - ours).abs() < 1e-4,
        "eval {pearson}, predict {ours}"
    );
}

/// A custom task trained on one text column still refuses a line with a TAB.
#[test]
fn predict_refuses_pairs_for_a_single_text_custom_task() {
    let tmp = tempfile::tempdir().unwrap();
    let run = train_custom(tmp.path(), "tsv", "classification", "first");
    let dev = rows(16, 500);
    assert_eq!(predict_dev(&run, tmp.path(), &dev, false).len(), dev.len());
    let input = tmp.path().join("pairs.txt");
    std::fs::write(&input, "the cat\tsat\n").unwrap();
    let out = peft(&[
        "predict",
        "--checkpoint",
        run.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("pairs.txt:1") && err.contains("one text"),
        "{err}"
    );
}
