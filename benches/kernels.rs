//! Criterion benchmarks of the SIMD row kernels the fused CPU ops are made of, once per
//! instruction set this CPU has (an AVX-512 machine also times its AVX2 and baseline
//! paths), at MiniLM's shapes for a batch of 32 × 128: LayerNorm forward and backward over
//! 4,096 rows of 384, exact GELU and its backward over 4,096 × 1,536, the attention softmax
//! over 32 × 12 × 128 rows of 128, and dropout with the residual add over 4,096 × 384.
//! `cargo bench --bench kernels`; compare paths within one run.

use std::mem::MaybeUninit;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use peft::kernels::simd::{self, Isa};

fn data(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 37 + seed * 11) % 101) as f32 / 25.0 - 2.0)
        .collect()
}

fn uninit(v: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: the kernels given this view write only initialised floats.
    unsafe { simd::as_uninit(v) }
}

fn kernels(c: &mut Criterion) {
    let (rows, d, ff) = (4096, 384, 1536);
    let x = data(rows * d, 1);
    let g = data(rows * d, 2);
    let w = vec![1.1f32; d];
    let b = vec![0.1f32; d];
    let h = data(rows * ff, 3);
    let hg = data(rows * ff, 4);
    let scores = data(32 * 12 * 128 * 128, 5);
    let mask = vec![1f32; 128];
    for isa in [Isa::Baseline, Isa::Avx2, Isa::Avx512] {
        if isa > Isa::widest() {
            continue;
        }
        let mut group = c.benchmark_group(format!("{isa:?}"));
        group.sample_size(10);
        group.warm_up_time(Duration::from_secs(1));
        group.measurement_time(Duration::from_secs(2));
        let mut o = vec![0f32; rows * d];
        group.bench_function("layer_norm 4096x384", |bch| {
            bch.iter(|| simd::with_isa(isa, || simd::layer_norm(uninit(&mut o), &x, &w, &b, 1e-12)))
        });
        let (mut dx, mut dw, mut db) = (vec![0f32; rows * d], vec![0f32; d], vec![0f32; d]);
        group.bench_function("layer_norm_backward 4096x384", |bch| {
            bch.iter(|| {
                simd::with_isa(isa, || {
                    simd::layer_norm_backward(&mut dx, &mut dw, &mut db, &x, &g, &w, 1e-12)
                })
            })
        });
        let mut y = vec![0f32; rows * ff];
        group.bench_function("gelu 4096x1536", |bch| {
            bch.iter(|| simd::with_isa(isa, || simd::gelu(uninit(&mut y), &h)))
        });
        group.bench_function("gelu_backward 4096x1536", |bch| {
            bch.iter(|| simd::with_isa(isa, || simd::gelu_backward(&mut y, &h, &hg)))
        });
        let mut p = vec![0f32; 128];
        group.bench_function("softmax 49152 rows of 128", |bch| {
            bch.iter(|| {
                simd::with_isa(isa, || {
                    for row in scores.chunks_exact(128) {
                        simd::masked_softmax_row(&mut p, row, &mask, 0.125);
                    }
                })
            })
        });
        group.bench_function("dropout_add 4096x384", |bch| {
            bch.iter(|| {
                simd::with_isa(isa, || {
                    simd::dropout_add(uninit(&mut o), &x, &g, Some(7), u64::MAX / 10, 1.0 / 0.9, 0)
                })
            })
        });
        group.finish();
    }
}

criterion_group!(benches, kernels);
criterion_main!(benches);
