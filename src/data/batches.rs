//! Length-bucketed batches: examples of similar length share a batch, so padding to the
//! longest in each batch wastes little.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;

/// How many batches' worth of shuffled examples are sorted together. Large enough that
/// neighbours have similar lengths, small enough that batches stay random across epochs.
const POOL: usize = 50;

/// Training order: shuffle, sort within pools of `POOL` batches by length, cut into
/// batches, then shuffle the batches so long and short ones interleave.
pub fn bucketed(lengths: &[usize], batch_size: usize, rng: &mut StdRng) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.shuffle(rng);
    let mut batches = Vec::new();
    for pool in order.chunks_mut(batch_size * POOL) {
        pool.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
        batches.extend(pool.chunks(batch_size).map(|c| c.to_vec()));
    }
    batches.shuffle(rng);
    batches
}

/// Evaluation order: sorted by length (deterministic), so that predictions and metrics
/// are the same every time the same model scores the same split.
pub fn sorted(lengths: &[usize], batch_size: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| (lengths[i], i));
    order.chunks(batch_size).map(|c| c.to_vec()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn every_example_once_and_similar_lengths_together() {
        let lengths: Vec<usize> = (0..1000).map(|i| (i * 37) % 120 + 3).collect();
        let mut rng = StdRng::seed_from_u64(1);
        let batches = bucketed(&lengths, 8, &mut rng);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
        let padded: usize = batches
            .iter()
            .map(|b| b.len() * b.iter().map(|&i| lengths[i]).max().unwrap())
            .sum();
        let real: usize = lengths.iter().sum();
        assert!(
            (padded as f64) < 1.1 * real as f64,
            "padding overhead {padded} vs {real}"
        );
        let again = bucketed(&lengths, 8, &mut StdRng::seed_from_u64(1));
        assert_eq!(batches, again);
        assert_ne!(
            batches,
            bucketed(&lengths, 8, &mut StdRng::seed_from_u64(2))
        );
    }

    #[test]
    fn eval_order_is_sorted_and_complete() {
        let b = sorted(&[5, 1, 3, 1], 3);
        assert_eq!(b, vec![vec![1, 3, 2], vec![0]]);
    }
}
