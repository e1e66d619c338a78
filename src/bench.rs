//! The two things `peft bench` and the criterion benchmarks time, built once and run many
//! times: a full optimizer step (forward, backward, masked AdamW) and an inference forward,
//! at a fixed shape on random token ids.

use std::collections::{BTreeMap, HashMap};

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::loss;
use crate::methods::{self, MethodSpec, Methods};
use crate::model::{Batch, Ctx, Model, ModelConfig, ParamStore, Precision};
use crate::optim::{accumulate, AdamWConfig, MaskedAdamW};
use crate::train::session::{Session, Trainable};

/// One training step of `method`, ready to repeat on the same batch.
pub struct TrainStep {
    model: Model,
    vars: BTreeMap<String, candle_core::Var>,
    opt: MaskedAdamW,
    batch: Batch,
    labels: Tensor,
    ctx: Ctx,
    /// The backward of `--recompute`: activations recomputed layer by layer.
    pub recompute: bool,
}

impl TrainStep {
    /// The same step with its products in `precision` (`--precision`).
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.ctx = Ctx::train(0).with_precision(precision);
        self
    }
}

impl TrainStep {
    /// A step of `method` (one, or a union such as `lora+layernorm`) with its default
    /// adapter, if it has one.
    pub fn new(
        cfg: &ModelConfig,
        weights: HashMap<String, Tensor>,
        method: &Methods,
        device: &Device,
        shape: (usize, usize),
    ) -> Result<Self> {
        let adapter = crate::run::setup::default_adapter(method.clone());
        Self::with_adapter(cfg, weights, method, adapter, device, shape)
    }

    /// As [`new`](Self::new), with `adapter` in place of the method's default one. The
    /// step owns `weights`: its trainable ones are copied into variables and the
    /// checkpoint's copies freed, as in training, unless the caller holds them too.
    pub fn with_adapter(
        cfg: &ModelConfig,
        weights: HashMap<String, Tensor>,
        method: &Methods,
        adapter: Option<crate::model::AdapterConfig>,
        device: &Device,
        (b, t): (usize, usize),
    ) -> Result<Self> {
        // Each method's example settings (a tenth for the subset methods, the top layer
        // for top-layers), the defaults otherwise; the Fisher-ranked ones need a Fisher
        // file and are refused by `select`.
        let spec = MethodSpec::example(method.clone(), 0)?;
        let sel = methods::select(&spec, &weights, None)?;
        let Session {
            trainable: Trainable { model, vars, .. },
            opt,
            ..
        } = Session::new(
            weights,
            (cfg, crate::model::HeadKind::Classes(2)),
            sel,
            adapter.as_ref(),
            device,
            (0, 0),
            AdamWConfig::default(),
        )?;
        let labels = Tensor::new((0..b as u32).map(|i| i % 2).collect::<Vec<_>>(), device)?;
        Ok(Self {
            model,
            vars,
            opt,
            batch: random_batch(cfg, b, t, device)?,
            labels,
            ctx: Ctx::train(0),
            recompute: false,
        })
    }

    pub fn run(&mut self) -> Result<()> {
        let mut g = BTreeMap::new();
        let vars = &self.vars;
        let mut collect =
            |grads: &candle_core::backprop::GradStore| accumulate(&mut g, vars, grads);
        let loss_of = |logits: &Tensor| loss::cross_entropy(logits, &self.labels);
        if self.recompute {
            self.model
                .backward_by_layer(&self.batch, &self.ctx, loss_of, &mut collect)?;
        } else {
            collect(&loss_of(&self.model.logits(&self.batch, &self.ctx)?)?.backward()?)?;
        }
        self.opt.step(&g, 1e-5)?;
        // A GPU step is timed to completion, not to the last launch.
        self.batch.input_ids.device().synchronize()?;
        Ok(())
    }
}

/// An inference forward with every weight frozen (no graph is recorded).
pub struct Forward {
    model: Model,
    batch: Batch,
    precision: Precision,
}

impl Forward {
    /// Takes the weights by value, as a run does: the store re-lays them (by columns, on
    /// the CPU), and a copy the caller kept would double the peak RSS it reports.
    pub fn new(
        cfg: &ModelConfig,
        weights: HashMap<String, Tensor>,
        device: &Device,
        (b, t): (usize, usize),
    ) -> Result<Self> {
        let store = ParamStore::frozen(weights, device.clone());
        Ok(Self {
            model: Model::load(&store, cfg, Some(2))?,
            batch: random_batch(cfg, b, t, device)?,
            precision: Precision::F32,
        })
    }

    /// The same forward with its products in `precision`.
    pub fn with_precision(self, precision: Precision) -> Self {
        Self { precision, ..self }
    }

    pub fn run(&self) -> Result<()> {
        // Copy to the CPU so a GPU run is timed to completion, not to the launch.
        self.model
            .logits(
                &self.batch,
                &Ctx::inference().with_precision(self.precision),
            )?
            .to_device(&Device::Cpu)?;
        Ok(())
    }
}

/// The most tokens one benchmarked step may hold. 256 sequences of 512 tokens, the
/// largest step a paper's recipe takes, are 2^17; a training step of BERT-base keeps about
/// half a megabyte of activations per token, so 2^20 tokens need some 500 GB, more than
/// any one accelerator has. A larger `--batch` × `--seq` is a typo, refused before anything
/// of that size is allocated (10^8 × 128 token ids alone are 51 GB).
pub const MAX_TOKENS: usize = 1 << 20;

