//! The gemm calls under the linear op and attention: the forward's product tiled among
//! the threads onto the bias rows (`gemm_linear`), the strided products of the backward and
//! of attention's heads (`gemm_into`), and the orders a weight may lie in.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, Layout, Storage, Tensor};
use rayon::prelude::*;

use super::common::{par_fill, slice};

/// How a weight W (out, in) lies in memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Order {
    /// Row-major, as torch and the checkpoints keep it.
    Rows,
    /// Column-major: the contiguous (in, out) transpose, viewed as W
    /// ([`columns`](super::linear::columns)).
    Cols,
}

/// Which of W's orders a layout is, if either (a 2-D one with its rows or its columns
/// contiguous).
pub(super) fn order(l: &Layout) -> Option<Order> {
    if l.is_contiguous() {
        Some(Order::Rows)
    } else if l.dims().len() == 2 && l.transpose(0, 1).is_ok_and(|t| t.is_contiguous()) {
        Some(Order::Cols)
    } else {
        None
    }
}

/// W's elements and their order, from a layout in which W's rows or its columns are
/// contiguous.
pub(super) fn weight_slice<'a>(
    s: &'a CpuStorage,
    l: &Layout,
) -> candle_core::Result<(&'a [f32], Order)> {
    match order(l) {
        Some(Order::Cols) => Ok((slice(s, &l.transpose(0, 1)?)?, Order::Cols)),
        _ => Ok((slice(s, l)?, Order::Rows)),
    }
}

/// Run `f` on the f32 data of a CPU weight matrix in its own order (copied to rows if it
/// is in neither).
pub(super) fn with_weight<R>(
    w: &Tensor,
    f: impl FnOnce(&[f32], Order) -> R,
) -> candle_core::Result<R> {
    let w = match order(w.layout()) {
        Some(_) => w.clone(),
        None => w.contiguous()?,
    };
    let (storage, layout) = w.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("fused op on a non-CPU tensor");
    };
    let (w, order) = weight_slice(cpu, layout)?;
    Ok(f(w, order))
}

/// An elementwise function applied to x before it enters the gemm (GELU for the FFN output).
pub(super) type Prologue = fn(&mut [MaybeUninit<f32>], &[f32]);

