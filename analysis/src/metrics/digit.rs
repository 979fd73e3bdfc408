//! Per-digit progress measures (docs/metrics.md, 'Per-digit metrics'): loss and accuracy, split by carry kind, and the
//! naive-sum lens that separates "which two digits can it be" (`pair_mass_loss`) from "did a
//! carry come in" (`pair_loss`).
//!
//! Everything is computed in f64 from log-probabilities (a stable log-softmax), so the losses
//! stay finite and exact for confident models and `loss = pair_mass_loss + pair_loss` holds per
//! example to rounding.

use digitlab::log_softmax::{first_argmax, log_softmax};
use digitlab::task::{CarryKind, Labels};

/// Number of answer digits `0..9`; logits beyond these (the `+` and `=` outputs) only enter the
/// softmax normaliser.
const N_DIGITS: usize = 10;

/// The progress measures of one target digit over an eval set.
///
/// Means over an empty set are NaN.
#[derive(Clone, Debug, PartialEq)]
pub struct DigitMetrics {
    pub n_examples: usize,
    /// Mean `-log p[t]`.
    pub loss: f64,
    /// Mean `[argmax p = t]`; ties go to the first maximum.
    pub accuracy: f64,
    /// Loss and accuracy per carry kind, in `CarryKind::ALL` order, for the kinds present.
    pub by_carry_kind: Vec<CarryKindMetrics>,
    /// Naive-sum lens: `p_delta[d]` = mean `p[(v + d) mod 10]` over all examples.
    pub p_delta: [f64; 10],
    /// `p_delta` over the examples with carry-in 0 (NaN if there are none).
    pub p_delta_carry0: [f64; 10],
    /// `p_delta` over the examples with carry-in 1 (NaN if there are none).
    pub p_delta_carry1: [f64; 10],
    /// Mean `-log p[v]`.
    pub loss_naive: f64,
    /// Mean `-log p[(v + 1) mod 10]`.
    pub loss_naive_plus1: f64,
    /// Mean `-log(p[v] + p[(v + 1) mod 10])`: probability outside the two candidates.
    pub pair_mass_loss: f64,
    /// Mean `-log(p[t] / (p[v] + p[(v + 1) mod 10]))`: how well the carry is decided.
    pub pair_loss: f64,
}

/// Loss and accuracy over the examples of one carry kind.
#[derive(Clone, Debug, PartialEq)]
pub struct CarryKindMetrics {
    pub kind: CarryKind,
    pub n_examples: usize,
    pub loss: f64,
    pub accuracy: f64,
}

/// The per-digit metrics of one digit from its logits, `labels.len() × n_out` row-major.
///
/// The softmax runs over all `n_out >= 10` outputs; outputs 10 and 11 (`+`, `=`) only enter the
/// normaliser. Labels must satisfy `true_digit = (naive_digit + carry_in) mod 10`, as
/// [`digitlab::task::Pair::labels`] guarantees.
///
/// # Panics
/// If `n_out < 10` or `logits.len() != labels.len() * n_out`.
pub fn digit_metrics(logits: &[f32], n_out: usize, labels: &[Labels]) -> DigitMetrics {
    assert!(
        n_out >= N_DIGITS,
        "n_out = {n_out}: the logits must cover the ten digits"
    );
    assert_eq!(
        logits.len(),
        labels.len() * n_out,
        "logits must be n_examples × n_out"
    );

    let mut log_p = vec![0.0; n_out];
    let mut loss = 0.0;
    let mut correct = 0usize;
    let mut kind_count = [0usize; 3];
    let mut kind_loss = [0.0; 3];
    let mut kind_correct = [0usize; 3];
    let mut p_delta_sum = [[0.0; N_DIGITS]; 2];
    let mut carry_count = [0usize; 2];
    let mut loss_naive = 0.0;
    let mut loss_naive_plus1 = 0.0;
    let mut pair_mass_loss = 0.0;
    let mut pair_loss = 0.0;

    for (row, label) in logits.chunks_exact(n_out).zip(labels) {
        log_softmax(row, &mut log_p);
        let t = usize::from(label.true_digit);
        let v = usize::from(label.naive_digit);
        let v_plus1 = (v + 1) % N_DIGITS;
        let carry = usize::from(label.carry_in);
        let kind = CarryKind::ALL
            .iter()
            .position(|&k| k == label.carry_kind)
            .expect("CarryKind::ALL lists every kind");

        let hit = usize::from(first_argmax(row) == t);
        loss -= log_p[t];
        correct += hit;
        kind_count[kind] += 1;
        kind_loss[kind] -= log_p[t];
        kind_correct[kind] += hit;

        carry_count[carry] += 1;
        for (d, sum) in p_delta_sum[carry].iter_mut().enumerate() {
            *sum += log_p[(v + d) % N_DIGITS].exp();
        }

        let log_pair_mass = log_add_exp(log_p[v], log_p[v_plus1]);
        loss_naive -= log_p[v];
        loss_naive_plus1 -= log_p[v_plus1];
        pair_mass_loss -= log_pair_mass;
        pair_loss -= log_p[t] - log_pair_mass;
    }

    let n = labels.len();
    let mean = |sum: f64, count: usize| sum / count as f64;
    let mean_p_delta = |sum: [f64; N_DIGITS], count: usize| sum.map(|s| mean(s, count));
    let all_p_delta_sum: [f64; N_DIGITS] =
        std::array::from_fn(|d| p_delta_sum[0][d] + p_delta_sum[1][d]);
    let by_carry_kind = CarryKind::ALL
        .iter()
        .enumerate()
        .filter(|&(i, _)| kind_count[i] > 0)
        .map(|(i, &kind)| CarryKindMetrics {
            kind,
            n_examples: kind_count[i],
            loss: mean(kind_loss[i], kind_count[i]),
            accuracy: mean(kind_correct[i] as f64, kind_count[i]),
        })
        .collect();

    DigitMetrics {
        n_examples: n,
        loss: mean(loss, n),
        accuracy: mean(correct as f64, n),
        by_carry_kind,
        p_delta: mean_p_delta(all_p_delta_sum, n),
        p_delta_carry0: mean_p_delta(p_delta_sum[0], carry_count[0]),
        p_delta_carry1: mean_p_delta(p_delta_sum[1], carry_count[1]),
        loss_naive: mean(loss_naive, n),
        loss_naive_plus1: mean(loss_naive_plus1, n),
        pair_mass_loss: mean(pair_mass_loss, n),
        pair_loss: mean(pair_loss, n),
    }
}

