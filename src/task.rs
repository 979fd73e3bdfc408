//! The addition task (docs/metrics.md, 'The task'): token ids, the two layouts, seekable batches and the
//! per-example labels (true digit, naive digit, carry-in, carry kind) that training and the
//! analyzer share.
//!
//! Numbers are kept as digit arrays, least significant first, so that `a[k]` is the digit `a_k` of docs/metrics.md.

use anyhow::{bail, Result};
use arrayvec::ArrayVec;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::modp::ModpTask;

/// Token id of `+`.
pub const PLUS: u32 = 10;
/// Token id of `=`.
pub const EQUALS: u32 = 11;
/// Input vocabulary: the ten digits, `+` and `=`.
pub const D_VOCAB: usize = 12;
/// The most digits an operand may have (the sum then still fits comfortably in a u64).
pub const MAX_DIGITS: usize = 9;

/// Where the answer digits are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// `a + b =`; one target digit read at the `=` position.
    Prompt,
    /// `a + b = s_n … s_0`, teacher-forced; digit `s_k` is read at the position before it.
    Answer,
}

impl Layout {
    /// The name in `config.json`, on the command line and in the `layout` column of a summary.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Prompt => "prompt",
            Layout::Answer => "answer",
        }
    }
}

/// What the model is asked to do: `n_digits`-digit addition, read in `layout`, trained on
/// the answer digits `targets` (indices `k` of `s_k`, sorted, unique); or, with `modp`,
/// modular addition, whose one answer is read at `=` (then `n_digits` 1, the prompt layout
/// and target 0).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskConfig {
    pub n_digits: usize,
    pub layout: Layout,
    pub targets: Vec<usize>,
    /// Modular addition instead of digit addition. Absent from an addition config, which
    /// therefore serialises (and hashes) exactly as before the field existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modp: Option<ModpTask>,
}

impl TaskConfig {
    /// Modular addition with modulus `p`: the fields of addition at the values that make its
    /// one answer the target 0 read at `=`, the prompt layout's last position.
    pub fn modp(p: usize, train_fraction: f64, eval_every: u64) -> TaskConfig {
        TaskConfig {
            n_digits: 1,
            layout: Layout::Prompt,
            targets: vec![0],
            modp: Some(ModpTask {
                p,
                train_fraction,
                eval_every,
            }),
        }
    }

    /// Input vocabulary: [`D_VOCAB`] for addition, `p + 1` for modular addition.
    pub fn d_vocab(&self) -> usize {
        self.modp.as_ref().map_or(D_VOCAB, ModpTask::d_vocab)
    }

    /// Checks the combination a user asked for; the message says what to change.
    pub fn validate(&self) -> Result<()> {
        if let Some(modp) = &self.modp {
            modp.validate()?;
            if self.n_digits != 1 || self.layout != Layout::Prompt || self.targets != [0] {
                bail!("modular addition has one answer read at `=`: n_digits 1, the prompt layout, target 0");
            }
            return Ok(());
        }
        let n = self.n_digits;
        if !(1..=MAX_DIGITS).contains(&n) {
            bail!("--n-digits must be between 1 and {MAX_DIGITS}, got {n}");
        }
        if self.targets.is_empty() {
            bail!("no target digit: pass --digit K or --digits K,L,… or --digits all");
        }
        if self.targets.windows(2).any(|w| w[0] >= w[1]) {
            bail!(
                "the target digits {:?} must be distinct and in increasing order",
                self.targets
            );
        }
        if let Some(&k) = self.targets.iter().find(|&&k| k > n) {
            bail!("target digit {k} does not exist: a {n}-digit sum has digits 0 (units) to {n}");
        }
        if self.layout == Layout::Prompt && self.targets.len() != 1 {
            bail!(
                "the prompt layout reads one digit at the `=` position; train several digits \
                 with --layout answer"
            );
        }
        Ok(())
    }

