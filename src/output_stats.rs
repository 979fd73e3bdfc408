//! Summaries of the output logits that explain vanishing gradients and loss spikes: their
//! logsumexp, and how often the float32 softmax rounds the target's probability to exactly 1
//! (at which point that example's gradient is exactly zero).

use rayon::prelude::*;

use crate::exp::exp;
use crate::log_softmax::first_argmax;

/// Output-logit statistics over a set of predictions.
#[derive(Clone, Debug, PartialEq)]
pub struct OutputStats {
    pub logsumexp_mean: f32,
    pub logsumexp_max: f32,
    /// Fraction of predictions whose f32 softmax gives the target probability exactly 1.
    pub saturated_fraction: f32,
    /// Mean cross-entropy of each trained digit, in f64 (the per-digit loss of the log).
    pub digit_loss: Vec<f32>,
}

/// What one row of logits contributes to [`OutputStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RowStats {
    /// The row's logsumexp, in f64.
    pub logsumexp: f64,
    /// Whether float32 softmax gives the target probability exactly 1.
    pub saturated: bool,
}

/// Float32 softmax's terms of a row of logits, as the training step computes them: writes
/// `terms[i] = exp(x_i - max)` with [`crate::exp`] and returns `(top, max, denom)`, `max =
/// x_top` the row's first largest logit and `denom` the terms' float32 sum in order.
pub fn softmax_terms(row: &[f32], terms: &mut [f32]) -> (usize, f32, f32) {
    let (top, max) = shift_by_max(row, terms);
    // Exponentials first, then their sum in order: the first loop vectorises.
    terms.iter_mut().for_each(|e| *e = exp(*e));
    (top, max, terms.iter().sum())
}

/// The first half of [`softmax_terms`], for callers that take the exponentials of many rows
/// at once ([`crate::exp::exp_in_place`]): writes `shifted[i] = x_i - max` and returns `(top,
/// max)`.
pub fn shift_by_max(row: &[f32], shifted: &mut [f32]) -> (usize, f32) {
    let top = first_argmax(row);
    let max = row[top];
    for (e, &x) in shifted.iter_mut().zip(row) {
        *e = x - max;
    }
    (top, max)
}

/// A row's statistics from its [`softmax_terms`] (which a cross-entropy computes anyway):
/// `exps`, `denom`, `max` and `top` as that returns them. The saturation test is float32
/// softmax's own division; the logsumexp sums the terms other than the top one (exactly 1) in
/// f64 and adds them with `ln_1p`, as [`crate::log_softmax`] does.
pub fn row_stats(exps: &[f32], denom: f32, max: f32, top: usize, target: usize) -> RowStats {
    let rest: f64 = exps
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != top)
        .map(|(_, &e)| f64::from(e))
        .sum();
    RowStats {
        logsumexp: f64::from(max) + rest.ln_1p(),
        saturated: exps[target] / denom == 1.0,
    }
}

/// `logits`: `[example][digit][output]` row-major (`n_digits` trained digits per example);
/// `targets`: one per prediction.
///
/// Rows are summarised in parallel (a full-batch modular-addition step has 3,831 rows of 113
/// logits) and their sums taken in row order, so the result does not depend on the number of
/// threads. One exponential per logit serves both statistics (see [`row_stats`]): rounding
/// `x - max` to float32 costs the log's losses at most about 1e-6 of their value (a second,
/// f64 exponential per logit took 9% of a full-batch modular-addition step); the analyses
/// work in f64 throughout.
pub fn output_stats(logits: &[f32], n_out: usize, targets: &[u32], n_digits: usize) -> OutputStats {
    let rows: Vec<RowStats> = logits
        .par_chunks_exact(n_out)
        .zip(targets.par_iter())
        .map_init(
            || vec![0.0; n_out],
            |exps, (row, &target)| {
                let (top, max, denom) = softmax_terms(row, exps);
                row_stats(exps, denom, max, top, target as usize)
            },
        )
        .collect();
    combine(&rows, logits, n_out, targets, n_digits)
}

