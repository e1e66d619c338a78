//! DeBERTa's relative positions: the distance of every (query, key) pair, bucketed as
//! transformers does, as a row of `encoder.rel_embeddings`.
//!
//! Both disentangled terms read one table: content-to-position takes query i against the
//! row of distance i − j, position-to-content takes key j against the row of that same
//! distance (transformers gathers with −(j − i) and transposes, and the buckets are odd in
//! the distance, so the row is the same). Only the rows a sequence's distances reach are
//! projected: a 128-token batch reads 255 of deberta-v3's 512.

use anyhow::Result;
use candle_core::{Device, Tensor};

use super::deberta::RelativeConfig;
use super::nn::LayerNorm;
use super::params::Path;

/// transformers' `make_log_bucket_position` for one distance: distances up to half the
/// buckets stay as they are; beyond, mid + ceil(log(|d| / mid) / log((max − 1) / mid) ·
/// (mid − 1)), with the sign of d. The arithmetic is torch's: f32 throughout, the
/// denominator's quotient rounded to f32 before its log.
pub fn log_bucket(d: i64, buckets: i64, max_position: i64) -> i64 {
    let mid = buckets / 2;
    if d.abs() <= mid {
        return d;
    }
    let ratio = (d.abs() as f32 / mid as f32).ln();
    let denom = (((max_position - 1) as f64 / mid as f64) as f32).ln();
    let log_pos = (ratio / denom * (mid - 1) as f32).ceil() + mid as f32;
    d.signum() * log_pos as i64
}

/// The relative embeddings of one forward pass, as every layer reads them.
pub struct Positions {
    /// The rows of the table the sequence's distances reach, normalised: (rows, hidden).
    pub rows: Tensor,
    /// (seq, seq) u32: per (query i, key j), the row of `rows` for distance i − j.
    pub index: Tensor,
    /// `index` transposed: per (key j, query i), for the position-to-content gather.
    pub index_t: Tensor,
}

/// `encoder.rel_embeddings` and, with `norm_rel_ebd` "layer_norm", `encoder.LayerNorm`.
pub struct RelativeEmbeddings {
    table: Tensor,
    layer_norm: Option<LayerNorm>,
    cfg: RelativeConfig,
}

impl RelativeEmbeddings {
    /// `encoder`: the path of the encoder (`encoder.rel_embeddings.weight`).
    pub fn load(encoder: &Path, cfg: RelativeConfig, hidden: usize, eps: f64) -> Result<Self> {
        let layer_norm = cfg
            .layer_norm
            .then(|| LayerNorm::load(&encoder.pp("LayerNorm"), hidden, eps))
            .transpose()?;
        Ok(Self {
            table: encoder.get("rel_embeddings.weight", &[2 * cfg.span, hidden])?,
            layer_norm,
            cfg,
        })
    }

    /// The one `parts` of a stacked model share: the same table and LayerNorm in each.
    pub(crate) fn stack(&self, parts: &[Option<&RelativeEmbeddings>]) -> Result<Self> {
        use super::segments::{same, same_opt};
        let all = parts.iter().copied().collect::<Option<Vec<_>>>();
        let same_all = all.is_some_and(|ps| {
            same(ps.iter().map(|p| &p.table))
                && (0..2).all(|i| {
                    same_opt(
                        ps.iter()
                            .map(|p| p.layer_norm.as_ref().map(|l| l.tensors()[i])),
                    )
                })
        });
        if !same_all {
            anyhow::bail!("the adapters' relative position embeddings differ");
        }
        Ok(Self {
            table: self.table.clone(),
            layer_norm: self.layer_norm.clone(),
            cfg: self.cfg,
        })
    }

    /// The row of the full table for distance `d` = query − key.
    fn row(&self, d: i64) -> i64 {
        let span = self.cfg.span as i64;
        let d = match self.cfg.buckets {
            Some((b, max)) => log_bucket(d, b, max),
            None => d,
        };
        (d + span).clamp(0, 2 * span - 1)
    }

    /// The table rows and indices for sequences of `t` tokens, on `device`.
    pub fn positions(&self, t: usize, device: &Device) -> Result<Positions> {
        let t64 = t as i64;
        // Rows only grow with the distance, so the extremes bound them.
        let (lo, hi) = (self.row(1 - t64), self.row(t64 - 1));
        let mut index = Vec::with_capacity(t * t);
        let mut index_t = Vec::with_capacity(t * t);
        for i in 0..t64 {
            for j in 0..t64 {
                index.push((self.row(i - j) - lo) as u32);
                index_t.push((self.row(j - i) - lo) as u32);
            }
        }
        let rows = self.table.narrow(0, lo as usize, (hi - lo + 1) as usize)?;
        let rows = match &self.layer_norm {
            Some(ln) => ln.forward_shared(&rows.contiguous()?)?,
            None => rows,
        };
        Ok(Positions {
            rows,
            index: Tensor::from_vec(index, (t, t), device)?,
            index_t: Tensor::from_vec(index_t, (t, t), device)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_keep_near_distances_and_compress_far_ones() {
        // deberta-v3: 256 buckets over 512 positions.
        assert_eq!(log_bucket(0, 256, 512), 0);
        assert_eq!(log_bucket(-128, 256, 512), -128);
        assert_eq!(log_bucket(129, 256, 512), 129);
        assert_eq!(log_bucket(511, 256, 512), 255);
        assert_eq!(log_bucket(-511, 256, 512), -255);
        // Odd in the distance, never decreasing.
        let mut last = log_bucket(-1023, 256, 512);
        for d in -1022..=1023 {
            let b = log_bucket(d, 256, 512);
            assert_eq!(b, -log_bucket(-d, 256, 512));
            assert!(b >= last, "{d}");
            last = b;
        }
    }
}
