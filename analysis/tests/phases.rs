//! Plateau detection on synthetic loss curves with known plateaus: ln 10 until batch 1600, a
//! drop to the carry entropy held until batch 3000, then a drop to 1e-4; sampled every 50
//! batches like the eval snapshots and every batch with noise like the training log.

use digitlab_analysis::metrics::phases::{
    carry_probability, detect_phases, reference_levels, PhaseOptions, PhaseSummary, SeriesError,
    CARRY_ENTROPY_LEVEL, LN10_LEVEL, OTHER_LEVEL, ZERO_LEVEL,
};
use std::f64::consts::LN_10;

#[path = "common/rng.rs"]
mod rng;
use rng::SplitMix64;

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Carry entropy of the tens digit, H(0.45) in nats.
fn tens_carry_entropy() -> f64 {
    let p = carry_probability(1);
    -p * p.ln() - (1.0 - p) * (1.0 - p).ln()
}

/// Three plateaus in log-loss: ln 10 until about 1600 (drop centred at 1700, width 30 batches),
/// H(0.45) until about 3000 (drop centred at 3100), then 1e-4.
fn three_plateaus(batch: u64) -> f64 {
    let b = batch as f64;
    let (top, middle, bottom) = (LN_10.ln(), tens_carry_entropy().ln(), 1e-4f64.ln());
    (top + (middle - top) * sigmoid((b - 1700.0) / 30.0)
        + (bottom - middle) * sigmoid((b - 3100.0) / 30.0))
    .exp()
}

/// Batches `0, step, 2 step, …, last`.
fn batches(step: u64, last: u64) -> Vec<u64> {
    (0..=last / step).map(|i| i * step).collect()
}

fn noisy(batches: &[u64], curve: impl Fn(u64) -> f64, sigma: f64, seed: u64) -> Vec<f64> {
    let mut rng = SplitMix64::new(seed);
    batches
        .iter()
        .map(|&b| curve(b) * (sigma * rng.normal()).exp())
        .collect()
}

fn tens_digit(batches: &[u64], loss: &[f64]) -> PhaseSummary {
    let options = PhaseOptions::default();
    let levels = reference_levels(carry_probability(1), &options);
    detect_phases(batches, loss, &levels, &options).expect("a valid curve")
}

fn reached(summary: &PhaseSummary, level: &str) -> Option<u64> {
    summary
        .reaches
        .iter()
        .find(|r| r.level == level)
        .and_then(|r| r.batch)
}

fn labels(summary: &PhaseSummary) -> Vec<&str> {
    summary.plateaus.iter().map(|p| p.level.as_str()).collect()
}

fn assert_near(value: Option<u64>, expected: u64, tolerance: u64, what: &str) {
    let value = value.unwrap_or_else(|| panic!("{what}: None, expected about {expected}"));
    assert!(
        value.abs_diff(expected) <= tolerance,
        "{what}: {value}, expected {expected} ± {tolerance}"
    );
}

/// How far before (after) its centre a sigmoid step of `drop` in log-loss and width `width`
/// is the default edge tolerance away from the level it leaves (reaches).
fn knee_offset(width: f64, drop: f64) -> f64 {
    width * (drop / PhaseOptions::default().edge_tolerance - 1.0).ln()
}

