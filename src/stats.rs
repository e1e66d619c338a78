//! Summary statistics across seeds: median, mean and sample standard deviation.
//!
//! Seeds are few (three to five), so the sample (n − 1) standard deviation is the honest
//! spread; with one seed it is undefined and reported as such rather than as 0.

use candle_core::{Device, Tensor};
use serde::Serialize;

/// The largest |x| of a tensor of any shape and device (as f32): what the parity checks
/// and the kernels' own tests compare by.
pub fn max_abs(t: &Tensor) -> candle_core::Result<f32> {
    t.to_device(&Device::Cpu)?
        .to_dtype(candle_core::DType::F32)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()
}

/// Median, mean and spread of one metric over several runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Spread {
    pub n: usize,
    pub median: f64,
    pub mean: f64,
    /// Sample standard deviation; `None` for a single value.
    pub std: Option<f64>,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// `None` for no values. NaNs sort last and propagate into the mean, as they should:
    /// a diverged seed must not vanish from the summary.
    pub fn of(values: &[f64]) -> Option<Self> {
        Some(Self {
            n: values.len(),
            median: median(values)?,
            mean: mean(values)?,
            std: sample_std(values),
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        })
    }
}

pub fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// The middle value, or the mean of the two middle ones for an even count.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// Standard deviation with Bessel's correction (divides by n − 1).
pub fn sample_std(values: &[f64]) -> Option<f64> {
    if values.len() < 2 {
        return None;
    }
    let m = mean(values)?;
    let ss: f64 = values.iter().map(|x| (x - m) * (x - m)).sum();
    Some((ss / (values.len() - 1) as f64).sqrt())
}

/// 1234567 → "1,234,567".
pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[7.0]), Some(7.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn sample_std_divides_by_n_minus_one() {
        // Deviations from the mean 5: −3, −1, −1, −1, 0, 0, 2, 4; squares sum to 32.
        let v = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0];
        let s = sample_std(&v).unwrap();
        assert!((s - (32.0f64 / 7.0).sqrt()).abs() < 1e-12, "{s}");
        assert_eq!(sample_std(&[1.0, 1.0]), Some(0.0));
    }

    #[test]
    fn one_value_has_no_spread() {
        assert_eq!(sample_std(&[0.5]), None);
        let s = Spread::of(&[0.5]).unwrap();
        assert_eq!((s.n, s.median, s.mean, s.std), (1, 0.5, 0.5, None));
        assert_eq!((s.min, s.max), (0.5, 0.5));
        assert!(Spread::of(&[]).is_none());
    }

    #[test]
    fn mean_min_max() {
        let s = Spread::of(&[0.1, 0.4, 0.7]).unwrap();
        assert!((s.mean - 0.4).abs() < 1e-12);
        assert_eq!((s.min, s.max, s.median), (0.1, 0.7, 0.4));
    }
}
