//! Criterion benchmarks of the steps `peft bench` times, on a small random BERT (2 layers,
//! hidden 128) so a run takes a minute: a training step per method and an inference
//! forward. `cargo bench --bench steps`; compare methods within one run.

use candle_core::Device;
use criterion::{criterion_group, criterion_main, Criterion};
use peft::bench::{random_bert, Forward, TrainStep};
use peft::methods::REGISTRY;

fn steps(c: &mut Criterion) {
    let (cfg, weights) = random_bert(2, 128, 4, 1000).expect("random model");
    let shape = (8, 64);
    let mut group = c.benchmark_group("bert-2x128 8x64");
    group.sample_size(20);
    // Every registered method that needs no Fisher file.
    for method in REGISTRY.iter().copied().filter(|m| !m.needs_fisher()) {
        let mut step = TrainStep::new(&cfg, weights.clone(), &method.into(), &Device::Cpu, shape)
            .expect("step");
        group.bench_function(format!("step {}", method.name()), |b| {
            b.iter(|| step.run().expect("step"))
        });
    }
    let forward = Forward::new(&cfg, weights, &Device::Cpu, shape).expect("forward");
    group.bench_function("inference", |b| b.iter(|| forward.run().expect("forward")));
    group.finish();
}

criterion_group!(benches, steps);
criterion_main!(benches);