/// Refuse a step shape past [`MAX_TOKENS`] (or one whose product overflows), naming the
/// flags.
pub fn check_shape(batch: usize, seq: usize) -> Result<()> {
    match batch.checked_mul(seq) {
        Some(n) if n <= MAX_TOKENS => Ok(()),
        n => Err(crate::error::user(format!(
            "--batch {batch} × --seq {seq} is {} tokens a step; a benchmarked step holds at \
             most {MAX_TOKENS} (2^20), more than any accelerator trains at once",
            n.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string())
        ))),
    }
}

fn random_batch(cfg: &ModelConfig, b: usize, t: usize, device: &Device) -> Result<Batch> {
    check_shape(b, t)?;
    let mut rng = StdRng::seed_from_u64(0);
    // Ids above the special tokens, so no position counts as padding.
    let ids: Vec<u32> = (0..b * t)
        .map(|_| rng.random_range(5..cfg.vocab_size as u32))
        .collect();
    Ok(Batch {
        input_ids: Tensor::from_vec(ids, (b, t), device)?,
        token_type_ids: Tensor::zeros((b, t), DType::U32, device)?,
        attention_mask: Tensor::ones((b, t), DType::F32, device)?,
    })
}

/// A BERT of the given size with N(0, 0.02) weights, unit LayerNorm gains and zero biases,
/// named as a checkpoint would be: speed depends on shapes only.
pub fn random_bert(
    layers: usize,
    hidden: usize,
    heads: usize,
    vocab: usize,
) -> Result<(ModelConfig, HashMap<String, Tensor>)> {
    let inter = 4 * hidden;
    let cfg = ModelConfig::parse(&format!(
        r#"{{"model_type": "bert", "vocab_size": {vocab}, "hidden_size": {hidden},
            "num_hidden_layers": {layers}, "num_attention_heads": {heads},
            "intermediate_size": {inter}, "max_position_embeddings": 512,
            "type_vocab_size": 2, "hidden_act": "gelu", "layer_norm_eps": 1e-12,
            "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
            "pad_token_id": 0}}"#
    ))
    .map_err(anyhow::Error::msg)?;
    let mut rng = StdRng::seed_from_u64(0);
    let mut w = HashMap::new();
    let mut normal = |name: String, shape: &[usize]| -> Result<()> {
        let n: usize = shape.iter().product();
        // Sum of uniforms: near-normal and cheap; the values only need to be sane.
        let v: Vec<f32> = (0..n)
            .map(|_| (0..4).map(|_| rng.random::<f32>() - 0.5).sum::<f32>() * 0.035)
            .collect();
        w.insert(name, Tensor::from_vec(v, shape, &Device::Cpu)?);
        Ok(())
    };
    let mut linears = vec![("pooler.dense".to_string(), hidden, hidden)];
    for l in 0..layers {
        let p = format!("encoder.layer.{l}");
        for (m, o, i) in [
            ("attention.self.query", hidden, hidden),
            ("attention.self.key", hidden, hidden),
            ("attention.self.value", hidden, hidden),
            ("attention.output.dense", hidden, hidden),
            ("intermediate.dense", inter, hidden),
            ("output.dense", hidden, inter),
        ] {
            linears.push((format!("{p}.{m}"), o, i));
        }
    }
    for (m, o, i) in &linears {
        normal(format!("{m}.weight"), &[*o, *i])?;
    }
    normal("embeddings.word_embeddings.weight".into(), &[vocab, hidden])?;
    normal(
        "embeddings.position_embeddings.weight".into(),
        &[512, hidden],
    )?;
    normal(
        "embeddings.token_type_embeddings.weight".into(),
        &[2, hidden],
    )?;
    let mut norms = vec!["embeddings.LayerNorm".to_string()];
    for l in 0..layers {
        norms.push(format!("encoder.layer.{l}.attention.output.LayerNorm"));
        norms.push(format!("encoder.layer.{l}.output.LayerNorm"));
    }
    for n in norms {
        w.insert(
            format!("{n}.weight"),
            Tensor::ones(hidden, DType::F32, &Device::Cpu)?,
        );
        w.insert(
            format!("{n}.bias"),
            Tensor::zeros(hidden, DType::F32, &Device::Cpu)?,
        );
    }
    for (m, o, _) in &linears {
        w.insert(
            format!("{m}.bias"),
            Tensor::zeros(*o, DType::F32, &Device::Cpu)?,
        );
    }
    Ok((cfg, w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_random_bert_trains_a_step_for_every_method() {
        let (cfg, w) = random_bert(2, 32, 4, 100).unwrap();
        for method in [
            methods::full::METHOD,
            methods::bitfit::METHOD,
            methods::layernorm::METHOD,
            methods::child_f::METHOD,
            methods::lora::METHOD,
            methods::dora::METHOD,
            methods::ia3::METHOD,
            methods::loreft::METHOD,
        ] {
            let mut step =
                TrainStep::new(&cfg, w.clone(), &method.into(), &Device::Cpu, (2, 8)).unwrap();
            step.run().unwrap();
            step.run().unwrap();
        }
        Forward::new(&cfg, w, &Device::Cpu, (2, 8))
            .unwrap()
            .run()
            .unwrap();
    }

    #[test]
    fn step_shapes_are_bounded() {
        assert!(check_shape(256, 512).is_ok());
        assert!(check_shape(MAX_TOKENS, 1).is_ok());
        for (b, t) in [(100_000_000, 128), (MAX_TOKENS + 1, 1), (usize::MAX, 2)] {
            let e = check_shape(b, t).unwrap_err();
            assert!(crate::error::is_user_error(&e));
            let e = e.to_string();
            assert!(e.contains("--batch") && e.contains("1048576"), "{e}");
        }
    }
}
