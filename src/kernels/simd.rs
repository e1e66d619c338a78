//! Vectorisable kernels for the fused CPU ops: softmax rows and exact GELU.
//!
//! `perf` of an inference forward put a fifth of it in the attention softmax, one scalar
//! libm `expf` call per score. Here exp is a branch-free polynomial (Cephes' expf: 2ⁿ·e^r,
//! |r| ≤ ln2/2, about 1 ulp) written so that LLVM vectorises the loops that call it, and
//! each kernel is compiled three times, for the baseline x86-64 (SSE2, 4 lanes), AVX2+FMA
//! (8 lanes) and AVX-512F (16 lanes), picked at run time. No `mul_add`: without FMA it is
//! a libm call, and plain multiply-add gives the same bits on every path. Reductions run in 16 fixed lanes, so the
//! result does not depend on the path either.

use std::mem::MaybeUninit;

const LANES: usize = 16;

/// Initialised floats seen as maybe-uninitialised, for a kernel that only writes them.
///
/// # Safety
/// Nothing may write `MaybeUninit::uninit()` through the view: `v` must stay initialised.
pub unsafe fn as_uninit(v: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: f32 and MaybeUninit<f32> have one size, alignment and layout, so the cast
    // slice covers exactly v's elements; the exclusive borrow of v moves into the view,
    // and the caller's contract keeps every element initialised when v is used again.
    unsafe { &mut *(v as *mut [f32] as *mut [MaybeUninit<f32>]) }
}

/// The instruction sets a kernel can be compiled for, narrowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    Baseline,
    Avx2,
    Avx512,
}

impl Isa {
    /// The widest this CPU runs.
    pub fn widest() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 =
                std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
            if avx2
                && std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512dq")
            {
                return Isa::Avx512;
            }
            if avx2 {
                return Isa::Avx2;
            }
        }
        Isa::Baseline
    }

    /// What the kernels use: the widest, or narrower where `PEFT_SIMD` (`avx2`,
    /// `baseline`) or [`with_isa`] asks, to run an AVX-512 machine's kernels as an AVX2
    /// one's. Never wider than the CPU.
    pub fn chosen() -> Isa {
        static WIDEST: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        static ENV: std::sync::OnceLock<Option<Isa>> = std::sync::OnceLock::new();
        let widest = *WIDEST.get_or_init(Isa::widest);
        let env = *ENV.get_or_init(|| match std::env::var("PEFT_SIMD").as_deref() {
            Ok("avx2") => Some(Isa::Avx2),
            Ok("baseline") => Some(Isa::Baseline),
            _ => None,
        });
        FORCED
            .with(|f| f.get())
            .or(env)
            .unwrap_or(widest)
            .min(widest)
    }
}

thread_local! {
    static FORCED: std::cell::Cell<Option<Isa>> = const { std::cell::Cell::new(None) };
}

/// Run `f` with this thread's kernels compiled for at most `isa` (tests and benchmarks
/// of each path).
pub fn with_isa<R>(isa: Isa, f: impl FnOnce() -> R) -> R {
    struct Reset(Option<Isa>);
    impl Drop for Reset {
        fn drop(&mut self) {
            FORCED.with(|f| f.set(self.0));
        }
    }
    let _reset = Reset(FORCED.with(|f| f.replace(Some(isa))));
    f()
}

/// Compiles `$body` as is, with AVX2 and FMA, and with AVX-512F and DQ (16 lanes, one
/// register per fixed-lane reduction; DQ's 64-bit multiply for the dropout hash), and
/// calls the one [`Isa::chosen`] names: the widest the CPU has unless told otherwise.
macro_rules! multiversion {
    ($(#[$doc:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? $body:block) => {
        $(#[$doc])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn imp($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    imp($($arg),*)
                }
                #[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    imp($($arg),*)
                }
                match Isa::chosen() {
                    // SAFETY: calling a `target_feature` function is sound when the CPU has
                    // every feature it enables; `chosen` is never wider than `widest`,
                    // which detected AVX-512F, DQ, AVX2 and FMA. Its body is the safe `imp`.
                    Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: as above, with AVX2 and FMA detected.
                    Isa::Avx2 => return unsafe { avx2($($arg),*) },
                    Isa::Baseline => {}
                }
            }
            imp($($arg),*)
        }
    };
}

