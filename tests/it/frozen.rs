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
    let model = Model::load(&store, &cfg, Some(3)).unwrap();
    let ids: Vec<u32> = (0..24).map(|i| 5 + (i * 7) % 40).collect();
    let batch = Batch {
        input_ids: candle_core::Tensor::from_vec(ids, (3, 8), &Device::Cpu).unwrap(),
        token_type_ids: candle_core::Tensor::zeros((3, 8), DType::U32, &Device::Cpu).unwrap(),
        attention_mask: candle_core::Tensor::ones((3, 8), DType::F32, &Device::Cpu).unwrap(),
    };
    let labels = candle_core::Tensor::new(&[0u32, 1, 2], &Device::Cpu).unwrap();
    let logits = model.logits(&batch, &Ctx::train(1)).unwrap();
    let grads = peft::loss::cross_entropy(&logits, &labels)
        .unwrap()
        .backward()
        .unwrap();
    let vars = store.vars();
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
    // A trainable matrix of the same shape (RoBERTa's head dense) legitimately has one.
    let trained: Vec<Vec<usize>> = vars
        .values()
        .filter(|v| v.rank() == 2)
        .map(|v| v.dims().to_vec())
        .collect();
    for id in grads.get_ids() {
        let g = grads.get_id(*id).unwrap();
        if trained
            .iter()
            .any(|d| g.dims() == d.as_slice() || g.dims() == [d[1], d[0]])
        {
            continue;
        }
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
