//! Modular addition, the task of Nanda et al., "Progress measures for grokking via mechanistic
//! interpretability" (2023) (docs/metrics.md, 'The task'): tokens `x y =` with `x, y` in
//! `0..p`, `=` the token `p`, the answer `(x + y) mod p` read at `=`; a seeded split of the
//! `p²` pairs into a training set (trained on full-batch) and a test set.
//!
//! The split is a pure function of `(p, train_fraction, seed)`, all in `config.json`, so a
//! resumed run and every analysis rebuild the same sets from the config alone.

use anyhow::{bail, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::task::Batch;

/// Sequence length: `x y =`.
pub const N_CTX: usize = 3;
/// The ChaCha8 stream of the split. Stream 0 seeds the weights and streams `i + 1` the addition
/// batches; the split takes the last one, which no batch index reaches.
const SPLIT_STREAM: u64 = u64::MAX;

/// The modular-addition task as `config.json` records it (`task.modp`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModpTask {
    /// The modulus; the operands are `0..p`.
    pub p: usize,
    /// The fraction of the `p²` pairs in the training set, in (0, 1).
    pub train_fraction: f64,
    /// The test loss is logged every `eval_every` epochs (steps), from epoch 0.
    pub eval_every: u64,
}

// `train_fraction` is a finite number once validated; a config is compared as a whole.
impl Eq for ModpTask {}

/// The pairs `(x, y)` of the training and the test set, each sorted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    pub train: Vec<(u32, u32)>,
    pub test: Vec<(u32, u32)>,
}

impl ModpTask {
    /// The largest modulus: `p²` pairs must stay a set the analyses hold in memory.
    pub const MAX_P: usize = 1000;

    /// Checks the options; the message names the one to change.
    pub fn validate(&self) -> Result<()> {
        if !(3..=Self::MAX_P).contains(&self.p) {
            bail!("--p must be between 3 and {}, got {}", Self::MAX_P, self.p);
        }
        let f = self.train_fraction;
        if !(f.is_finite() && f > 0.0 && f < 1.0) {
            bail!("--train-fraction must be strictly between 0 and 1, got {f}");
        }
        let n_train = self.n_train();
        if n_train == 0 || n_train == self.p * self.p {
            bail!(
                "--train-fraction {f} of {} pairs leaves the training or the test set empty",
                self.p * self.p
            );
        }
        if self.eval_every == 0 {
            bail!("--eval-every must be at least 1");
        }
        Ok(())
    }

    /// Input tokens: `0..p` and `=` (`p`).
    pub fn d_vocab(&self) -> usize {
        self.p + 1
    }

    /// The token `=`.
    pub fn equals(&self) -> u32 {
        self.p as u32
    }

    /// Pairs in the training set: `round(train_fraction * p²)`.
    pub fn n_train(&self) -> usize {
        (self.train_fraction * (self.p * self.p) as f64).round() as usize
    }

    /// The training and test sets of the run seeded by `seed`: the `p²` pairs shuffled by
    /// ChaCha8 (seed `seed`, its own stream), the first [`ModpTask::n_train`] for training.
    pub fn split(&self, seed: u64) -> Split {
        let p = self.p as u32;
        let mut pairs: Vec<(u32, u32)> = (0..p).flat_map(|x| (0..p).map(move |y| (x, y))).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(SPLIT_STREAM);
        pairs.shuffle(&mut rng);
        let mut test = pairs.split_off(self.n_train());
        pairs.sort_unstable();
        test.sort_unstable();
        Split { train: pairs, test }
    }

    /// The answer to `x + y`: `(x + y) mod p`.
    pub fn label(&self, x: u32, y: u32) -> u32 {
        (x + y) % self.p as u32
    }

    /// Tokens `x y =` and targets of `pairs`.
    pub fn batch(&self, pairs: &[(u32, u32)]) -> Batch {
        let tokens = pairs
            .iter()
            .flat_map(|&(x, y)| [x, y, self.equals()])
            .collect();
        let targets = pairs.iter().map(|&(x, y)| self.label(x, y)).collect();
        Batch::of_tokens(tokens, targets)
    }
}