pub(crate) use multiversion;

/// e^x with about 1 ulp of error; 0 below −87.3 (where f32 turns subnormal), +∞ above 88.7.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // Adding 1.5·2²³ rounds to an integer, which then sits in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let xc = x.clamp(-87.3, 88.7);
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    let ni = t.to_bits() as i32 - ROUND.to_bits() as i32;
    let two_n = f32::from_bits(((ni + 127) << 23) as u32);
    let y = er * two_n;
    if x < -87.3 {
        0.0
    } else if x > 88.7 {
        f32::INFINITY
    } else {
        y
    }
}

/// erf with |error| < 1.5e-7 (Abramowitz & Stegun 7.1.26).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let y = 1.0
        - (((((1.061_405_4 * t - 1.453_152_1) * t) + 1.421_413_8) * t - 0.284_496_72) * t
            + 0.254_829_6)
            * t
            * exp(-x * x);
    y.copysign(x)
}

#[inline(always)]
fn max(v: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = v.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    for (a, &x) in acc.iter_mut().zip(chunks.remainder()) {
        *a = if x > *a { x } else { *a };
    }
    acc.iter()
        .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a })
}

/// Σ a·b in 16 fixed lanes.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (mut ca, mut cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    for ((s, &x), &y) in acc.iter_mut().zip(ca.remainder()).zip(cb.remainder()) {
        *s += x * y;
    }
    acc.iter().sum()
}

/// Mean and 1/std of one row, with a two-pass variance as torch computes it.
#[inline(always)]
fn row_stats(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = sum(row) / n;
    let mut acc = [0f32; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            acc[i] += (c[i] - mean) * (c[i] - mean);
        }
    }
    for (a, &x) in acc.iter_mut().zip(chunks.remainder()) {
        *a += (x - mean) * (x - mean);
    }
    let var = acc.iter().sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

#[inline(always)]
fn sum(v: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = v.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    for (a, &x) in acc.iter_mut().zip(chunks.remainder()) {
        *a += x;
    }
    acc.iter().sum()
}

/// A counter-based hash (SplitMix64's finaliser): dropout's mask bit of element i
/// depends only on (seed, call, i), so masks are the same whatever the thread count or
/// device (src/kernels/cuda.rs computes the same).
#[inline(always)]
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Whether dropout keeps element `i` of the call hashed to `key`.
#[inline(always)]
pub fn keeps(key: u64, threshold: u64, i: u64) -> bool {
    mix(key ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15)) < threshold
}

multiversion! {
    /// o = x·scale where dropout keeps element `base + j`, else 0 (not x·0, which is NaN
    /// for an infinite x). Writes every element of o; panics unless x is as long.
    pub fn dropout(
        o: &mut [MaybeUninit<f32>],
        x: &[f32],
        key: u64,
        threshold: u64,
        scale: f32,
        base: u64
    ) {
        assert_eq!(o.len(), x.len(), "dropout: output and input lengths differ");
        for (j, (o, &v)) in o.iter_mut().zip(x).enumerate() {
            o.write(if keeps(key, threshold, base + j as u64) { v * scale } else { 0.0 });
        }
    }
}

multiversion! {
    /// o = dropout(x) + r, as `dropout` then an add would give; with key None, x + r.
    /// Writes every element of o; panics unless x and r are as long.
    pub fn dropout_add(
        o: &mut [MaybeUninit<f32>],
        x: &[f32],
        r: &[f32],
        key: Option<u64>,
        threshold: u64,
        scale: f32,
        base: u64
    ) {
        assert!(o.len() == x.len() && o.len() == r.len(), "dropout_add: lengths differ");
        match key {
            Some(key) => {
                for (j, ((o, &v), &r)) in o.iter_mut().zip(x).zip(r).enumerate() {
                    let d = if keeps(key, threshold, base + j as u64) { v * scale } else { 0.0 };
                    o.write(d + r);
                }
            }
            None => {
                for ((o, &v), &r) in o.iter_mut().zip(x).zip(r) {
                    o.write(v + r);
                }
            }
        }
    }
}

