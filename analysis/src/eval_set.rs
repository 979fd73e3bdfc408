//! The balanced evaluation set (docs/metrics.md, 'The balanced eval set'): every digit pair
//! seen in the same contexts, so per-pair and Fourier measures compare like with like.
//!
//! For a digit `k < n`, `M` random contexts fix every digit except `a_k` and `b_k`, and each is
//! crossed with all 100 pairs `(a_k, b_k)`, so every pair sees the same contexts and the Fourier
//! analysis can read each context's 10x10 grid. Order: context-major, then `a_k * 10 + b_k`
//! (the order `fourier.rs` expects). For `k = n` the set is `100 M` random examples.

use anyhow::{bail, Result};
use digitlab::config::TrainConfig;
use digitlab::resources::MemoryNeed;
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

/// The program itself (code, candle, rayon, polars): measured at about 40 MB.
const PROGRAM_BYTES: f64 = 64.0 * 1024.0 * 1024.0;
/// Copies of one example's logits and MLP activations a replay holds at once: the f32 values
/// of the forward pass, their f64 copies in the metrics and the Fourier transforms of them.
const PER_EXAMPLE_COPIES: f64 = 4.0;

/// What the eval sets of `digits` digits with `contexts` contexts each take in memory, with the
/// logits and MLP activations of `threads` snapshots replayed at once: an estimate from the
/// sizes alone (nothing is allocated), refused by [`check_eval_memory`] when it cannot fit.
pub fn eval_memory(
    cfg: &TrainConfig,
    digits: usize,
    contexts: usize,
    threads: usize,
) -> MemoryNeed {
    let examples = 100.0 * contexts as f64;
    let n = cfg.task.n_digits as f64;
    // Tokens, labels and the pair each example was built from (two digit vectors).
    let per_example = 4.0 * cfg.task.n_ctx() as f64
        + std::mem::size_of::<Labels>() as f64
        + std::mem::size_of::<Pair>() as f64
        + 2.0 * n;
    let per_replay = 4.0 * PER_EXAMPLE_COPIES * (cfg.model.d_vocab_out + cfg.model.d_mlp) as f64;
    MemoryNeed::from_parts(vec![
        ("the program".into(), PROGRAM_BYTES),
        (
            format!("eval sets of {digits} digit(s) x {examples} examples"),
            digits as f64 * examples * per_example,
        ),
        (
            format!("logits and activations of {threads} snapshot(s) replayed at once"),
            threads as f64 * examples * per_replay,
        ),
    ])
}

/// Refuse `--contexts` at least 1 and small enough for this machine's memory (see
/// [`eval_memory`]), before anything is built or written.
pub fn check_eval_memory(
    cfg: &TrainConfig,
    digits: usize,
    contexts: usize,
    threads: usize,
) -> Result<()> {
    if contexts == 0 {
        bail!("--contexts must be at least 1");
    }
    eval_memory(cfg, digits, contexts, threads).check_machine(&format!(
        "pass a smaller --contexts than {contexts} (the default is 100)"
    ))
}
