//! Criterion benchmarks of the SIMD row kernels the fused CPU ops are made of, once per
//! instruction set this CPU has (an AVX-512 machine also times its AVX2 and baseline
//! paths), at MiniLM's shapes for a batch of 32 × 128: LayerNorm forward and backward over
//! 4,096 rows of 384, exact GELU and its backward over 4,096 × 1,536, the attention softmax
//! over 32 × 12 × 128 rows of 128, and dropout with the residual add over 4,096 × 384.
//! The `linear` group times the fused linear's forward (y = x·Wᵀ + b, our tiling of gemm)
//! at bert-base's 8 × 128 and roberta-large's 4 × 128 shapes, in GFLOP/s (criterion's
//! "elements" are multiply-adds × 2), with W stored by rows (torch's order, what training
//! uses) and by columns (what an inference store keeps).
//! `cargo bench --bench kernels`; compare paths within one run.

use std::mem::MaybeUninit;
use std::time::Duration;

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
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

fn linear(c: &mut Criterion) {
    let mut group = c.benchmark_group("linear");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    let dev = Device::Cpu;
    for (rows, d_in, d_out) in [
        (1024, 768, 768),
        (1024, 768, 3072),
        (1024, 3072, 768),
        (512, 1024, 4096),
        (512, 4096, 1024),
    ] {
        let t = |n: usize, seed: usize| Tensor::from_vec(data(n, seed), n, &dev).unwrap();
        let x = t(rows * d_in, 1).reshape((rows, d_in)).unwrap();
        let w = t(d_out * d_in, 2).reshape((d_out, d_in)).unwrap();
        let b = t(d_out, 3);
        group.throughput(Throughput::Elements(2 * (rows * d_in * d_out) as u64));
        group.bench_function(format!("{rows}x{d_in} -> {d_out}"), |bch| {
            bch.iter(|| peft::kernels::linear(&x, &w, Some(&b)).unwrap())
        });
        // The same W stored by columns, as an inference store keeps its frozen weights.
        let cols = peft::kernels::columns(&w).unwrap();
        group.bench_function(format!("{rows}x{d_in} -> {d_out}, W by columns"), |bch| {
            bch.iter(|| peft::kernels::linear(&x, &cols, Some(&b)).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, kernels, linear);
criterion_main!(benches);
