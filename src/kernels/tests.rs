//! Tests across the kernels: each refuses the shapes it cannot fill, and under
//! `without_graph` none of them records a backward.

use candle_core::{CustomOp1, CustomOp3, Var};

use super::common::testing::{max_diff, rand};
use super::common::without_graph;
use super::dropout::{dropout_add, DropoutOp};
use super::gelu::{gelu_erf, GeluErf};
use super::layernorm::{layer_norm, LayerNormOp};
use super::linear::{gelu_linear, linear, LinearOp};

#[test]
fn kernels_refuse_shapes_they_cannot_fill() {
    let (x, w) = (rand(&[3, 4], 50), rand(&[4], 51));
    // LayerNorm: a gain or bias of another length, forward and backward.
    assert!(layer_norm(&x, &rand(&[5], 52), &w, 1e-5).is_err());
    assert!(layer_norm(&x, &w, &rand(&[3], 52), 1e-5).is_err());
    assert!(layer_norm(&rand(&[12], 53), &w, &w, 1e-5).is_err());
    let op = LayerNormOp { eps: 1e-5 };
    let y = layer_norm(&x, &w, &w, 1e-5).unwrap();
    assert!(op.bwd(&x, &w, &w, &y, &rand(&[3, 5], 54)).is_err());
    assert!(op.bwd(&x, &w, &rand(&[3], 55), &y, &y).is_err());
    assert!(op.bwd(&x, &w, &w, &y, &y).is_ok());
    // GELU's and the linear's backward: a gradient of another shape.
    assert!(GeluErf.bwd(&x, &x, &rand(&[3, 3], 56)).is_err());
    let (wl, b) = (rand(&[2, 4], 57), rand(&[2], 58));
    let lin = LinearOp {
        fused: true,
        gelu_input: false,
        x_grad: true,
        w_grad: true,
        b_grad: true,
    };
    let out = linear(&x, &wl, Some(&b)).unwrap();
    assert!(lin.bwd(&x, &wl, &b, &out, &rand(&[3, 3], 59)).is_err());
    assert!(lin.bwd(&x, &rand(&[2, 5], 60), &b, &out, &out).is_err());
    assert!(lin.bwd(&x, &wl, &b, &out, &out).is_ok());
    // The linear's forward: another width, another bias length.
    assert!(linear(&x, &rand(&[2, 5], 61), Some(&b)).is_err());
    assert!(linear(&x, &wl, Some(&rand(&[3], 62))).is_err());
    // dropout + residual of two shapes with one element count.
    let op = DropoutOp::new(0.1, 1);
    assert!(dropout_add(&x, &rand(&[4, 3], 63), Some(op)).is_err());
}

#[test]
fn without_graph_records_nothing_even_for_variables() {
    let x = rand(&[6, 8], 40);
    let [w, b, lw, lb] = [
        rand(&[8, 8], 41),
        rand(&[8], 42),
        rand(&[8], 43),
        rand(&[8], 44),
    ]
    .map(|t| Var::from_tensor(&t).unwrap());
    let forward = || {
        let h = layer_norm(&x, lw.as_tensor(), lb.as_tensor(), 1e-12).unwrap();
        let y = linear(&h, w.as_tensor(), Some(b.as_tensor())).unwrap();
        let y = gelu_linear(&gelu_erf(&y).unwrap(), w.as_tensor(), b.as_tensor()).unwrap();
        dropout_add(&y, &h, None).unwrap()
    };
    assert!(forward().track_op(), "variables are tracked by default");
    assert!(!without_graph(forward).track_op());
    // The switch is restored afterwards.
    assert!(forward().track_op());
    assert_eq!(max_diff(&forward(), &without_graph(forward)), 0.0);
}