    /// Sequence length: `2n+2` for the prompt layout, `3n+3` with the answer appended, 3 for
    /// modular addition (`x y =`).
    pub fn n_ctx(&self) -> usize {
        if self.modp.is_some() {
            return crate::modp::N_CTX;
        }
        match self.layout {
            Layout::Prompt => 2 * self.n_digits + 2,
            Layout::Answer => 3 * self.n_digits + 3,
        }
    }

    /// The position whose logits predict answer digit `s_k`.
    pub fn predicting_position(&self, k: usize) -> usize {
        if self.modp.is_some() {
            return crate::modp::N_CTX - 1;
        }
        let equals = 2 * self.n_digits + 1;
        match self.layout {
            Layout::Prompt => equals,
            // s_n is the first answer token, at equals + 1; it is predicted at `=`.
            Layout::Answer => equals + (self.n_digits - k),
        }
    }

    /// The tokens of `a + b` in this layout.
    pub fn tokens(&self, pair: &Pair) -> Vec<u32> {
        let mut tokens = Vec::with_capacity(self.n_ctx());
        self.push_tokens(pair, &mut tokens);
        tokens
    }

    /// [`TaskConfig::tokens`], appended to `tokens`.
    fn push_tokens(&self, pair: &Pair, tokens: &mut Vec<u32>) {
        tokens.extend(pair.a.iter().rev().map(|&d| d as u32));
        tokens.push(PLUS);
        tokens.extend(pair.b.iter().rev().map(|&d| d as u32));
        tokens.push(EQUALS);
        if self.layout == Layout::Answer {
            tokens.extend(pair.sum_digits().iter().rev().map(|&d| d as u32));
        }
    }
}

/// Two operands as digits, least significant first (`a[k]` is `a_k`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    pub a: Digits,
    pub b: Digits,
}

/// The digits of one operand, held inline (no allocation per pair).
pub type Digits = ArrayVec<u8, MAX_DIGITS>;

/// The digits `s_0 … s_n` of a sum, or the carries into positions `0..=n`.
pub type SumDigits = ArrayVec<u8, { MAX_DIGITS + 1 }>;

/// Whether and how a carry reaches a digit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CarryKind {
    /// No carry into the digit.
    None,
    /// `a_{k-1} + b_{k-1} >= 10`.
    Direct,
    /// `a_{k-1} + b_{k-1} = 9` and a carry came into `k-1`.
    Cascade,
}

impl CarryKind {
    pub const ALL: [CarryKind; 3] = [CarryKind::None, CarryKind::Direct, CarryKind::Cascade];

    pub fn name(self) -> &'static str {
        match self {
            CarryKind::None => "none",
            CarryKind::Direct => "direct",
            CarryKind::Cascade => "cascade",
        }
    }
}

/// What an example asks of answer digit `k`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Labels {
    /// `s_k`.
    pub true_digit: u8,
    /// `(a_k + b_k) mod 10`, or 0 for `k = n`.
    pub naive_digit: u8,
    /// The carry into position `k`; `true_digit = (naive_digit + carry_in) mod 10`.
    pub carry_in: u8,
    pub carry_kind: CarryKind,
}

impl Pair {
    /// Builds a pair from integers below `10^n`.
    pub fn from_numbers(n: usize, a: u64, b: u64) -> Pair {
        let digits = |mut x: u64| {
            (0..n)
                .map(|_| {
                    let d = (x % 10) as u8;
                    x /= 10;
                    d
                })
                .collect()
        };
        Pair {
            a: digits(a),
            b: digits(b),
        }
    }

    pub fn n_digits(&self) -> usize {
        self.a.len()
    }

    /// The carries into each position `0..=n` (`carry[0] = 0`).
    fn carries(&self) -> SumDigits {
        let mut carry = SumDigits::new();
        carry.push(0);
        for k in 0..self.n_digits() {
            carry.push(u8::from(self.a[k] + self.b[k] + carry[k] >= 10));
        }
        carry
    }