/// `log(e^x + e^y)` without leaving the log domain.
fn log_add_exp(x: f64, y: f64) -> f64 {
    let (hi, lo) = if x >= y { (x, y) } else { (y, x) };
    hi + (lo - hi).exp().ln_1p()
}

#[cfg(test)]
mod tests {
    use super::*;
    use digitlab::task::Pair;

    use crate::test_rng::SplitMix64;

    /// Labels of random 5-digit pairs, each for a random digit `k` from `digits`.
    fn random_labels(rng: &mut SplitMix64, n_examples: usize, digits: &[usize]) -> Vec<Labels> {
        (0..n_examples)
            .map(|_| {
                let pair = Pair::from_numbers(5, rng.below(100_000), rng.below(100_000));
                let k = digits[rng.below(digits.len() as u64) as usize];
                pair.labels(k)
            })
            .collect()
    }

    fn random_logits(rng: &mut SplitMix64, n: usize, scale: f64) -> Vec<f32> {
        (0..n).map(|_| rng.range(-scale, scale) as f32).collect()
    }

    /// The spec's definitions with plain loops over probabilities (no log-domain tricks).
    fn reference(logits: &[f32], n_out: usize, labels: &[Labels]) -> DigitMetrics {
        let n = labels.len();
        let probs = |i: usize| -> Vec<f64> {
            let row = &logits[i * n_out..(i + 1) * n_out];
            let z: f64 = row.iter().map(|&x| (x as f64).exp()).sum();
            row.iter().map(|&x| (x as f64).exp() / z).collect()
        };
        let is_correct = |i: usize, t: usize| -> bool {
            let row = &logits[i * n_out..(i + 1) * n_out];
            let best = (0..n_out)
                .find(|&j| row.iter().all(|&x| x <= row[j]))
                .unwrap();
            best == t
        };
        let mut kinds = vec![];
        for kind in CarryKind::ALL {
            let mut count = 0;
            let mut kind_loss = 0.0;
            let mut kind_correct = 0.0;
            for (i, label) in labels.iter().enumerate() {
                if label.carry_kind == kind {
                    let t = label.true_digit as usize;
                    count += 1;
                    kind_loss += -probs(i)[t].ln();
                    if is_correct(i, t) {
                        kind_correct += 1.0;
                    }
                }
            }
            if count > 0 {
                kinds.push(CarryKindMetrics {
                    kind,
                    n_examples: count,
                    loss: kind_loss / count as f64,
                    accuracy: kind_correct / count as f64,
                });
            }
        }
        let mut loss = 0.0;
        let mut correct = 0.0;
        let mut loss_naive = 0.0;
        let mut loss_naive_plus1 = 0.0;
        let mut pair_mass_loss = 0.0;
        let mut pair_loss = 0.0;
        let mut p_delta = [0.0; 10];
        let mut p_delta_c = [[0.0; 10]; 2];
        let mut n_c = [0.0; 2];
        for (i, label) in labels.iter().enumerate() {
            let p = probs(i);
            let t = label.true_digit as usize;
            let v = label.naive_digit as usize;
            let w = (v + 1) % 10;
            let c = label.carry_in as usize;
            loss += -p[t].ln();
            if is_correct(i, t) {
                correct += 1.0;
            }
            loss_naive += -p[v].ln();
            loss_naive_plus1 += -p[w].ln();
            pair_mass_loss += -(p[v] + p[w]).ln();
            pair_loss += -(p[t] / (p[v] + p[w])).ln();
            n_c[c] += 1.0;
            for d in 0..10 {
                p_delta[d] += p[(v + d) % 10];
                p_delta_c[c][d] += p[(v + d) % 10];
            }
        }
        let nf = n as f64;
        DigitMetrics {
            n_examples: n,
            loss: loss / nf,
            accuracy: correct / nf,
            by_carry_kind: kinds,
            p_delta: p_delta.map(|x| x / nf),
            p_delta_carry0: p_delta_c[0].map(|x| x / n_c[0]),
            p_delta_carry1: p_delta_c[1].map(|x| x / n_c[1]),
            loss_naive: loss_naive / nf,
            loss_naive_plus1: loss_naive_plus1 / nf,
            pair_mass_loss: pair_mass_loss / nf,
            pair_loss: pair_loss / nf,
        }
    }

