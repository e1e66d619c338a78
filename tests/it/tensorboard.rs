//! `--report-to tensorboard`: event files in RUN/tensorboard/ whose records all pass their
//! CRCs (read back by `peft::run::tensorboard`, the same framing TensorBoard's reader
//! checks; `scripts/tensorboard_check.py` reads a run with TensorBoard itself), holding
//! every evaluation of metrics.jsonl at its step and the training scalars every
//! `--logging-steps`; none without the flag; an unknown tracker refused by name.

use crate::common::*;
use peft::run::tensorboard::read_scalars;

#[test]
fn tensorboard_events_hold_what_metrics_jsonl_holds() {
    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 32, 8);
    let out = tmp.path().join("tb");
    let args = [
        "--task",
        "rte",
        "--max-steps",
        "8",
        "--eval-steps",
        "4",
        "--logging-steps",
        "2",
        "--report-to",
        "jsonl,tensorboard",
    ];
    train(&fixture("tiny-bert"), tmp.path(), &out, &args);
    let files: Vec<_> = std::fs::read_dir(out.join("tensorboard"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("events.out.tfevents."), "{name}");
    let scalars = read_scalars(&files[0]).unwrap();
    let at = |tag: &str| -> Vec<(i64, f32)> {
        scalars
            .iter()
            .filter(|(_, t, _)| t == tag)
            .map(|(s, _, v)| (*s, *v))
            .collect()
    };
    let evals: Vec<(i64, f32)> = metrics(&out)
        .iter()
        .map(|r| {
            let step = r["step"].as_i64().unwrap();
            (step, r["dev"]["dev"]["accuracy"].as_f64().unwrap() as f32)
        })
        .collect();
    assert_eq!(at("eval/dev/accuracy"), evals);
    for tag in [
        "train/loss",
        "train/learning_rate",
        "train/grad_norm",
        "train/tokens_per_s",
    ] {
        let steps: Vec<i64> = at(tag).iter().map(|(s, _)| *s).collect();
        assert_eq!(steps, vec![2, 4, 6, 8], "{tag}");
    }
    assert!(at("train/loss")
        .iter()
        .all(|(_, v)| v.is_finite() && *v > 0.0));

    // Without the flag: metrics.jsonl only.
    let plain = tmp.path().join("plain");
    train(
        &fixture("tiny-bert"),
        tmp.path(),
        &plain,
        &["--task", "rte", "--max-steps", "2"],
    );
    assert!(!plain.join("tensorboard").exists());
    let o = peft(&[
        "train",
        "--model",
        &fixture("tiny-bert"),
        "--data-dir",
        tmp.path().to_str().unwrap(),
        "--task",
        "rte",
        "--report-to",
        "wandb",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("wandb"), "{}", stderr(&o));
}
