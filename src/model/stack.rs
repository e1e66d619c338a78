//! One forward over several adapters of one base (`peft serve`), as Punica and S-LoRA batch
//! LoRA adapters over a decoder: [`Model::stack`] zips the parts' models into one whose
//! modules are shared where every part holds the same tensors (the base's matrices, lent to
//! every adapter) and split where they differ. A forward of it runs under a [`Ctx`] that
//! says which batch rows are whose ([`Ctx::with_segments`]): a shared linear layer
//! multiplies every row by the base weight at once and each part adds its own piece (a
//! LoRA-family delta, IA3's scaling, HRA's reflection, its biases) on its own rows; a split
//! LayerNorm, bottleneck adapter, LoReFT edit or head runs per segment.
//!
//! What changes the sequence itself (prompt and prefix tuning), a run whose embeddings or
//! attention differ from the others' (full fine-tuning, a different base) and XLNet do not
//! stack: [`Model::stack`] says why, and the caller runs them in forwards of their own.

use anyhow::{bail, Result};

use super::segments::one;
use super::{Body, Model};

impl Model {
    /// One model over `parts` (two or more models of one base), to run under a [`Ctx`]
    /// with one segment per part, in this order; an error says why they cannot share a
    /// forward.
    pub fn stack(parts: &[&Model]) -> Result<Model> {
        let first = parts
            .first()
            .ok_or_else(|| anyhow::anyhow!("no models to stack"))?;
        let cfg = &first.config;
        one("family", parts.iter().map(|m| m.config.model_type))?;
        one("width", parts.iter().map(|m| m.config.hidden_size))?;
        one("depth", parts.iter().map(|m| m.num_layers()))?;
        if parts
            .iter()
            .any(|m| m.prompt.is_some() || m.prefix.is_some())
        {
            bail!("prompt and prefix tuning lengthen the sequence: each runs on its own");
        }
        let mut bodies = Vec::with_capacity(parts.len());
        for m in parts {
            match &m.body {
                Body::Stack {
                    embeddings,
                    project,
                    layers,
                    relative,
                } => bodies.push((embeddings, project, layers, relative)),
                Body::Xlnet(_) => bail!("XLNet's layers do not stack"),
            }
        }
        let embeddings = Box::new(super::embeddings::Embeddings::stack(
            &bodies.iter().map(|b| &**b.0).collect::<Vec<_>>(),
        )?);
        let project = match bodies[0].1 {
            None if bodies.iter().all(|b| b.1.is_none()) => None,
            Some(_) => Some(super::nn::Linear::stack(
                &bodies
                    .iter()
                    .map(|b| b.1.as_ref())
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| anyhow::anyhow!("the adapters differ in projection"))?,
            )?),
            None => bail!("the adapters differ in projection"),
        };
        let layers = (0..first.num_layers())
            .map(|i| {
                let of: Vec<_> = bodies.iter().map(|b| &b.2[i]).collect();
                super::layer::Layer::stack(&of)
            })
            .collect::<Result<Vec<_>>>()?;
        let relative = match bodies[0].3 {
            None => None,
            Some(r) => Some(r.stack(&bodies.iter().map(|b| b.3.as_ref()).collect::<Vec<_>>())?),
        };
        let pooler = match parts
            .iter()
            .map(|m| m.pooler.as_ref())
            .collect::<Option<Vec<_>>>()
        {
            Some(p) => Some(super::heads::Pooler::stack(&p)?),
            None if parts.iter().all(|m| m.pooler.is_none()) => None,
            None => bail!("the adapters differ in having a pooler"),
        };
        // Heads run per part; a model without one (the base, for embeddings) leaves the
        // stack without a head, which only embeddings need.
        let head = parts
            .iter()
            .map(|m| m.head.clone())
            .collect::<Option<Vec<_>>>()
            .map(super::heads::Head::Parts);
        let edits = parts.iter().any(|m| m.positions.is_some()).then(|| {
            parts
                .iter()
                .map(|m| (m.positions, m.interventions.clone()))
                .collect()
        });
        Ok(Model {
            config: cfg.clone(),
            body: Body::Stack {
                embeddings,
                project,
                layers,
                relative,
            },
            prompt: None,
            prefix: None,
            positions: None,
            interventions: vec![Vec::new(); first.num_layers()],
            part_edits: edits,
            pooler,
            head,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::nn::Ctx;
    use crate::model::{AdapterConfig, AdapterKind, Batch, HeadKind, ParamStore};
    use candle_core::Tensor;
    use candle_core::{DType, Device};
    use std::collections::HashMap;

    /// A model of the fixture `name` over `base`, with `adapters`, its tensors that
    /// `trains` says set to random values (an untrained LoRA or IA3 changes nothing).
    fn model(
        base: &HashMap<String, Tensor>,
        cfg: &crate::model::ModelConfig,
        labels: usize,
        adapters: Option<AdapterConfig>,
        trains: fn(&str) -> bool,
        seed: u64,
    ) -> Model {
        let store = ParamStore::new(base.clone(), Device::Cpu, seed, Box::new(trains));
        let m = Model::load_with_adapters(
            &store,
            cfg,
            Some(HeadKind::Classes(labels)),
            adapters.as_ref(),
        )
        .unwrap();
        for (i, (_, var)) in store.vars().into_iter().enumerate() {
            let noise = Tensor::randn(0f32, 0.3, var.shape(), &Device::Cpu).unwrap();
            let value = (var.as_tensor() + noise).unwrap();
            var.set(&value).unwrap_or_else(|e| panic!("var {i}: {e}"));
        }
        m
    }

    fn adapter(kind: AdapterKind, targets: &[&str]) -> AdapterConfig {
        AdapterConfig {
            kind,
            r: 4,
            alpha: 8.0,
            dropout: 0.0,
            targets: targets.iter().map(|t| t.to_string()).collect(),
            rslora: false,
            init: None,
        }
    }

    #[test]
    fn a_stacked_forward_gives_each_part_its_own_logits() {
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        for name in [
            "tiny-bert",
            "tiny-roberta",
            "tiny-deberta-v2",
            "tiny-electra",
        ] {
            let (cfg, mut base) = crate::model::read_checkpoint(&fixtures.join(name)).unwrap();
            crate::model::drop_head(&mut base);
            // DeBERTa v2 shares the query with its position projection (p2c): LoRA there
            // would read the shared positions differently per part, so it takes the value.
            let lora = adapter(AdapterKind::Lora, &["value", "intermediate.dense"]);
            let ia3 = adapter(AdapterKind::Ia3, crate::model::adapter::IA3_TARGETS);
            let parts = [
                model(&base, &cfg, 2, Some(lora), |n| n.contains("lora_"), 1),
                model(&base, &cfg, 2, Some(ia3), |n| n.contains("ia3_"), 2),
                // LayerNorm-only, with a three-way head: its rows are padded in the stack.
                // (DeBERTa's relative embeddings' `encoder.LayerNorm` is shared by every row,
                // so a part that changed it runs on its own.)
                model(
                    &base,
                    &cfg,
                    3,
                    None,
                    |n| n.contains("layer.") && n.contains("LayerNorm"),
                    3,
                ),
                model(&base, &cfg, 2, None, |n| n.ends_with("bias"), 4),
            ];
            let mut parts = Vec::from(parts);
            if name == "tiny-deberta-v2" {
                // Its key and query (and their biases) also project the relative positions
                // every row shares (share_att_key): IA3 on the key and trained biases make
                // those differ per part, which the stack refuses; those run on their own.
                let err = Model::stack(&[&parts[0], &parts[1]])
                    .err()
                    .unwrap()
                    .to_string();
                assert!(err.contains("position projections"), "{err}");
                parts.swap_remove(3);
                parts.remove(1);
            }
            let refs: Vec<&Model> = parts.iter().collect();
            let stacked = Model::stack(&refs).unwrap_or_else(|e| panic!("{name}: {e}"));
            let (b, t) = (7, 9);
            let ids: Vec<u32> = (0..b * t).map(|i| (i * 7 % 50 + 3) as u32).collect();
            let mask: Vec<f32> = (0..b * t)
                .map(|i| if i % t < t - (i / t) % 4 { 1.0 } else { 0.0 })
                .collect();
            let dev = &Device::Cpu;
            let batch = Batch {
                input_ids: Tensor::from_vec(ids, (b, t), dev).unwrap(),
                token_type_ids: Tensor::zeros((b, t), DType::U32, dev).unwrap(),
                attention_mask: Tensor::from_vec(mask, (b, t), dev).unwrap(),
            };
            let segments = match parts.len() {
                4 => vec![0..2, 2..3, 3..6, 6..7],
                _ => vec![0..3, 3..7],
            };
            let ctx = Ctx::inference().with_segments(segments.clone());
            let got = stacked
                .logits(&batch, &ctx)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            for (m, seg) in parts.iter().zip(&segments) {
                let rows = |x: &Tensor| x.narrow(0, seg.start, seg.len()).unwrap();
                let own = Batch {
                    input_ids: rows(&batch.input_ids),
                    token_type_ids: rows(&batch.token_type_ids),
                    attention_mask: rows(&batch.attention_mask),
                };
                let want = m.logits(&own, &Ctx::inference()).unwrap();
                let want = want.to_vec2::<f32>().unwrap();
                for (w, g) in want.iter().zip(&got[seg.clone()]) {
                    for (a, b) in w.iter().zip(g) {
                        assert!((a - b).abs() < 1e-5, "{name} {seg:?}: {w:?} vs {g:?}");
                    }
                    // A narrower head's row is padded with zeros.
                    assert!(g[w.len()..].iter().all(|v| *v == 0.0), "{name}: {g:?}");
                }
            }
            // The forward really is split: the stack differs from each part alone.
            let alone = parts[0].logits(&batch, &Ctx::inference()).unwrap();
            let alone = alone.to_vec2::<f32>().unwrap();
            assert!((alone[6][0] - got[6][0]).abs() > 1e-4, "{name}");
        }
    }

    #[test]
    fn what_changes_the_sequence_or_the_base_does_not_stack() {
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let (cfg, mut base) = crate::model::read_checkpoint(&fixtures.join("tiny-bert")).unwrap();
        crate::model::drop_head(&mut base);
        let lora = model(&base, &cfg, 2, None, |n| n.contains("lora_"), 1);
        let prompt = adapter(AdapterKind::Prompt { tokens: 3 }, &[]);
        let prompted = model(&base, &cfg, 2, Some(prompt), |n| n.contains("prompt"), 2);
        let err = Model::stack(&[&lora, &prompted]).err().unwrap().to_string();
        assert!(err.contains("prompt"), "{err}");
        let full = model(&base, &cfg, 2, None, |_| true, 3);
        let err = Model::stack(&[&lora, &full]).err().unwrap().to_string();
        assert!(err.contains("embedding tables"), "{err}");
        // Without segments, a stacked forward refuses to guess whose rows are whose.
        let other = model(&base, &cfg, 2, None, |n| n.contains("LayerNorm"), 4);
        let stacked = Model::stack(&[&lora, &other]).unwrap();
        let batch = Batch {
            input_ids: Tensor::ones((2, 3), DType::U32, &Device::Cpu).unwrap(),
            token_type_ids: Tensor::zeros((2, 3), DType::U32, &Device::Cpu).unwrap(),
            attention_mask: Tensor::ones((2, 3), DType::F32, &Device::Cpu).unwrap(),
        };
        assert!(stacked.logits(&batch, &Ctx::inference()).is_err());
    }
}
