//! Frozen weights cost no gradient work: with only LayerNorm (and the head) trainable,
//! backward must not compute a gradient for any frozen matrix. candle's own matmul
//! backward computes both operand gradients; our frozen linear op returns only dx.

use std::path::Path;

use candle_core::{DType, Device};
use peft::methods::Method;
use peft::model::{read_checkpoint, Batch, Ctx, Model, ParamStore};

fn check(kind: &str, method: Method) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(kind);
    let (cfg, weights) = read_checkpoint(&dir).unwrap();
    let spec = peft::methods::MethodSpec::example(method, 0).unwrap();
    let sel = method.select(&spec, weights.keys()).unwrap();
    let store = ParamStore::new(weights, Device::Cpu, 0, sel.trainable);
    // No head: RoBERTa's head has a hidden × hidden dense layer that trains, whose
    // gradient would share its shape with every frozen attention matrix and hide one.
    // The encoder's output against a fixed probe is the loss instead.
    let model = Model::load(&store, &cfg, None).unwrap();
    let ids: Vec<u32> = (0..24).map(|i| 5 + (i * 7) % 40).collect();
    let batch = Batch {
        input_ids: candle_core::Tensor::from_vec(ids, (3, 8), &Device::Cpu).unwrap(),
        token_type_ids: candle_core::Tensor::zeros((3, 8), DType::U32, &Device::Cpu).unwrap(),
        attention_mask: candle_core::Tensor::ones((3, 8), DType::F32, &Device::Cpu).unwrap(),
    };
    let out = model.forward(&batch, &Ctx::train(1)).unwrap();
    // Each output (and BERT's pooled one, so that the pooler's bias trains under BitFit)
    // against a fixed probe.
    let probed = |t: &candle_core::Tensor| {
        let n = t.elem_count();
        let probe: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect();
        let probe = candle_core::Tensor::from_vec(probe, t.dims(), &Device::Cpu).unwrap();
        (t * probe).unwrap().sum_all().unwrap()
    };
    let mut loss = probed(&out.last_hidden_state);
    if let Some(p) = &out.pooled {
        loss = (loss + probed(p)).unwrap();
    }
    let grads = loss.backward().unwrap();
    let vars = store.vars();
    // Only vectors train (LayerNorm, biases): no gradient of a matrix's shape is allowed.
    assert!(
        vars.values().all(|v| v.rank() == 1),
        "{kind} {method}: a trainable matrix"
    );
    // candle files a weight's gradient under the id of the transposed view it multiplied
    // by, so look for any stored gradient shaped like a frozen matrix (or its transpose).
    // Activations here have 24 rows, no weight dimension is 24, so shapes cannot collide.
    let mut frozen_shapes = Vec::new();
    for (name, t) in store.all() {
        if vars.contains_key(&name) {
            assert!(
                grads.get(&t).is_some(),
                "{kind} {method}: trainable {name} got no gradient"
            );
        } else if t.rank() == 2 && !name.starts_with("embeddings.") {
            let d = t.dims().to_vec();
            frozen_shapes.push((name, d.clone(), vec![d[1], d[0]]));
        }
    }
    assert!(
        frozen_shapes.len() >= 12,
        "{kind}: expected frozen matrices, found {}",
        frozen_shapes.len()
    );
    for id in grads.get_ids() {
        let g = grads.get_id(*id).unwrap();
        for (name, d, dt) in &frozen_shapes {
            assert!(
                g.dims() != d.as_slice() && g.dims() != dt.as_slice(),
                "{kind} {method}: backward computed a {:?} gradient, the shape of frozen {name}",
                g.dims()
            );
        }
    }
}

#[test]
fn layernorm_and_bitfit_compute_no_gradient_for_frozen_matrices() {
    for kind in ["tiny-bert", "tiny-roberta"] {
        check(kind, peft::methods::layernorm::METHOD);
        check(kind, peft::methods::bitfit::METHOD);
    }
}