    /// The digits `s_0 … s_n` of `a + b`.
    pub fn sum_digits(&self) -> SumDigits {
        let carry = self.carries();
        let n = self.n_digits();
        let mut sum: SumDigits = (0..n)
            .map(|k| (self.a[k] + self.b[k] + carry[k]) % 10)
            .collect();
        sum.push(carry[n]);
        sum
    }

    /// The labels of answer digit `k` (`0..=n`).
    pub fn labels(&self, k: usize) -> Labels {
        let n = self.n_digits();
        let carry = self.carries();
        let naive_digit = if k < n {
            (self.a[k] + self.b[k]) % 10
        } else {
            0
        };
        let carry_in = carry[k];
        let carry_kind = match (carry_in, k) {
            (0, _) | (_, 0) => CarryKind::None,
            _ if self.a[k - 1] + self.b[k - 1] >= 10 => CarryKind::Direct,
            _ => CarryKind::Cascade,
        };
        Labels {
            true_digit: (naive_digit + carry_in) % 10,
            naive_digit,
            carry_in,
            carry_kind,
        }
    }
}

/// A batch of examples with their tokens, `examples × n_ctx` row-major, and targets.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// The addition operands; empty for modular addition, whose batches are tokens and
    /// targets only.
    pub pairs: Vec<Pair>,
    pub tokens: Vec<u32>,
    /// The target of each example and trained digit, example-major (`[example][target
    /// index]`), the order of the logits at the predicting positions.
    pub targets: Vec<u32>,
    pub examples: usize,
}

impl Batch {
    /// Tokens, pairs and target digits `s_k` for the given pairs.
    pub fn from_pairs(task: &TaskConfig, pairs: Vec<Pair>) -> Batch {
        let mut tokens = Vec::with_capacity(pairs.len() * task.n_ctx());
        let mut targets = Vec::with_capacity(pairs.len() * task.targets.len());
        for pair in &pairs {
            task.push_tokens(pair, &mut tokens);
            let sum = pair.sum_digits();
            targets.extend(task.targets.iter().map(|&k| u32::from(sum[k])));
        }
        Batch {
            examples: pairs.len(),
            pairs,
            tokens,
            targets,
        }
    }

    /// A batch of one target per example given by its tokens (modular addition).
    pub fn of_tokens(tokens: Vec<u32>, targets: Vec<u32>) -> Batch {
        Batch {
            pairs: Vec::new(),
            tokens,
            examples: targets.len(),
            targets,
        }
    }
}

/// Training batch `index` of the run seeded by `seed`: for addition, uniform operands in
/// `[0, 10^n)`; for modular addition, the whole training set (full batch).
///
/// A pure function of `(seed, index)`, so resume and replay regenerate any batch directly.
pub fn training_batch(task: &TaskConfig, seed: u64, index: u64, batch_size: usize) -> Batch {
    if let Some(modp) = &task.modp {
        return modp.batch(&modp.split(seed).train);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Stream 0 is reserved for weight init; batch i uses stream i + 1.
    rng.set_stream(index + 1);
    let n = task.n_digits;
    let pairs = (0..batch_size)
        .map(|_| Pair {
            a: (0..n).map(|_| rng.random_range(0..10u8)).collect(),
            b: (0..n).map(|_| rng.random_range(0..10u8)).collect(),
        })
        .collect();
    Batch::from_pairs(task, pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_of_the_prompt_layout_read_most_significant_first() {
        let task = TaskConfig {
            n_digits: 3,
            layout: Layout::Prompt,
            targets: vec![0],
            modp: None,
        };
        let pair = Pair::from_numbers(3, 123, 45);
        assert_eq!(task.tokens(&pair), vec![1, 2, 3, PLUS, 0, 4, 5, EQUALS]);
        assert_eq!(task.n_ctx(), 8);
        assert_eq!(task.predicting_position(0), 7);
    }
}
