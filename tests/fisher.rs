//! Per-example Fisher information against transformers: the golden fixtures hold the mean
//! of squared per-example gradients over the batch's first three examples.

use std::path::Path;

use candle_core::{DType, Device};
use peft::data::tasks::Label;
use peft::fisher::{estimate, Estimator, FisherOptions};
use peft::model::{read_checkpoint, Arch, Model, ParamStore};
use peft::tokenize::Encoded;
use peft::train::dataset::Dataset;

fn check(kind: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(kind);
    let (cfg, weights) = read_checkpoint(&dir).unwrap();
    let g = candle_core::safetensors::load(dir.join("golden.safetensors"), &Device::Cpu).unwrap();
    let ids = g["input_ids"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec2::<u32>()
        .unwrap();
    let types = g["token_type_ids"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec2::<u32>()
        .unwrap();
    let mask = g["attention_mask"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec2::<u32>()
        .unwrap();
    let labels = g["labels"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec1::<u32>()
        .unwrap();
    let inputs: Vec<Encoded> = (0..3)
        .map(|i| {
            let n = mask[i].iter().sum::<u32>() as usize;
            Encoded {
                ids: ids[i][..n].to_vec(),
                type_ids: types[i][..n].to_vec(),
            }
        })
        .collect();
    let data = Dataset {
        split: "train".into(),
        ids: vec!["0".into(), "1".into(), "2".into()],
        inputs,
        labels: labels[..3].iter().map(|&c| Label::Class(c)).collect(),
    };
    let store = ParamStore::new(weights, Device::Cpu, 0, Box::new(|_| true));
    let model = Model::load(&store, &cfg, Some(3)).unwrap();
    let opts = FisherOptions {
        samples: None,
        estimator: Estimator::PerExample,
        seed: 1,
    };
    let fisher = estimate(&model, &store, &data, cfg.pad_token_id, opts, &Device::Cpu).unwrap();
    let prefix = match cfg.model_type {
        Arch::Bert => "bert.",
        Arch::Roberta => "roberta.",
    };
    let mut checked = 0;
    for (name, ours) in &fisher {
        let key = if name.starts_with("classifier") {
            format!("fisher.{name}")
        } else {
            format!("fisher.{prefix}{name}")
        };
        let reference = &g[&key];
        let max = reference
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let diff = (ours - reference)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap();
        let rel = diff.to_scalar::<f32>().unwrap() / max.max(1e-10);
        assert!(
            rel < 1e-3,
            "{kind} Fisher of {name} differs by {rel} (relative)"
        );
        checked += 1;
    }
    assert_eq!(
        checked,
        g.keys().filter(|k| k.starts_with("fisher.")).count()
    );
}

#[test]
fn per_example_fisher_matches_squared_per_example_gradients() {
    check("tiny-bert");
    check("tiny-roberta");
}