/// The checks shared by the samplings of the three-plateau curve; `tolerance` in batches. With
/// noise of 0.1 in ln(loss) per batch (more than on the ln 10 plateaus of real runs, where every
/// example has a loss of ln 10), the running median sags up to about 0.02 in the last half
/// window before a drop, so edges can come up to 100 batches early.
fn assert_three_plateaus(summary: &PhaseSummary, tolerance: u64) {
    assert_eq!(
        labels(summary),
        [LN10_LEVEL, CARRY_ENTROPY_LEVEL, ZERO_LEVEL],
        "{summary:#?}"
    );
    let first_drop = LN_10.ln() - tens_carry_entropy().ln();
    let second_drop = tens_carry_entropy().ln() - 1e-4f64.ln();
    // About 1577, 1823 and 2917.
    let leaves_ln10 = 1700.0 - knee_offset(30.0, first_drop);
    let reaches_carry = 1700.0 + knee_offset(30.0, first_drop);
    let leaves_carry = 3100.0 - knee_offset(30.0, second_drop);
    assert_near(
        summary.leaves_ln10_batch,
        leaves_ln10 as u64,
        tolerance,
        "leaves ln10",
    );
    assert_near(
        reached(summary, CARRY_ENTROPY_LEVEL),
        reaches_carry as u64,
        tolerance,
        "reaches carry entropy",
    );
    assert_near(
        Some(summary.plateaus[1].end_batch),
        leaves_carry as u64,
        tolerance,
        "leaves carry entropy",
    );
    // ln(loss) crosses ln(1e-3) at 3100 + 30 ln(0.74 / 0.26) ≈ 3131.
    assert_near(
        reached(summary, ZERO_LEVEL),
        3131,
        tolerance,
        "reaches zero",
    );
    assert_eq!(summary.final_level, ZERO_LEVEL);
    assert!(!summary.still_descending);
    assert!((summary.plateaus[0].median_loss / LN_10 - 1.0).abs() < 0.02);
    assert!((summary.plateaus[1].median_loss / tens_carry_entropy() - 1.0).abs() < 0.02);
}

#[test]
fn three_plateaus_sampled_every_50_batches() {
    let b = batches(50, 6000);
    let loss: Vec<f64> = b.iter().map(|&x| three_plateaus(x)).collect();
    assert_three_plateaus(&tens_digit(&b, &loss), 60);
}

#[test]
fn three_plateaus_sampled_every_batch_with_noise() {
    let b = batches(1, 6000);
    let loss = noisy(&b, three_plateaus, 0.1, 7);
    assert_three_plateaus(&tens_digit(&b, &loss), 100);
}

#[test]
fn snapshot_and_training_log_samplings_agree() {
    let sparse = batches(50, 6000);
    let sparse_loss = noisy(&sparse, three_plateaus, 0.01, 1);
    let dense = batches(1, 6000);
    let dense_loss = noisy(&dense, three_plateaus, 0.1, 2);
    let (a, b) = (
        tens_digit(&sparse, &sparse_loss),
        tens_digit(&dense, &dense_loss),
    );
    assert_eq!(labels(&a), labels(&b));
    for (pa, pb) in a.plateaus.iter().zip(&b.plateaus) {
        assert!(
            pa.start_batch.abs_diff(pb.start_batch) <= 60,
            "{pa:?} {pb:?}"
        );
        assert!(pa.end_batch.abs_diff(pb.end_batch) <= 60, "{pa:?} {pb:?}");
    }
}

#[test]
fn spikes_on_a_plateau_do_not_end_it() {
    let b = batches(1, 6000);
    let mut loss = noisy(&b, three_plateaus, 0.1, 3);
    // Spikes of a factor 10 lasting 40 batches while on ln 10 and on the carry entropy.
    for start in [700usize, 2400] {
        for value in &mut loss[start..start + 40] {
            *value *= 10.0;
        }
    }
    assert_three_plateaus(&tens_digit(&b, &loss), 100);
}

#[test]
fn a_curve_still_falling_at_the_end_is_still_descending() {
    // ln 10 until 1000, then falling by 1 in ln(loss) per 1000 batches until 3000.
    let b = batches(1, 3000);
    let curve = |x: u64| LN_10 * (-(x.saturating_sub(1000) as f64) / 1000.0).exp();
    let summary = tens_digit(&b, &noisy(&b, curve, 0.1, 4));
    assert!(summary.still_descending, "{summary:#?}");
    assert_eq!(labels(&summary), [LN10_LEVEL]);
    assert_near(summary.leaves_ln10_batch, 1000, 100, "leaves ln10");
    assert!((summary.final_loss / (LN_10 * (-2f64).exp()) - 1.0).abs() < 0.2);
    assert_eq!(summary.final_level, OTHER_LEVEL);
}