    fn assert_close(name: &str, got: f64, want: f64, tol: f64) {
        let both_nan = got.is_nan() && want.is_nan();
        assert!(
            both_nan || (got - want).abs() <= tol,
            "{name}: got {got}, want {want}"
        );
    }

    fn assert_same_metrics(got: &DigitMetrics, want: &DigitMetrics, tol: f64) {
        assert_eq!(got.n_examples, want.n_examples);
        let scalars = [
            ("loss", got.loss, want.loss),
            ("accuracy", got.accuracy, want.accuracy),
            ("loss_naive", got.loss_naive, want.loss_naive),
            (
                "loss_naive_plus1",
                got.loss_naive_plus1,
                want.loss_naive_plus1,
            ),
            ("pair_mass_loss", got.pair_mass_loss, want.pair_mass_loss),
            ("pair_loss", got.pair_loss, want.pair_loss),
        ];
        for (name, g, w) in scalars {
            assert_close(name, g, w, tol);
        }
        for d in 0..10 {
            assert_close("p_delta", got.p_delta[d], want.p_delta[d], tol);
            let (g0, w0) = (got.p_delta_carry0[d], want.p_delta_carry0[d]);
            assert_close("p_delta_carry0", g0, w0, tol);
            let (g1, w1) = (got.p_delta_carry1[d], want.p_delta_carry1[d]);
            assert_close("p_delta_carry1", g1, w1, tol);
        }
        assert_eq!(got.by_carry_kind.len(), want.by_carry_kind.len());
        for (g, w) in got.by_carry_kind.iter().zip(&want.by_carry_kind) {
            assert_eq!(g.kind, w.kind);
            assert_eq!(g.n_examples, w.n_examples);
            assert_close("kind loss", g.loss, w.loss, tol);
            assert_close("kind accuracy", g.accuracy, w.accuracy, tol);
        }
    }

    #[test]
    fn random_logits_match_a_plain_loop_reimplementation_of_the_spec() {
        let mut rng = SplitMix64::new(1);
        for n_out in [10, 12] {
            let labels = random_labels(&mut rng, 3000, &[0, 1, 2, 3, 4, 5]);
            let logits = random_logits(&mut rng, labels.len() * n_out, 4.0);
            let got = digit_metrics(&logits, n_out, &labels);
            assert_eq!(got.by_carry_kind.len(), 3, "all three kinds are present");
            assert!(got.by_carry_kind.iter().all(|k| k.n_examples > 50));
            assert!(got.accuracy > 0.0);
            assert_same_metrics(&got, &reference(&logits, n_out, &labels), 1e-10);
        }
    }

