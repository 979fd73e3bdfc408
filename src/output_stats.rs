//! Summaries of the output logits that explain vanishing gradients and loss spikes: their
//! logsumexp, and how often the float32 softmax rounds the target's probability to exactly 1
//! (at which point that example's gradient is exactly zero).

/// Output-logit statistics over a set of predictions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OutputStats {
    pub logsumexp_mean: f32,
    pub logsumexp_max: f32,
    /// Fraction of predictions whose f32 softmax gives the target probability exactly 1.
    pub saturated_fraction: f32,
}

/// `logits`: `[prediction][output]` row-major; `targets`: one per prediction.
pub fn output_stats(logits: &[f32], n_out: usize, targets: &[u32]) -> OutputStats {
    let mut sum = 0f64;
    let mut max = f64::NEG_INFINITY;
    let mut saturated = 0usize;
    for (row, &target) in logits.chunks_exact(n_out).zip(targets) {
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        // Softmax as float32 computes it: exp(x - max) / sum.
        let denom: f32 = row.iter().map(|&x| (x - m).exp()).sum();
        if (row[target as usize] - m).exp() / denom == 1.0 {
            saturated += 1;
        }
        let lse = logsumexp(row);
        sum += lse;
        max = max.max(lse);
    }
    let n = targets.len().max(1) as f64;
    OutputStats {
        logsumexp_mean: (sum / n) as f32,
        logsumexp_max: max as f32,
        saturated_fraction: (saturated as f64 / n) as f32,
    }
}

/// Mean cross-entropy of each trained digit: `logits` are `[example][digit][output]`.
pub fn digit_losses(logits: &[f32], n_out: usize, targets: &[u32], n_digits: usize) -> Vec<f32> {
    let mut totals = vec![0f64; n_digits];
    for (i, (row, &target)) in logits.chunks_exact(n_out).zip(targets).enumerate() {
        totals[i % n_digits] += logsumexp(row) - f64::from(row[target as usize]);
    }
    let per_digit = (targets.len() / n_digits).max(1) as f64;
    totals.into_iter().map(|t| (t / per_digit) as f32).collect()
}

/// `ln sum exp(row)` in f64, shifted by the maximum so it cannot overflow.
fn logsumexp(row: &[f32]) -> f64 {
    let m = f64::from(row.iter().copied().fold(f32::NEG_INFINITY, f32::max));
    m + row
        .iter()
        .map(|&x| (f64::from(x) - m).exp())
        .sum::<f64>()
        .ln()
}
