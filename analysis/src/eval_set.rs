//! The balanced evaluation set (docs/metrics.md, 'The balanced eval set'): every digit pair
//! seen in the same contexts, so per-pair and Fourier measures compare like with like.
//!
//! For a digit `k < n`, `M` random contexts fix every digit except `a_k` and `b_k`, and each is
//! crossed with all 100 pairs `(a_k, b_k)`, so every pair sees the same contexts and the Fourier
//! analysis can read each context's 10x10 grid. Order: context-major, then `a_k * 10 + b_k`
//! (the order `fourier.rs` expects). For `k = n` the set is `100 M` random examples.

use digitlab::task::{Batch, Labels, Pair, TaskConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Examples of one digit with their labels.
pub struct EvalSet {
    pub digit: usize,
    pub n_contexts: usize,
    /// Whether the set is the context x pair grid (every digit but the final carry).
    pub is_grid: bool,
    pub batch: Batch,
    pub labels: Vec<Labels>,
}

impl EvalSet {
    /// The eval set of `digit` with `n_contexts` contexts, a pure function of `eval_seed`.
    pub fn new(task: &TaskConfig, digit: usize, n_contexts: usize, eval_seed: u64) -> EvalSet {
        let n = task.n_digits;
        let mut rng = ChaCha8Rng::seed_from_u64(eval_seed);
        rng.set_stream(digit as u64);
        let mut random_pair = || Pair {
            a: (0..n).map(|_| rng.random_range(0..10u8)).collect(),
            b: (0..n).map(|_| rng.random_range(0..10u8)).collect(),
        };
        let is_grid = digit < n;
        let pairs: Vec<Pair> = if is_grid {
            (0..n_contexts)
                .flat_map(|_| {
                    let context = random_pair();
                    (0..100u8).map(move |ab| {
                        let mut pair = context.clone();
                        pair.a[digit] = ab / 10;
                        pair.b[digit] = ab % 10;
                        pair
                    })
                })
                .collect()
        } else {
            (0..100 * n_contexts).map(|_| random_pair()).collect()
        };
        let labels = pairs.iter().map(|p| p.labels(digit)).collect();
        EvalSet {
            digit,
            n_contexts,
            is_grid,
            batch: Batch::from_pairs(task, pairs),
            labels,
        }
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The true digits, as the Fourier losses take them.
    pub fn targets(&self) -> Vec<u8> {
        self.labels.iter().map(|l| l.true_digit).collect()
    }
}