    #[test]
    fn tied_logits_count_the_first_maximum() {
        let mut rng = SplitMix64::new(2);
        let labels = random_labels(&mut rng, 2000, &[1, 3]);
        // Integer logits in 0..3 make ties common.
        let logits: Vec<f32> = (0..labels.len() * 12)
            .map(|_| rng.below(3) as f32)
            .collect();
        let got = digit_metrics(&logits, 12, &labels);
        assert!(got.accuracy > 0.0);
        assert_same_metrics(&got, &reference(&logits, 12, &labels), 1e-10);
        // All equal: the first output, digit 0, is the prediction.
        let label = Pair::from_numbers(1, 0, 0).labels(0);
        assert_eq!(digit_metrics(&[1.0; 12], 12, &[label]).accuracy, 1.0);
    }

    #[test]
    fn absent_carry_kinds_are_skipped_and_absent_carry_in_gives_nan() {
        let mut rng = SplitMix64::new(3);
        // The units digit never has a carry in.
        let labels = random_labels(&mut rng, 500, &[0]);
        let logits = random_logits(&mut rng, labels.len() * 12, 3.0);
        let got = digit_metrics(&logits, 12, &labels);
        assert_eq!(got.by_carry_kind.len(), 1);
        assert_eq!(got.by_carry_kind[0].kind, CarryKind::None);
        assert_eq!(got.by_carry_kind[0].n_examples, 500);
        assert!(got.p_delta_carry1.iter().all(|p| p.is_nan()));
        assert_eq!(got.p_delta_carry0, got.p_delta);
        assert_same_metrics(&got, &reference(&logits, 12, &labels), 1e-10);
    }

    /// Checks `loss = pair_mass_loss + pair_loss` on every example separately, all finite.
    fn assert_loss_splits_per_example(logits: &[f32], n_out: usize, labels: &[Labels]) {
        for (row, label) in logits.chunks_exact(n_out).zip(labels) {
            let m = digit_metrics(row, n_out, std::slice::from_ref(label));
            assert!(m.loss.is_finite() && m.pair_mass_loss.is_finite() && m.pair_loss.is_finite());
            assert!(
                (m.loss - (m.pair_mass_loss + m.pair_loss)).abs() <= 1e-9,
                "{m:?}"
            );
        }
    }

    #[test]
    fn loss_is_pair_mass_loss_plus_pair_loss_on_random_logits() {
        let mut rng = SplitMix64::new(4);
        let labels = random_labels(&mut rng, 2000, &[0, 1, 2, 3, 4, 5]);
        let logits = random_logits(&mut rng, labels.len() * 12, 6.0);
        assert_loss_splits_per_example(&logits, 12, &labels);
        let m = digit_metrics(&logits, 12, &labels);
        assert!((m.loss - (m.pair_mass_loss + m.pair_loss)).abs() <= 1e-9);
    }

    #[test]
    fn loss_is_pair_mass_loss_plus_pair_loss_on_confident_logits() {
        let mut rng = SplitMix64::new(5);
        let labels = random_labels(&mut rng, 3000, &[0, 1, 2, 3, 4, 5]);
        for margin in [60.0f32, 1000.0] {
            // Confident on the true digit, on the other candidate, or on the `=` output.
            let logits: Vec<f32> = labels
                .iter()
                .enumerate()
                .flat_map(|(i, label)| {
                    let v = label.naive_digit as usize;
                    let other = if label.carry_in == 0 { (v + 1) % 10 } else { v };
                    let favourite = [label.true_digit as usize, other, 11][i % 3];
                    (0..12).map(move |o| if o == favourite { margin } else { 0.0 })
                })
                .collect();
            assert_loss_splits_per_example(&logits, 12, &labels);
        }
        // Exact values at margin 60, far below f64's epsilon: right, and both candidates wrong.
        let label = Pair::from_numbers(1, 3, 4).labels(0); // t = v = 7
        let tiny = (-60.0f64).exp();
        let mut right = [0.0f32; 12];
        right[7] = 60.0;
        let m = digit_metrics(&right, 12, &[label]);
        assert!((m.loss / (11.0 * tiny) - 1.0).abs() <= 1e-12, "{m:?}");
        assert!((m.pair_loss / tiny - 1.0).abs() <= 1e-12, "{m:?}");
        assert!(
            (m.pair_mass_loss / (10.0 * tiny) - 1.0).abs() <= 1e-12,
            "{m:?}"
        );
        let mut elsewhere = [0.0f32; 12];
        elsewhere[2] = 60.0;
        let m = digit_metrics(&elsewhere, 12, &[label]);
        assert!((m.pair_loss - 2f64.ln()).abs() <= 1e-12, "{m:?}");
        assert!(
            (m.loss - (60.0 + (11.0 * tiny).ln_1p())).abs() <= 1e-12,
            "{m:?}"
        );
    }
}
