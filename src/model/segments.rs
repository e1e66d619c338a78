//! The rows of each part of a stacked model (`stack.rs`) in one forward: what a split
//! module uses to run each part on its own rows, and to tell shared tensors from own ones.

use std::ops::Range;

use anyhow::{bail, Result};
use candle_core::Tensor;

use super::ctx::Ctx;

/// Whether every tensor is the same one (shared storage, not equal values).
pub(crate) fn same<'a>(mut tensors: impl Iterator<Item = &'a Tensor>) -> bool {
    match tensors.next() {
        Some(first) => tensors.all(|t| t.id() == first.id()),
        None => true,
    }
}

/// As [`same`], for tensors a module may lack: all absent or all the same.
pub(crate) fn same_opt<'a>(mut tensors: impl Iterator<Item = Option<&'a Tensor>>) -> bool {
    match tensors.next() {
        Some(None) => tensors.all(|t| t.is_none()),
        Some(Some(first)) => tensors.all(|t| t.is_some_and(|t| t.id() == first.id())),
        None => true,
    }
}

/// The forward's segments, checked against `parts` split modules and a batch of `rows`.
pub(crate) fn segments(ctx: &Ctx, parts: usize, rows: usize) -> Result<&[Range<usize>]> {
    let Some(segs) = ctx.segments() else {
        bail!("a stacked model's forward needs each part's rows (Ctx::with_segments)");
    };
    let contiguous = segs.first().is_some_and(|s| s.start == 0)
        && segs.windows(2).all(|w| w[0].end == w[1].start)
        && segs.last().is_some_and(|s| s.end == rows);
    if segs.len() != parts || !contiguous {
        bail!(
            "stacked forward: {} segments {segs:?} for {parts} parts over {rows} rows",
            segs.len()
        );
    }
    Ok(segs)
}

/// Each part's `f` on its rows of every tensor in `xs` (rows along dim 0, `per_row` of them
/// per batch row), the outputs concatenated along dim 0.
pub(crate) fn per_segment<P>(
    parts: &[P],
    xs: &[&Tensor],
    per_row: usize,
    ctx: &Ctx,
    f: impl Fn(&P, &[Tensor]) -> Result<Tensor>,
) -> Result<Tensor> {
    let rows = xs[0].dim(0)? / per_row.max(1);
    let segs = segments(ctx, parts.len(), rows)?;
    let mut outs = Vec::with_capacity(parts.len());
    for (p, s) in parts.iter().zip(segs) {
        let pieces = xs
            .iter()
            .map(|x| Ok(x.narrow(0, s.start * per_row, s.len() * per_row)?))
            .collect::<Result<Vec<_>>>()?;
        outs.push(f(p, &pieces)?);
    }
    // Outputs of different widths (heads of different label counts) are padded with zeros
    // on the last dimension; each part's reader keeps its own width.
    let width = outs
        .iter()
        .map(|o| o.dims().last().copied().unwrap_or(0))
        .max();
    let outs = outs
        .into_iter()
        .map(|o| pad_last(o, width.unwrap_or(0)))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&outs, 0)?)
}

fn pad_last(t: Tensor, width: usize) -> Result<Tensor> {
    let Some(&w) = t.dims().last() else {
        return Ok(t);
    };
    match w < width {
        true => Ok(t.pad_with_zeros(t.rank() - 1, 0, width - w)?),
        false => Ok(t),
    }
}

/// One value for every part, or an error naming what differs.
pub(crate) fn one<T: PartialEq + Copy + std::fmt::Debug>(
    what: &str,
    values: impl Iterator<Item = T>,
) -> Result<T> {
    let values: Vec<T> = values.collect();
    match values.first() {
        Some(v) if values.iter().all(|w| w == v) => Ok(*v),
        _ => bail!("the adapters differ in {what} ({values:?})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn segments_must_cover_the_batch_in_order() {
        let ctx = Ctx::inference().with_segments(vec![0..2, 2..5]);
        assert!(segments(&ctx, 2, 5).is_ok());
        assert!(segments(&ctx, 3, 5).is_err());
        assert!(segments(&ctx, 2, 6).is_err());
        let gap = Ctx::inference().with_segments(vec![0..2, 3..5]);
        assert!(segments(&gap, 2, 5).is_err());
        assert!(segments(&Ctx::inference(), 1, 5).is_err());
    }

    #[test]
    fn per_segment_pads_narrower_outputs() {
        let dev = &Device::Cpu;
        let x = Tensor::arange(0f32, 6.0, dev)
            .unwrap()
            .reshape((3, 2))
            .unwrap();
        let ctx = Ctx::inference().with_segments(vec![0..1, 1..3]);
        let widths = [1usize, 2];
        let y = per_segment(&widths, &[&x], 1, &ctx, |w, xs| Ok(xs[0].narrow(1, 0, *w)?)).unwrap();
        assert_eq!(
            y.to_vec2::<f32>().unwrap(),
            vec![vec![0.0, 0.0], vec![2.0, 3.0], vec![4.0, 5.0]]
        );
        let t = Tensor::zeros(2, DType::F32, dev).unwrap();
        assert!(same([&t, &t.clone()].into_iter()));
        assert!(!same([&t, &t.copy().unwrap()].into_iter()));
        assert!(same_opt([None, None].into_iter()));
        assert!(!same_opt([Some(&t), None].into_iter()));
    }
}
