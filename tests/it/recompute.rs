//! `--recompute`: the layer-by-layer backward with recomputed activations gives the
//! gradients of the ordinary backward, dropout on, for every family (ELECTRA's projected
//! embeddings, DeBERTa's relative embeddings shared by all layers, XLNet's relative
//! encoding drawn once per forward, LoReFT's edits between layers, a prefix's keys rebuilt per layer), and a run with it trains to the same weights.

use std::path::Path;

use crate::common::*;
use candle_core::{Device, Tensor};
use peft::model::{read_checkpoint, AdapterConfig, AdapterKind, Ctx, Model, ParamStore};

#[test]
fn recomputed_gradients_equal_the_ordinary_backward() {
    let loreft = AdapterConfig {
        kind: AdapterKind::Loreft { first: 1, last: 1 },
        r: 2,
        alpha: 0.0,
        dropout: 0.1,
        targets: vec!["all".into()],
        rslora: false,
        init: None,
    };
    // A projected prefix: its shared first projection has a part in every layer's graph.
    let prefix = AdapterConfig {
        kind: AdapterKind::Prefix {
            tokens: 3,
            hidden: Some(8),
        },
        r: 0,
        alpha: 0.0,
        dropout: 0.0,
        targets: Vec::new(),
        rslora: false,
        init: None,
    };
    for (family, adapter) in [
        ("tiny-bert", None),
        ("tiny-roberta", Some(&prefix)),
        ("tiny-electra", None),
        ("tiny-deberta-v2", None),
        ("tiny-deberta", None),
        ("tiny-xlnet", None),
        ("tiny-bert", Some(&loreft)),
    ] {
        let dir = Path::new(&fixture(family)).to_path_buf();
        let (cfg, mut weights) = read_checkpoint(&dir).unwrap();
        peft::model::fit_head(&mut weights, 2.into());
        let store = ParamStore::new(weights, Device::Cpu, 0, Box::new(|_| true));
        let model = Model::load_with_adapters(&store, &cfg, Some(2.into()), adapter).unwrap();
        let batch = golden_batch(&dir);
        let n = batch.input_ids.dim(0).unwrap() as u32;
        let labels =
            Tensor::new((0..n).map(|i| i % 2).collect::<Vec<u32>>(), &Device::Cpu).unwrap();
        let loss_of = |logits: &Tensor| peft::loss::cross_entropy(logits, &labels);

        // Dropout on: both passes must draw the same masks.
        let ctx = Ctx::train(7);
        let plain_loss = loss_of(&model.logits(&batch, &ctx).unwrap()).unwrap();
        let plain = plain_loss.backward().unwrap();
        let calls = ctx.calls();

        let ctx = Ctx::train(7);
        let mut acc = std::collections::BTreeMap::new();
        let vars = store.vars();
        let mut collect =
            |g: &candle_core::backprop::GradStore| peft::optim::accumulate(&mut acc, &vars, g);
        let loss = model
            .backward_by_layer(&batch, &ctx, loss_of, &mut collect)
            .unwrap();
        assert_eq!(
            ctx.calls(),
            calls,
            "{family}: dropout keys not where the forward left them"
        );
        let d = max_abs_diff(&loss, &plain_loss);
        assert!(d == 0.0, "{family}: loss differs by {d}");
        assert_eq!(acc.len(), vars.len(), "{family}: gradients missing");
        for (name, var) in &vars {
            let want = plain.get(var.as_tensor()).unwrap();
            let rel = max_abs_diff(&acc[name], want) / max_abs(want).max(1e-12);
            assert!(rel < 1e-5, "{family}: gradient of {name} differs by {rel}");
        }
    }
}

/// Through the binary: a few full steps with dropout on, the same weights either way.
#[test]
fn a_run_with_recompute_trains_to_the_same_weights() {
    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 32, 8);
    let run = |name: &str, extra: &[&str]| {
        let out = tmp.path().join(name);
        let mut args = vec!["--task", "rte", "--method", "full", "--max-steps", "3"];
        args.extend_from_slice(extra);
        train(&fixture("tiny-bert"), tmp.path(), &out, &args);
        tensors(&out.join("last.safetensors"))
    };
    let plain = run("plain", &[]);
    let recomputed = run("recomputed", &["--recompute"]);
    for (k, t) in &plain {
        // The key bias moves by float noise alone (its gradient is zero but for rounding).
        if k.ends_with("key.bias") {
            continue;
        }
        let d = max_abs_diff(t, &recomputed[k]);
        assert!(d < 1e-6, "{k} differs by {d}");
    }
}