#[test]
fn a_curve_that_never_leaves_ln10() {
    let b = batches(1, 5000);
    let summary = tens_digit(&b, &noisy(&b, |_| LN_10, 0.05, 5));
    assert_eq!(labels(&summary), [LN10_LEVEL]);
    assert_eq!(summary.plateaus[0].start_batch, 0);
    assert_eq!(summary.plateaus[0].end_batch, 5000);
    assert_eq!(summary.leaves_ln10_batch, None);
    assert_eq!(reached(&summary, CARRY_ENTROPY_LEVEL), None);
    assert_eq!(reached(&summary, ZERO_LEVEL), None);
    assert_eq!(summary.final_level, LN10_LEVEL);
    assert!(!summary.still_descending);
}

#[test]
fn units_digit_goes_from_ln10_straight_to_zero() {
    // The units digit has no carry: its levels are ln 10 and zero only.
    let options = PhaseOptions::default();
    let levels = reference_levels(carry_probability(0), &options);
    let names: Vec<&str> = levels.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, [LN10_LEVEL, ZERO_LEVEL]);
    let b = batches(50, 4000);
    let curve = |x: u64| {
        (LN_10.ln() + (1e-5f64.ln() - LN_10.ln()) * sigmoid((x as f64 - 2000.0) / 40.0)).exp()
    };
    let loss: Vec<f64> = b.iter().map(|&x| curve(x)).collect();
    let summary = detect_phases(&b, &loss, &levels, &options).unwrap();
    assert_eq!(labels(&summary), [LN10_LEVEL, ZERO_LEVEL]);
    let leaves_ln10 = 2000.0 - knee_offset(40.0, LN_10.ln() - 1e-5f64.ln());
    assert_near(
        summary.leaves_ln10_batch,
        leaves_ln10 as u64,
        60,
        "leaves ln10",
    );
    assert_eq!(summary.reaches.len(), 1);
    assert_eq!(summary.final_level, ZERO_LEVEL);
}

#[test]
fn a_digit_that_leaves_ln10_within_the_first_window_still_gets_the_batch() {
    // The ln 10 stretch at the start is shorter than min_plateau_batches (200): it is cut by
    // the start of training, so it still counts.
    let options = PhaseOptions::default();
    let levels = reference_levels(carry_probability(0), &options);
    let b = batches(10, 2000);
    let curve = |x: u64| {
        (LN_10.ln() + (1e-5f64.ln() - LN_10.ln()) * sigmoid((x as f64 - 250.0) / 20.0)).exp()
    };
    let loss: Vec<f64> = b.iter().map(|&x| curve(x)).collect();
    let summary = detect_phases(&b, &loss, &levels, &options).unwrap();
    let leaves_ln10 = 250.0 - knee_offset(20.0, LN_10.ln() - 1e-5f64.ln());
    assert_near(
        summary.leaves_ln10_batch,
        leaves_ln10 as u64,
        60,
        "leaves ln10",
    );
    assert_eq!(summary.final_level, ZERO_LEVEL);
}

#[test]
fn a_plateau_away_from_every_level_is_other() {
    let b = batches(50, 3000);
    let loss = vec![0.1; b.len()];
    let summary = tens_digit(&b, &loss);
    assert_eq!(labels(&summary), [OTHER_LEVEL]);
    assert_eq!(summary.final_level, OTHER_LEVEL);
    assert_eq!(summary.leaves_ln10_batch, None);
}

#[test]
fn exact_zero_losses_are_on_the_zero_level() {
    let b = batches(50, 3000);
    let loss: Vec<f64> = b
        .iter()
        .map(|&x| if x < 1000 { LN_10 } else { 0.0 })
        .collect();
    let summary = tens_digit(&b, &loss);
    assert_eq!(labels(&summary), [LN10_LEVEL, ZERO_LEVEL]);
    assert_eq!(summary.final_loss, 0.0);
    assert_eq!(summary.final_level, ZERO_LEVEL);
    assert!(!summary.still_descending);
}

#[test]
fn nan_and_negative_samples_are_skipped() {
    let b = batches(50, 6000);
    let clean: Vec<f64> = b.iter().map(|&x| three_plateaus(x)).collect();
    let mut dirty = clean.clone();
    for i in (3..dirty.len()).step_by(7) {
        dirty[i] = [f64::NAN, f64::INFINITY, -1.0][i % 3];
    }
    // A missing sample makes the centred windows lopsided: edges move by up to 3 samples.
    assert_three_plateaus(&tens_digit(&b, &dirty), 150);
}

