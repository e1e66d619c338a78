//! The vendored candle-core's one change (vendor/README.md): backward stores the first
//! contribution to a gradient instead of adding it into zeros. What the change must keep:
//! contributions from several uses of a tensor still add up, and every stored gradient is
//! contiguous, as the zeros + add result was (later backward rules and the optimizer rely
//! on it).

use candle_core::{Device, Tensor, Var};

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn reused_tensors_sum_their_contributions() {
    let x = Var::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu).unwrap();
    // d/dx of sum(x) + sum(3x) + sum(x*x) = 1 + 3 + 2x.
    let t = x.as_tensor();
    let y = (t.sum_all().unwrap() + (t * 3.).unwrap().sum_all().unwrap()).unwrap();
    let y = (y + t.sqr().unwrap().sum_all().unwrap()).unwrap();
    let g = y.backward().unwrap();
    assert_eq!(values(g.get(t).unwrap()), vec![6., 8., 10., 12.]);
}

#[test]
fn a_gradient_that_arrives_as_a_view_is_stored_contiguous() {
    let x = Var::new(&[[1f32, 2., 3.], [4., 5., 6.]], &Device::Cpu).unwrap();
    let w = Tensor::new(&[[1f32, 10.], [100., 1000.]], &Device::Cpu).unwrap();
    // x's only use is through a transpose, so its gradient arrives as a strided view
    // (the transpose of the contiguous gradient of xᵀ).
    let y = x
        .as_tensor()
        .t()
        .unwrap()
        .matmul(&w)
        .unwrap()
        .sum_all()
        .unwrap();
    let g = y.backward().unwrap();
    let gx = g.get(x.as_tensor()).unwrap();
    assert!(gx.is_contiguous(), "stored gradient is a strided view");
    // d/dxᵀ sum(xᵀ W) = ones · Wᵀ: every row holds W's row sums (11, 1100).
    assert_eq!(values(gx), vec![11., 11., 11., 1100., 1100., 1100.]);
}