multiversion! {
    /// One row of softmax's backward under dropout, in place: dp holds the gradient of the
    /// applied probabilities and becomes that of the scores, scale · p ⊙ (dp' − ⟨dp', p⟩),
    /// where dp' is dp through the dropout mask, read off `dropped` (where p > 0, dropped
    /// ≠ 0 exactly when the element survived; where p = 0 the result is 0 anyway).
    /// `drop_scale` is None without dropout.
    pub fn softmax_backward_row(
        dp: &mut [f32],
        p: &[f32],
        dropped: &[f32],
        drop_scale: Option<f32>,
        scale: f32
    ) {
        if let Some(keep) = drop_scale {
            for (x, &kept) in dp.iter_mut().zip(dropped) {
                *x = if kept != 0.0 { *x * keep } else { 0.0 };
            }
        }
        let dot = dot(dp, p);
        for (x, &pj) in dp.iter_mut().zip(p) {
            *x = scale * pj * (*x - dot);
        }
    }
}

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

multiversion! {
    /// o = softmax(scale · x) over the keys whose mask is non-zero, 0 at the others.
    pub fn masked_softmax_row(o: &mut [f32], x: &[f32], mask: &[f32], scale: f32) {
        for ((o, &x), &m) in o.iter_mut().zip(x).zip(mask) {
            *o = if m != 0.0 { x * scale } else { f32::NEG_INFINITY };
        }
        let top = max(o);
        for v in o.iter_mut() {
            *v = exp(*v - top);
        }
        let inv = 1.0 / sum(o);
        for v in o.iter_mut() {
            *v *= inv;
        }
    }
}

multiversion! {
    /// o = (x − mean)/std · w + b over rows of w.len(). Writes every element of o; panics
    /// unless o and x are as long, a whole number of non-empty rows, and b is as long as w.
    pub fn layer_norm(o: &mut [MaybeUninit<f32>], x: &[f32], w: &[f32], b: &[f32], eps: f32) {
        let d = w.len();
        assert!(
            d > 0 && b.len() == d && o.len() == x.len() && o.len().is_multiple_of(d),
            "layer_norm: rows of {d} against {} inputs, {} outputs and a bias of {}",
            x.len(),
            o.len(),
            b.len()
        );
        for (o, r) in o.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
            let (mean, rstd) = row_stats(r, eps);
            for (((o, &x), &w), &b) in o.iter_mut().zip(r).zip(w).zip(b) {
                o.write((x - mean) * rstd * w + b);
            }
        }
    }
}

multiversion! {
    /// LayerNorm's backward over rows of w.len(): writes dx, adds into dw and db.
    pub fn layer_norm_backward(
        dx: &mut [f32],
        dw: &mut [f32],
        db: &mut [f32],
        x: &[f32],
        g: &[f32],
        w: &[f32],
        eps: f32
    ) {
        let d = w.len();
        let rows = dx.chunks_exact_mut(d).zip(x.chunks_exact(d).zip(g.chunks_exact(d)));
        for (dxr, (xr, gr)) in rows {
            let (mean, rstd) = row_stats(xr, eps);
            // dxr holds x̂ for now.
            for (h, &x) in dxr.iter_mut().zip(xr) {
                *h = (x - mean) * rstd;
            }
            for (((dw, db), &h), &g) in dw.iter_mut().zip(db.iter_mut()).zip(dxr.iter()).zip(gr) {
                *dw += g * h;
                *db += g;
            }
            let (mut s1, mut s2) = ([0f32; LANES], [0f32; LANES]);
            let mut chunks = dxr.chunks_exact(LANES).zip(gr.chunks_exact(LANES).zip(w.chunks_exact(LANES)));
            for (h, (g, w)) in &mut chunks {
                for i in 0..LANES {
                    let dy = g[i] * w[i];
                    s1[i] += dy;
                    s2[i] += dy * h[i];
                }
            }
            let tail = d - d % LANES;
            for i in tail..d {
                let dy = gr[i] * w[i];
                s1[i - tail] += dy;
                s2[i - tail] += dy * dxr[i];
            }
            let m1 = s1.iter().sum::<f32>() / d as f32;
            let m2 = s2.iter().sum::<f32>() / d as f32;
            for ((dx, &g), &w) in dxr.iter_mut().zip(gr).zip(w) {
                *dx = rstd * (g * w - m1 - *dx * m2);
            }
        }
    }
}