#[test]
fn reference_levels_of_the_tens_digit() {
    let options = PhaseOptions::default();
    let levels = reference_levels(0.45, &options);
    let names: Vec<&str> = levels.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, [LN10_LEVEL, CARRY_ENTROPY_LEVEL, ZERO_LEVEL]);
    assert!((levels[0].loss - 10f64.ln()).abs() < 1e-12);
    assert!((levels[1].loss - 0.688_130).abs() < 1e-5);
    assert_eq!(levels[2].loss, options.zero_floor);
    assert!((carry_probability(1) - 0.45).abs() < 1e-12);
    assert!((carry_probability(2) - 0.495).abs() < 1e-12);
    assert!((carry_probability(usize::MAX) - 0.5).abs() < 1e-12);
    // Not a probability: no carry level.
    assert_eq!(reference_levels(f64::NAN, &options).len(), 2);
    assert_eq!(reference_levels(1.5, &options).len(), 2);
}

#[test]
fn degenerate_curves_do_not_panic() {
    let options = PhaseOptions::default();
    let levels = reference_levels(0.45, &options);
    let run = |b: &[u64], l: &[f64]| detect_phases(b, l, &levels, &options);
    assert_eq!(run(&[], &[]), Err(SeriesError::NoUsableLoss));
    assert_eq!(
        run(&[0, 50], &[f64::NAN, f64::NAN]),
        Err(SeriesError::NoUsableLoss)
    );
    assert_eq!(
        run(&[0, 50], &[1.0]),
        Err(SeriesError::LengthMismatch {
            batches: 2,
            losses: 1
        })
    );
    assert_eq!(
        run(&[0, 50, 50], &[1.0; 3]),
        Err(SeriesError::BatchesNotIncreasing { index: 1 })
    );
    assert_eq!(
        run(&[100, 50], &[1.0; 2]),
        Err(SeriesError::BatchesNotIncreasing { index: 0 })
    );

    let one = run(&[100], &[LN_10]).unwrap();
    assert!(one.plateaus.is_empty());
    assert_eq!(one.final_loss, LN_10);
    assert_eq!(one.final_level, LN10_LEVEL);
    assert_eq!(one.leaves_ln10_batch, None);
    assert!(!one.still_descending);

    let flat_zero = run(&[0, 1000, 2000], &[0.0; 3]).unwrap();
    assert_eq!(labels(&flat_zero), [ZERO_LEVEL]);
    assert_eq!(reached(&flat_zero, ZERO_LEVEL), Some(0));

    let huge = run(&[0, u64::MAX], &[1.0, f64::MAX]).unwrap();
    assert_eq!(huge.final_level, OTHER_LEVEL);

    assert!(detect_phases(&[0, 1], &[1.0, 1.0], &[], &options).is_ok());
}

#[test]
fn invalid_options_are_errors() {
    let levels = reference_levels(0.45, &PhaseOptions::default());
    for options in [
        PhaseOptions {
            flat_slope: 0.0,
            ..PhaseOptions::default()
        },
        PhaseOptions {
            level_tolerance: f64::NAN,
            ..PhaseOptions::default()
        },
        PhaseOptions {
            edge_tolerance: -1.0,
            ..PhaseOptions::default()
        },
        PhaseOptions {
            zero_floor: f64::INFINITY,
            ..PhaseOptions::default()
        },
    ] {
        assert!(matches!(
            detect_phases(&[0, 1], &[1.0, 1.0], &levels, &options),
            Err(SeriesError::InvalidOption { .. })
        ));
    }
    // A zero-width smoothing window is allowed: no smoothing, slopes between neighbours.
    let options = PhaseOptions {
        smoothing_batches: 0,
        ..PhaseOptions::default()
    };
    let b = batches(50, 6000);
    let loss: Vec<f64> = b.iter().map(|&x| three_plateaus(x)).collect();
    let summary = detect_phases(&b, &loss, &levels, &options).unwrap();
    assert_eq!(
        labels(&summary),
        [LN10_LEVEL, CARRY_ENTROPY_LEVEL, ZERO_LEVEL]
    );
}
