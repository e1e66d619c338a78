//! LoRA's other starts (`--lora-init`, PEFT's `init_lora_weights`): PiSSA and OLoRA
//! adapters PEFT trained score here as in PEFT, which takes their start out of the base
//! weight again when it loads them; a PiSSA or OLoRA model before training is the base
//! model; a run of each is re-scored by `peft eval`, folds onto the residual with the run's
//! logits, is exported as PEFT's `save_pretrained` writes it, and refuses WiSE-FT.

use std::path::Path;

use candle_core::Device;
use peft::model::adapter::LoraInit;
use peft::model::{read_checkpoint, Ctx, Model, ParamStore};

use crate::adapters::{dir_logits, lora, merge, run_logits, scores_as_python_on};
use crate::common::*;

#[test]
fn peft_pissa_and_olora_adapters_score_as_in_python() {
    for name in ["peft-pissa-trained", "peft-olora-trained"] {
        scores_as_python_on(name, "tiny-bert");
    }
}

/// Untrained, the adapter holds exactly what it took out of each weight: the model is the
/// base model (within float error), at any scale; Gaussian starts with B = 0 as LoRA does.
#[test]
fn an_untrained_start_is_the_base_model() {
    let dir = fixture("tiny-bert");
    let (cfg, w) = read_checkpoint(Path::new(&dir)).unwrap();
    let batch = golden_batch(Path::new(&dir));
    let heads = Some(3.into());
    let base = Model::load_with_adapters(
        &ParamStore::frozen(w.clone(), Device::Cpu),
        &cfg,
        heads,
        None,
    )
    .unwrap()
    .logits(&batch, &Ctx::eval())
    .unwrap();
    for init in [LoraInit::Pissa, LoraInit::Olora, LoraInit::Gaussian] {
        let mut a = lora(4, &["query", "value", "intermediate.dense"]);
        a.init = Some(init);
        a.alpha = 3.0;
        let store = ParamStore::frozen(w.clone(), Device::Cpu);
        let got = Model::load_with_adapters(&store, &cfg, heads, Some(&a))
            .unwrap()
            .logits(&batch, &Ctx::eval())
            .unwrap();
        let d = max_abs_diff(&got, &base);
        assert!(d < 1e-5, "{init:?}: {d}");
        assert!(max_abs(&base) > 1e-3);
    }
}

#[test]
fn pissa_and_olora_runs_score_merge_and_export_as_peft() {
    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 32, 8);
    let model = fixture("tiny-bert");
    for init in ["pissa", "olora"] {
        let run = tmp.path().join(init);
        let args = [
            "--task",
            "rte",
            "--method",
            "lora",
            "--lora-init",
            init,
            "--lora-r",
            "4",
            "--lora-dropout",
            "0",
            "--max-steps",
            "3",
            "--lr",
            "1e-2",
            "--warmup-ratio",
            "0",
        ];
        train(&model, tmp.path(), &run, &args);
        let best = metrics(&run)
            .into_iter()
            .find(|r| r["best"].as_bool().unwrap())
            .unwrap()["dev"]["dev"]["accuracy"]
            .as_f64()
            .unwrap();
        assert_eq!(eval_accuracy(&run), best, "{init}: eval differs");

        // The fold is onto the residual: the merged model gives the run's logits.
        let merged = tmp.path().join(format!("{init}-merged"));
        ok(merge(&run, &merged, &[]));
        let mut cfg = lora(4, &["query", "value"]);
        (cfg.alpha, cfg.dropout, cfg.init) = (
            16.0,
            0.0,
            Some(if init == "pissa" {
                LoraInit::Pissa
            } else {
                LoraInit::Olora
            }),
        );
        let want = run_logits(&model, &run, Some(&cfg));
        let d = max_abs_diff(&dir_logits(&merged), &want);
        assert!(d <= 1e-5, "{init}: merged logits differ by {d}");
        // Without the residual (the base weight under the trained adapter) they would not.
        cfg.init = None;
        let plain = run_logits(&model, &run, Some(&cfg));
        assert!(
            max_abs_diff(&plain, &want) > 1e-3,
            "{init}: the residual changed nothing"
        );

        // PEFT's save_pretrained format: the trained A and B, the start named.
        let exported: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(run.join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(exported["init_lora_weights"], init);

        let o = merge(
            &run,
            &tmp.path().join(format!("{init}-half")),
            &["--alpha", "0.5"],
        );
        assert_eq!(o.status.code(), Some(2));
        assert!(stderr(&o).contains("WiSE-FT"), "{}", stderr(&o));
    }
}