multiversion! {
    /// o = x · Φ(x), exact GELU. Writes every element of o; panics unless x is as long.
    pub fn gelu(o: &mut [MaybeUninit<f32>], x: &[f32]) {
        assert_eq!(o.len(), x.len(), "gelu: output and input lengths differ");
        for (o, &v) in o.iter_mut().zip(x) {
            o.write(0.5 * v * (1.0 + erf(v * FRAC_1_SQRT_2)));
        }
    }
}

multiversion! {
    /// d = g · (Φ(x) + x·φ(x)), GELU's backward.
    pub fn gelu_backward(d: &mut [f32], x: &[f32], g: &[f32]) {
        for ((d, &v), &g) in d.iter_mut().zip(x).zip(g) {
            let cdf = 0.5 * (1.0 + erf(v * FRAC_1_SQRT_2));
            let pdf = FRAC_1_SQRT_2PI * exp(-0.5 * v * v);
            *d = g * (cdf + v * pdf);
        }
    }
}

multiversion! {
    /// g ← g · (Φ(x) + x·φ(x)) in place: `gelu_backward` with d and g the same buffer.
    pub fn gelu_backward_in_place(g: &mut [f32], x: &[f32]) {
        for (g, &v) in g.iter_mut().zip(x) {
            let cdf = 0.5 * (1.0 + erf(v * FRAC_1_SQRT_2));
            let pdf = FRAC_1_SQRT_2PI * exp(-0.5 * v * v);
            *g *= cdf + v * pdf;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_libm() {
        let mut worst = 0f32;
        for i in 0..=200_000 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            let (ours, libm) = (exp(x), x.exp());
            worst = worst.max(((ours - libm) / libm).abs());
        }
        assert!(worst < 2.5e-7, "worst relative error {worst}");
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn softmax_row_matches_the_scalar_definition() {
        for t in [1, 7, 16, 33, 128] {
            let x: Vec<f32> = (0..t).map(|j| ((j * 37 % 11) as f32 - 5.0) * 1.7).collect();
            let mask: Vec<f32> = (0..t).map(|j| if j % 5 == 3 { 0.0 } else { 1.0 }).collect();
            let mut o = vec![f32::NAN; t];
            masked_softmax_row(&mut o, &x, &mask, 0.125);
            let top = (0..t)
                .filter(|&j| mask[j] != 0.0)
                .map(|j| (x[j] * 0.125) as f64)
                .fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = (0..t)
                .map(|j| {
                    if mask[j] != 0.0 {
                        ((x[j] * 0.125) as f64 - top).exp()
                    } else {
                        0.0
                    }
                })
                .collect();
            let s: f64 = e.iter().sum();
            for j in 0..t {
                assert!((o[j] as f64 - e[j] / s).abs() < 1e-6, "t {t} key {j}");
                if mask[j] == 0.0 {
                    assert_eq!(o[j], 0.0);
                }
            }
        }
    }

    #[test]
    fn gelu_and_its_backward_match_the_definition() {
        let x: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) / 125.0).collect();
        let g: Vec<f32> = (0..1000).map(|i| 1.0 + (i % 3) as f32).collect();
        let (mut y, mut d) = (vec![0f32; 1000], vec![0f32; 1000]);
        // SAFETY: `gelu` writes only initialised floats through the view.
        gelu(unsafe { as_uninit(&mut y) }, &x);
        gelu_backward(&mut d, &x, &g);
        for i in 0..1000 {
            let v = x[i] as f64;
            let cdf = 0.5 * (1.0 + libm_erf(v / 2f64.sqrt()));
            let pdf = (-0.5 * v * v).exp() / (2.0 * std::f64::consts::PI).sqrt();
            assert!((y[i] as f64 - v * cdf).abs() < 2e-6, "gelu({v})");
            assert!(
                (d[i] as f64 - g[i] as f64 * (cdf + v * pdf)).abs() < 1e-5,
                "gelu'({v})"
            );
        }
    }

    /// Every kernel gives the same bits on each instruction set this CPU has (an AVX-512
    /// machine checks its AVX2 and baseline paths too): fixed-lane reductions and no fused
    /// multiply-add make the result independent of the vector width.
    #[test]
    fn every_path_gives_the_same_bits() {
        let n = 3 * 97; // rows of 97: not a multiple of any vector width
        let x: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
            .collect();
        let r: Vec<f32> = (0..n)
            .map(|i| ((i * 13 % 29) as f32 - 14.0) / 9.0)
            .collect();
        let w: Vec<f32> = (0..97).map(|i| 1.0 + (i % 7) as f32 / 10.0).collect();
        let b: Vec<f32> = (0..97).map(|i| (i % 5) as f32 / 10.0 - 0.2).collect();
        let mask: Vec<f32> = (0..97).map(|j| (j % 9 != 4) as u8 as f32).collect();
        fn w_only(v: &mut [f32]) -> &mut [MaybeUninit<f32>] {
            // SAFETY: the kernels given this view write only initialised floats.
            unsafe { as_uninit(v) }
        }
        let run = || {
            let mut out: Vec<Vec<f32>> = Vec::new();
            let mut o = vec![0f32; n];
            dropout(w_only(&mut o), &x, 7, u64::MAX / 10, 1.0 / 0.9, 3);
            out.push(o.clone());
            dropout_add(w_only(&mut o), &x, &r, Some(7), u64::MAX / 10, 1.0 / 0.9, 3);
            out.push(o.clone());
            layer_norm(w_only(&mut o), &x, &w, &b, 1e-12);
            out.push(o.clone());
            let (mut dx, mut dw, mut db) = (vec![0f32; n], vec![0f32; 97], vec![0f32; 97]);
            layer_norm_backward(&mut dx, &mut dw, &mut db, &x, &r, &w, 1e-12);
            out.extend([dx, dw, db]);
            gelu(w_only(&mut o), &x);
            out.push(o.clone());
            let mut d = vec![0f32; n];
            gelu_backward(&mut d, &x, &r);
            out.push(d.clone());
            gelu_backward_in_place(&mut d, &x);
            out.push(d);
            let mut p = vec![0f32; 97];
            masked_softmax_row(&mut p, &x[..97], &mask, 0.125);
            out.push(p.clone());
            let mut dp = r[..97].to_vec();
            softmax_backward_row(&mut dp, &p, &x[..97], Some(1.0 / 0.9), 0.125);
            out.push(dp);
            out
        };
        let bits = |v: Vec<Vec<f32>>| -> Vec<Vec<u32>> {
            v.iter()
                .map(|k| k.iter().map(|f| f.to_bits()).collect())
                .collect()
        };
        let want = bits(with_isa(Isa::Baseline, run));
        for isa in wider_paths_here() {
            let got = bits(with_isa(isa, run));
            for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g, w, "kernel {k} on {isa:?} differs from the baseline's");
            }
        }
        assert_eq!(
            with_isa(Isa::Avx2, Isa::chosen),
            Isa::Avx2.min(Isa::widest())
        );
    }

    /// The vector paths above the baseline this CPU runs, every one of them; the ones it
    /// lacks are named on stderr, so that a run on an older CPU says what it did not check.
    pub(crate) fn wider_paths_here() -> Vec<Isa> {
        let (here, not): (Vec<Isa>, Vec<Isa>) = [Isa::Avx2, Isa::Avx512]
            .into_iter()
            .partition(|i| *i <= Isa::widest());
        if !not.is_empty() {
            eprintln!("this CPU lacks {not:?}: those paths are not checked here");
        }
        here
    }

    /// erf in f64 by its Taylor series (accurate to 1e-13 for |x| < 3), as an independent
    /// reference.
    fn libm_erf(x: f64) -> f64 {
        let (mut term, mut total, mut n) = (x, x, 0.0);
        while term.abs() > 1e-17 * total.abs().max(1e-300) {
            n += 1.0;
            term *= -x * x / n;
            total += term / (2.0 * n + 1.0);
        }
        2.0 / std::f64::consts::PI.sqrt() * total
    }
}