/// [`OutputStats`] from every row's [`RowStats`], summed in row order.
pub fn combine(
    rows: &[RowStats],
    logits: &[f32],
    n_out: usize,
    targets: &[u32],
    n_digits: usize,
) -> OutputStats {
    let mut sum = 0f64;
    let mut max = f64::NEG_INFINITY;
    let mut totals = vec![0f64; n_digits];
    for (i, (row, &target)) in rows.iter().zip(targets).enumerate() {
        sum += row.logsumexp;
        max = max.max(row.logsumexp);
        totals[i % n_digits] += row.logsumexp - f64::from(logits[i * n_out + target as usize]);
    }
    let saturated = rows.iter().filter(|r| r.saturated).count();
    let n = targets.len().max(1) as f64;
    let per_digit = (targets.len() / n_digits).max(1) as f64;
    OutputStats {
        logsumexp_mean: (sum / n) as f32,
        logsumexp_max: max as f32,
        saturated_fraction: (saturated as f64 / n) as f32,
        digit_loss: totals.into_iter().map(|t| (t / per_digit) as f32).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether float32 softmax rounds the target's probability to exactly 1, decided in f64:
    /// with the target the largest logit, the f32 denominator `1 + sum_{i != t} e^(x_i - x_t)`
    /// rounds to 1 when the sum is below half an f32 ulp of 1 (2^-24).
    fn saturates(row: &[f32], target: usize) -> bool {
        let top = f64::from(row[target]);
        let rest: f64 = row
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != target)
            .map(|(_, &x)| (f64::from(x) - top).exp())
            .sum();
        row.iter().all(|&x| x <= row[target]) && rest < 2f64.powi(-24)
    }

    #[test]
    fn saturated_fraction_counts_rows_whose_float32_softmax_is_exactly_one() {
        // Ten outputs; the margin of the target over the other nine logits decides. Margins 20
        // and 30 saturate (9 e^-20 = 1.9e-8 < 2^-24 = 6.0e-8); 10 and 15 do not (9 e^-15 =
        // 2.8e-6); a row whose largest logit is not the target does not either.
        let row = |target: usize, margin: f32, other_top: Option<usize>| {
            let mut r = vec![0.0f32; 10];
            r[target] = margin;
            if let Some(o) = other_top {
                r[o] = margin + 5.0;
            }
            r
        };
        let rows = [
            (row(3, 20.0, None), 3u32),
            (row(7, 30.0, None), 7),
            (row(0, 10.0, None), 0),
            (row(5, 15.0, None), 5),
            (row(2, 40.0, Some(4)), 2),
        ];
        let logits: Vec<f32> = rows.iter().flat_map(|(r, _)| r.clone()).collect();
        let targets: Vec<u32> = rows.iter().map(|(_, t)| *t).collect();
        let expected = rows
            .iter()
            .filter(|(r, t)| saturates(r, *t as usize))
            .count() as f32
            / rows.len() as f32;
        assert_eq!(
            expected, 0.4,
            "the rows were chosen so that two of five saturate"
        );
        let stats = output_stats(&logits, 10, &targets, 1);
        assert_eq!(stats.saturated_fraction, expected);

        // Moderate logits never saturate.
        let mild: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.5).collect();
        let stats = output_stats(&mild, 10, &[3, 1, 4, 1, 5], 1);
        assert_eq!(stats.saturated_fraction, 0.0);
    }

    #[test]
    fn logsumexp_statistics_match_a_plain_loop() {
        let logits: Vec<f32> = (0..30).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
        let lse: Vec<f64> = logits
            .chunks(10)
            .map(|r| r.iter().map(|&x| f64::from(x).exp()).sum::<f64>().ln())
            .collect();
        let stats = output_stats(&logits, 10, &[0, 1, 2], 1);
        let mean = lse.iter().sum::<f64>() / 3.0;
        let max = lse.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        assert!((f64::from(stats.logsumexp_mean) - mean).abs() < 1e-5);
        assert!((f64::from(stats.logsumexp_max) - max).abs() < 1e-5);
    }

    #[test]
    fn digit_losses_match_a_plain_loop() {
        // Two examples of three digits: rows are [example][digit][output].
        let logits: Vec<f32> = (0..60)
            .map(|i| ((i * 13) % 17) as f32 * 0.3 - 2.0)
            .collect();
        let targets = [1u32, 4, 9, 0, 7, 3];
        let stats = output_stats(&logits, 10, &targets, 3);
        for digit in 0..3 {
            let plain: f64 = (0..2)
                .map(|example| {
                    let i = example * 3 + digit;
                    let row = &logits[i * 10..][..10];
                    let lse = row.iter().map(|&x| f64::from(x).exp()).sum::<f64>().ln();
                    lse - f64::from(row[targets[i] as usize])
                })
                .sum::<f64>()
                / 2.0;
            let got = f64::from(stats.digit_loss[digit]);
            assert!(
                (got - plain).abs() < 1e-6,
                "digit {digit}: {got} vs {plain}"
            );
        }
    }
}
