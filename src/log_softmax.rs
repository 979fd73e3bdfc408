//! Log-softmax and mean cross-entropy of float32 logits, computed in f64: the one home of the
//! softmax arithmetic of the analyses (per-digit metrics, Fourier losses, spike attribution),
//! whose shift by the largest logit the training log (`output_stats`) shares.
//!
//! Every function shifts a row by its largest logit, so no exponential overflows, and adds the
//! other terms with `ln_1p`, so the tiny losses of a confident row (below f64's epsilon) are
//! kept instead of rounded to zero.

/// Index of the largest logit; ties go to the first (the prediction accuracy counts).
pub fn first_argmax(row: &[f32]) -> usize {
    let mut top = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[top] {
            top = i;
        }
    }
    top
}

/// The largest logit `max` of `row` and `log_rest = ln(1 + sum_{i != top} e^(x_i - max))`:
/// `logsumexp(row) = max + log_rest`, `log_softmax(row)_i = (x_i - max) - log_rest`.
fn shifted(row: &[f32]) -> (f64, f64) {
    let top = first_argmax(row);
    let max = f64::from(row[top]);
    let rest: f64 = row
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != top)
        .map(|(_, &x)| (f64::from(x) - max).exp())
        .sum();
    (max, rest.ln_1p())
}

/// Writes `log softmax(logits)` into `log_p` (same length), in f64.
pub fn log_softmax(logits: &[f32], log_p: &mut [f64]) {
    let (max, log_rest) = shifted(logits);
    for (lp, &x) in log_p.iter_mut().zip(logits) {
        *lp = (f64::from(x) - max) - log_rest;
    }
}

/// Mean cross-entropy of logits (`targets.len() × n_out` row-major) against targets, one per
/// example: the per-digit `loss` of docs/metrics.md, 'Per-digit metrics'. NaN for no examples.
///
/// # Panics
/// If `n_out` is 0, the length does not match or a target is not below `n_out`.
pub fn mean_cross_entropy(logits: &[f32], n_out: usize, targets: &[u8]) -> f64 {
    assert!(n_out > 0, "no outputs");
    assert_eq!(
        logits.len(),
        targets.len() * n_out,
        "logits must be n_examples × n_out"
    );
    let mut log_p = vec![0.0; n_out];
    let mut sum = 0.0;
    for (row, &target) in logits.chunks_exact(n_out).zip(targets) {
        log_softmax(row, &mut log_p);
        sum -= log_p[usize::from(target)];
    }
    sum / targets.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook formulas in f64, for logits small enough not to need the shift.
    fn plain_logsumexp(row: &[f32]) -> f64 {
        row.iter().map(|&x| f64::from(x).exp()).sum::<f64>().ln()
    }

    #[test]
    fn log_softmax_matches_the_textbook_formulas() {
        let row = [0.3f32, -1.2, 2.5, 2.5, 0.0, -4.0];
        let lse = plain_logsumexp(&row);
        let mut log_p = [0.0; 6];
        log_softmax(&row, &mut log_p);
        for (lp, &x) in log_p.iter().zip(&row) {
            assert!((lp - (f64::from(x) - lse)).abs() < 1e-12);
        }
        let ce = mean_cross_entropy(&row, 3, &[2, 0]);
        let want = ((lse_of(&row[..3]) - 2.5) + (lse_of(&row[3..]) - 2.5)) / 2.0;
        assert!((ce - want).abs() < 1e-12, "{ce} vs {want}");
    }

    fn lse_of(row: &[f32]) -> f64 {
        plain_logsumexp(row)
    }

    #[test]
    fn huge_logits_do_not_overflow_and_tiny_losses_survive() {
        // e^1000 overflows f64; the shifted form gives 1000 + ln(1 + e^-1000 + e^-40).
        let row = [1000f32, 0.0, 960.0];
        let mut log_p = [0.0; 3];
        log_softmax(&row, &mut log_p);
        assert_eq!(log_p[1], -1000.0 - (-40f64).exp().ln_1p());
        // The loss of the top class is about e^-40 = 4.2e-18, below f64's epsilon next to 1.
        let want = -(-40f64).exp();
        assert!((log_p[0] - want).abs() < 1e-30, "{} vs {want}", log_p[0]);
    }
}
