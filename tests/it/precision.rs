//! `--precision bf16`: the products in bf16 with f32 weights, gradients and optimizer state.
//! The CPU runs the same code path as CUDA up to the backend's matmul (candle's CPU
//! matmul widens bf16 to f32 and rounds the product back, as tensor cores accumulate), so
//! these checks hold on any machine; `scripts/gpu_check.sh` repeats the long one on a GPU.

use crate::common::*;

/// Each logged training loss of a bf16 run, against the f32 run's.
fn train_losses(out: &std::path::Path) -> Vec<f64> {
    metrics(out)
        .iter()
        .filter_map(|r| r["train_loss"].as_f64())
        .collect()
}

#[test]
fn a_bf16_run_trains_near_the_f32_run_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 32, 8);
    let run = |p: &str| {
        let out = tmp.path().join(p);
        let args = [
            "--task",
            "rte",
            "--method",
            "full",
            "--max-steps",
            "4",
            "--eval-steps",
            "2",
            "--precision",
            p,
        ];
        train(&fixture("tiny-bert"), tmp.path(), &out, &args);
        out
    };
    let (f32_run, bf16_run) = (run("f32"), run("bf16"));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bf16_run.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["train"]["model"]["precision"], "bf16");
    let (a, b) = (train_losses(&f32_run), train_losses(&bf16_run));
    assert_eq!(a.len(), 2);
    // Not the f32 run (the products really were rounded), but near it.
    assert_ne!(a, b);
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() / x < 0.01, "f32 {a:?} against bf16 {b:?}");
    }
    // The weights stay f32, and a bf16 run re-scores to its own best evaluation, as any
    // other run does.
    let w = tensors(&bf16_run.join("last.safetensors"));
    assert!(w.values().all(|t| t.dtype() == candle_core::DType::F32));
    let best = metrics(&bf16_run)
        .into_iter()
        .find(|r| r["best"].as_bool().unwrap())
        .unwrap()["dev"]["dev"]["accuracy"]
        .as_f64()
        .unwrap();
    assert_eq!(eval_accuracy(&bf16_run), best);
}

/// Gated on PEFT_MINILM_DIR and PEFT_GLUE_DIR: 200 steps of full fine-tuning of the real
/// all-MiniLM-L6-v2 on SST-2, in f32 and in bf16: every logged loss within 1%, and the loss
/// falls (a comparison of two runs that learn nothing would say little).
#[test]
fn bf16_losses_stay_within_a_percent_of_f32_over_200_steps_on_minilm() {
    let (Some(model), Some(glue)) = (data_dir("PEFT_MINILM_DIR"), data_dir("PEFT_GLUE_DIR")) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // SST-2's first 2,000 training sentences (200 steps of 8 take 1,600) and 64 of dev:
    // the logged losses are the training loss, and scoring all 872 four times per run
    // would cost more than the training.
    let data = tmp.path().join("glue");
    std::fs::create_dir_all(data.join("SST-2")).unwrap();
    for (file, lines) in [("train.tsv", 2001), ("dev.tsv", 65)] {
        let text = std::fs::read_to_string(glue.join("SST-2").join(file)).unwrap();
        let head: Vec<&str> = text.lines().take(lines).collect();
        std::fs::write(data.join("SST-2").join(file), head.join("\n") + "\n").unwrap();
    }
    let run = |p: &str| {
        let out = tmp.path().join(p);
        let args = [
            "--task",
            "sst2",
            "--method",
            "full",
            "--max-steps",
            "200",
            "--eval-steps",
            "50",
            "--lr",
            "5e-5",
            "--precision",
            p,
        ];
        train(model.to_str().unwrap(), &data, &out, &args);
        train_losses(&out)
    };
    let (a, b) = (run("f32"), run("bf16"));
    eprintln!("train losses, f32 {a:?}, bf16 {b:?}");
    assert_eq!(a.len(), 4, "{a:?}");
    assert!(a[3] < a[0] - 0.05, "f32 did not learn: {a:?}");
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() / x < 0.01, "f32 {a:?} against bf16 {b:?}");
    }
}