/// f(x) (rows, in) · Wᵀ (+ b) for row-major x and W (out, in), f a prologue or the
/// identity: each thread takes one tile of the output and makes one single-threaded gemm
/// call that accumulates onto its tile's bias rows: no zero-filled output and no second
/// pass for the bias, which candle's matmul + broadcast_add spend (a sixth of an inference
/// forward in `perf`). gemm's own threading synchronises inside every call, which `perf`
/// showed as spinning.
///
/// The tiles are column blocks (blocks of W's rows) where W has enough rows: gemm packs
/// the W it is given, strided, before the product, and a thread that takes a block of
/// x's rows instead packs the whole of W, each thread again. Splitting W among the
/// threads packs it once (docs/performance.md, "The forward's gemm").
///
/// W's elements lie in `order`: torch's rows, or columns (an inference store's frozen
/// weights, [`columns`](super::linear::columns)), which gemm reads as a row-major
/// right-hand side, its fast case.
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_linear(
    x: &[f32],
    (w, order): (&[f32], Order),
    b: Option<&[f32]>,
    rows: usize,
    d_in: usize,
    d_out: usize,
    prologue: Option<Prologue>,
) -> Vec<f32> {
    assert_eq!(x.len(), rows * d_in, "gemm_linear: x is not (rows, in)");
    assert_eq!(w.len(), d_out * d_in, "gemm_linear: W is not (out, in)");
    if let Some(b) = b {
        assert_eq!(b.len(), d_out, "gemm_linear: b is not (out)");
    }
    let fx;
    let x = match prologue {
        Some(f) => {
            // SAFETY: chunk c of the output is beside x's elements [4096·c, 4096·c +
            // o.len()), of o's length, and the prologues are elementwise kernels that
            // write every element of an o as long as their x.
            fx = unsafe { par_fill(x.len(), 4096, |c, o| f(o, &x[c * 4096..][..o.len()])) };
            &fx[..]
        }
        None => x,
    };
    let tiles = Tiles::new(rows, d_out, rayon::current_num_threads().max(1));
    let mut y: Vec<f32> = Vec::with_capacity(rows * d_out);
    let out = SendPtr(y.as_mut_ptr());
    (0..tiles.count()).into_par_iter().for_each(|t| {
        let (r0, r1, c0, c1) = tiles.tile(t);
        let (nr, nc) = (r1 - r0, c1 - c0);
        if nr == 0 || nc == 0 {
            return;
        }
        // SAFETY: the tiles partition [0, rows) × [0, d_out) (`Tiles::tile`), so rows
        // r0..r1, columns c0..c1 of y (capacity rows·d_out, row-major) belong to this
        // task alone, and row r0's first element is in bounds.
        let dst = unsafe { out.get().add(r0 * d_out + c0) };
        for r in 0..nr {
            // SAFETY: row r of this task's tile: nc elements inside y's capacity, written
            // by no other task; MaybeUninit, so nothing uninitialised is read.
            let row = unsafe {
                std::slice::from_raw_parts_mut(dst.add(r * d_out) as *mut MaybeUninit<f32>, nc)
            };
            match b {
                Some(b) => row.iter_mut().zip(&b[c0..c1]).for_each(|(o, &v)| {
                    o.write(v);
                }),
                None => row.iter_mut().for_each(|o| {
                    o.write(0.0);
                }),
            }
        }
        if d_in == 0 {
            return; // an empty sum: the tile is the bias rows
        }
        let x = &x[r0 * d_in..r1 * d_in];
        // Wᵀ's columns c0..c1: (in, nc) at (row stride, column stride).
        let (w, w_rs, w_cs) = match order {
            Order::Rows => (&w[c0 * d_in..c1 * d_in], 1, d_in),
            Order::Cols => (&w[c0..], d_out, 1),
        };
        // SAFETY: the tile at dst holds (nr, nc) with rows d_out apart, inside y and
        // initialised above (read with alpha 1), written by this task only; x's slice
        // holds (nr, in) row-major; W's slice holds Wᵀ's (in, nc) block at (w_rs, w_cs):
        // rows, (nc, in) row-major read with row stride 1 and column stride in; columns,
        // the (in, out) matrix from column c0 on, whose last element read, (in − 1)·out +
        // c1 − 1 − c0, is inside it. Every index gemm forms from these dimensions and
        // strides is in bounds, and neither shared input overlaps y.
        unsafe {
            gemm::gemm(
                nr,
                nc,
                d_in,
                dst,
                1,
                d_out as isize,
                true,
                x.as_ptr(),
                1,
                d_in as isize,
                w.as_ptr(),
                w_cs as isize,
                w_rs as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    });
    // SAFETY: the tiles partition the rows·d_out elements (`Tiles::tile`, checked by
    // `tiles_partition_the_output`) and each task wrote its whole tile, bias or zero
    // first, before the parallel loop returned.
    unsafe { y.set_len(rows * d_out) };
    y
}

/// y's buffer, shared by the tasks of `gemm_linear`, each of which writes its own tile.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: only `gemm_linear` makes one, and its tasks write disjoint tiles through it.
unsafe impl Send for SendPtr {}
// SAFETY: as for Send.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// How `gemm_linear` splits a (rows, out) product among `threads`: into as many column
/// blocks as the columns allow at 128 or more each (block edges a multiple of 16, the
/// microkernel's height), then each column block into row blocks for the other threads.
struct Tiles {
    rows: usize,
    cols: usize,
    row_blocks: usize,
    col_blocks: usize,
    col_step: usize,
}

impl Tiles {
    fn new(rows: usize, cols: usize, threads: usize) -> Self {
        let col_blocks = (cols / 128).clamp(1, threads);
        let row_blocks = threads.div_ceil(col_blocks).clamp(1, rows.max(1));
        let col_step = cols.div_ceil(col_blocks).next_multiple_of(16).max(1);
        Self {
            rows,
            cols,
            row_blocks,
            col_blocks,
            col_step,
        }
    }

    fn count(&self) -> usize {
        self.row_blocks * self.col_blocks
    }

    /// Tile t's rows [r0, r1) and columns [c0, c1). The tiles partition the matrix: row
    /// blocks by proportional bounds, column blocks at multiples of `col_step`, the last
    /// running to the end (a tile may be empty).
    fn tile(&self, t: usize) -> (usize, usize, usize, usize) {
        let (rb, cb) = (t / self.col_blocks, t % self.col_blocks);
        let r0 = rb * self.rows / self.row_blocks;
        let r1 = (rb + 1) * self.rows / self.row_blocks;
        let c0 = (cb * self.col_step).min(self.cols);
        let c1 = if cb + 1 == self.col_blocks {
            self.cols
        } else {
            ((cb + 1) * self.col_step).min(self.cols)
        };
        (r0, r1, c0, c1)
    }
}

/// A matrix in a slice: (data, row stride, column stride).
pub(crate) type Strided<'a> = (&'a [f32], usize, usize);

/// (m, k) · (k, n) into a new row-major (m, n).
pub(super) fn gemm(m: usize, k: usize, n: usize, lhs: Strided, rhs: Strided) -> Vec<f32> {
    let mut dst = vec![0f32; m * n];
    gemm_into(&mut dst, n, m, k, n, lhs, rhs, parallelism());
    dst
}

/// dst (m, n), rows `dst_rs` apart, = lhs (m, k) · rhs (k, n), overwriting dst.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_into(
    dst: &mut [f32],
    dst_rs: usize,
    m: usize,
    k: usize,
    n: usize,
    lhs: Strided,
    rhs: Strided,
    parallelism: gemm::Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    // Whether a (r, c) matrix at these strides fits in `len` elements: its last element,
    // (r − 1)·rs + (c − 1)·cs, is an index of the slice (no overflow: r and c are ≥ 1).
    let fits = |len: usize, rs: usize, cs: usize, r: usize, c: usize| {
        (r - 1)
            .checked_mul(rs)
            .zip((c - 1).checked_mul(cs))
            .and_then(|(a, b)| a.checked_add(b))
            .is_some_and(|last| last < len)
    };
    // The callers check their shapes first: these are the last line against a bug.
    assert!(fits(dst.len(), dst_rs, 1, m, n), "gemm: dst out of bounds");
    if k == 0 {
        dst.chunks_mut(dst_rs)
            .take(m)
            .for_each(|r| r[..n].fill(0.0));
        return;
    }
    assert!(
        fits(lhs.0.len(), lhs.1, lhs.2, m, k),
        "gemm: lhs out of bounds"
    );
    assert!(
        fits(rhs.0.len(), rhs.1, rhs.2, k, n),
        "gemm: rhs out of bounds"
    );
    // SAFETY: m, n, k ≥ 1, and the asserts put the last element each matrix's strides
    // reach (so every element, the strides being non-negative) inside dst, lhs and rhs;
    // dst is exclusively borrowed, so it does not overlap the shared lhs and rhs; with
    // read_dst false gemm only writes dst.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            false,
            lhs.0.as_ptr(),
            lhs.2 as isize,
            lhs.1 as isize,
            rhs.0.as_ptr(),
            rhs.2 as isize,
            rhs.1 as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

pub(crate) fn parallelism() -> gemm::Parallelism {
    match rayon::current_num_threads() {
        1 => gemm::Parallelism::None,
        n => gemm::Parallelism::Rayon(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_partition_the_output() {
        for (rows, cols, threads) in [
            (1, 1, 1),
            (7, 2, 2),
            (1, 1000, 16),
            (300, 300, 2),
            (5, 300, 3),
            (1024, 768, 2),
            (512, 4096, 16),
            (3, 130, 64),
        ] {
            let tiles = Tiles::new(rows, cols, threads);
            assert!(
                tiles.count() <= threads.max(1) * 2,
                "{rows}x{cols}/{threads}"
            );
            let mut hits = vec![0u8; rows * cols];
            for t in 0..tiles.count() {
                let (r0, r1, c0, c1) = tiles.tile(t);
                assert!(r0 <= r1 && r1 <= rows && c0 <= c1 && c1 <= cols);
                for r in r0..r1 {
                    hits[r * cols + c0..r * cols + c1]
                        .iter_mut()
                        .for_each(|h| *h += 1);
                }
            }
            assert!(
                hits.iter().all(|&h| h == 1),
                "{rows}x{cols} on {threads} threads"
            );
        }
    }

    #[test]
    fn gemm_refuses_strides_that_leave_its_slices() {
        let run = |dst_len: usize, lhs_len: usize| {
            std::panic::catch_unwind(|| {
                let mut dst = vec![0f32; dst_len];
                let (lhs, rhs) = (vec![1f32; lhs_len], vec![1f32; 6]);
                gemm_into(
                    &mut dst,
                    3,
                    2,
                    2,
                    3,
                    (&lhs, 2, 1),
                    (&rhs, 3, 1),
                    gemm::Parallelism::None,
                );
                dst
            })
        };
        assert_eq!(run(6, 4).unwrap(), vec![2.0; 6]);
        assert!(run(5, 4).is_err(), "dst one short");
        assert!(run(6, 3).is_err(), "lhs one short");
        // Strides whose last index overflows usize are refused, not wrapped.
        let huge = std::panic::catch_unwind(|| {
            let mut dst = vec![0f32; 4];
            let one = [1f32; 3];
            gemm_into(
                &mut dst,
                usize::MAX,
                3,
                1,
                1,
                (&one, 1, 1),
                (&one, 1, 1),
                gemm::Parallelism::None,
            );
        });
        assert!(huge.is_err());
    }
}
