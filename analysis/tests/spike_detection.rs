//! Spike detection on synthetic per-batch training logs: a smooth exponential decay with seeded
//! noise of ±0.1 in log10, with and without injected spikes.

use digitlab_analysis::metrics::phases::SeriesError;
use digitlab_analysis::metrics::spike_detection::{
    detect_spikes, Spike, SpikeOptions, SpikeOutcome,
};

#[path = "common/rng.rs"]
mod rng;
use rng::SplitMix64;

const BATCHES: u64 = 20_000;

/// log10 of a loss decaying from ln 10 to 1e-2 over `BATCHES` batches.
fn trend_log10(batch: u64) -> f64 {
    let (top, bottom) = (10f64.ln().log10(), -2.0);
    top + (bottom - top) * batch as f64 / BATCHES as f64
}

/// The decay with uniform noise of ±0.1 in log10.
fn decay_log10(seed: u64) -> Vec<f64> {
    let mut rng = SplitMix64::new(seed);
    (0..BATCHES)
        .map(|b| trend_log10(b) + 0.1 * rng.symmetric())
        .collect()
}

fn to_loss(log10: &[f64]) -> Vec<f64> {
    log10.iter().map(|x| 10f64.powf(*x)).collect()
}

fn all_batches() -> Vec<u64> {
    (0..BATCHES).collect()
}

fn spikes(batches: &[u64], loss: &[f64]) -> Vec<Spike> {
    detect_spikes(batches, loss, &SpikeOptions::default()).expect("a valid log")
}

/// Offsets in log10 of an injected bump, peaking at a factor 10 two batches after its start;
/// the neighbours of the peak stay at least 0.25 below it, more than the noise can make up.
const BUMP: [f64; 8] = [0.65, 0.75, 1.0, 0.75, 0.65, 0.65, 0.65, 0.65];
/// Where the bumps start.
const BUMP_STARTS: [u64; 3] = [3_000, 9_000, 15_500];

fn with_bumps(mut log10: Vec<f64>) -> Vec<f64> {
    for start in BUMP_STARTS {
        for (k, offset) in BUMP.iter().enumerate() {
            log10[start as usize + k] += offset;
        }
    }
    log10
}

#[test]
fn a_noisy_decay_has_no_spikes() {
    for seed in 0..5 {
        let found = spikes(&all_batches(), &to_loss(&decay_log10(seed)));
        assert!(found.is_empty(), "seed {seed}: {found:?}");
    }
}

#[test]
fn three_injected_bumps_are_three_spikes() {
    for seed in 0..5 {
        let log10 = with_bumps(decay_log10(seed));
        let found = spikes(&all_batches(), &to_loss(&log10));
        assert_eq!(found.len(), 3, "seed {seed}: {found:#?}");
        for (spike, start) in found.iter().zip(BUMP_STARTS) {
            assert!(spike.onset.abs_diff(start) <= 2, "{spike:?}");
            assert_eq!(spike.peak, start + 2, "{spike:?}");
            assert_eq!(spike.outcome, SpikeOutcome::Recovered);
            assert!(spike.end >= start + BUMP.len() as u64 && spike.end <= start + 12);
            assert!(
                spike.peak_ratio > 10f64.powf(0.8) && spike.peak_ratio < 10f64.powf(1.2),
                "{spike:?}"
            );
            assert!((spike.loss_peak / spike.loss_before - spike.peak_ratio).abs() < 1e-9);
            assert_eq!(spike.loss_after, 10f64.powf(log10[spike.end as usize]));
            // The baseline is the trend before the bump.
            assert!(
                (spike.loss_before.log10() - trend_log10(start)).abs() < 0.05,
                "{spike:?}"
            );
        }
    }
}

#[test]
fn a_spike_that_never_comes_back_is_open() {
    let mut log10 = decay_log10(1);
    for x in &mut log10[19_950..] {
        *x += 1.0;
    }
    let found = spikes(&all_batches(), &to_loss(&log10));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].onset, 19_950);
    assert_eq!(found[0].outcome, SpikeOutcome::Open);
    assert_eq!(found[0].end, BATCHES - 1);
}

#[test]
fn a_step_up_settles_and_the_baseline_restarts() {
    // The loss jumps by a factor 1000, comes down within 20 batches to 10 times its old level
    // and stays there; a second spike 500 batches later is measured from the new level.
    let mut log10 = decay_log10(2);
    for (k, x) in log10[5_000..].iter_mut().enumerate() {
        *x += match k {
            0..=4 => 3.0,
            5..=19 => 2.0,
            _ => 1.0,
        };
    }
    for x in &mut log10[5_500..5_505] {
        *x += 2.0;
    }
    let found = spikes(&all_batches(), &to_loss(&log10));
    assert_eq!(found.len(), 2, "{found:#?}");
    assert_eq!(found[0].onset, 5_000);
    assert_eq!(found[0].outcome, SpikeOutcome::Settled);
    assert!(
        found[0].end >= 5_020 && found[0].end <= 5_025,
        "{:?}",
        found[0]
    );
    assert!((found[0].loss_after / found[0].loss_before).log10() > 0.6);
    assert_eq!(found[1].onset, 5_500);
    assert_eq!(found[1].outcome, SpikeOutcome::Recovered);
    assert!(
        (found[1].peak_ratio.log10() - 2.0).abs() < 0.25,
        "{:?}",
        found[1]
    );
}

#[test]
fn a_long_spike_keeps_its_baseline() {
    // 80 batches at a factor 10, shorter than the window after the peak: one recovered spike.
    let mut log10 = decay_log10(3);
    for x in &mut log10[7_000..7_080] {
        *x += 1.0;
    }
    let found = spikes(&all_batches(), &to_loss(&log10));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].outcome, SpikeOutcome::Recovered);
    assert_eq!((found[0].onset, found[0].end), (7_000, 7_080));
}

#[test]
fn a_tail_above_half_the_threshold_is_part_of_the_spike() {
    // Up by a factor 30 for 5 batches, then 0.4 in log10 above the trend for 30 batches: below
    // the opening threshold but above the closing one, so the spike lasts until batch 8035.
    let mut log10 = decay_log10(8);
    for (k, x) in log10[8_000..8_035].iter_mut().enumerate() {
        *x += if k < 5 { 1.5 } else { 0.4 };
    }
    let found = spikes(&all_batches(), &to_loss(&log10));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!((found[0].onset, found[0].end), (8_000, 8_035));
    assert_eq!(found[0].outcome, SpikeOutcome::Recovered);
}

#[test]
fn a_spike_that_dips_and_rises_again_is_one_spike() {
    let mut log10 = decay_log10(4);
    // A first jump for 2 batches, back for 2, then the big spike.
    for (k, offset) in [0.8, 0.8, 0.0, 0.0, 2.0, 3.0, 2.0].iter().enumerate() {
        log10[6_000 + k] += offset;
    }
    let found = spikes(&all_batches(), &to_loss(&log10));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!((found[0].onset, found[0].peak), (6_000, 6_005));
    // With no rejoining, the first jump is a spike of its own.
    let options = SpikeOptions {
        rejoin_batches: 0,
        ..SpikeOptions::default()
    };
    let found = detect_spikes(&all_batches(), &to_loss(&log10), &options).unwrap();
    assert_eq!(found.len(), 2, "{found:?}");
}

#[test]
fn no_spike_before_the_window_is_full() {
    let mut log10 = decay_log10(5);
    log10[50] += 2.0;
    assert!(spikes(&all_batches(), &to_loss(&log10)).is_empty());
    let short: Vec<u64> = (0..100).collect();
    assert!(spikes(&short, &to_loss(&log10[..100])).is_empty());
}

#[test]
fn unusable_losses_neither_open_nor_close_a_spike() {
    let mut loss = to_loss(&with_bumps(decay_log10(6)));
    // Unusable values everywhere, including right after each onset.
    for i in (0..loss.len()).step_by(13) {
        loss[i] = [f64::NAN, 0.0, -1.0, f64::INFINITY][i % 4];
    }
    for start in BUMP_STARTS {
        loss[start as usize + 1] = f64::NAN;
    }
    let found = spikes(&all_batches(), &loss);
    assert_eq!(found.len(), 3, "{found:#?}");
    for (spike, start) in found.iter().zip(BUMP_STARTS) {
        assert!(spike.onset.abs_diff(start) <= 2, "{spike:?}");
        assert!(spike.end >= start + BUMP.len() as u64, "{spike:?}");
        assert!(spike.loss_after.is_finite() && spike.loss_after > 0.0);
    }
}

#[test]
fn sparse_batches_and_gaps_are_fine() {
    // A log resumed after a gap: batches need only increase.
    let batches: Vec<u64> = (0..300).chain(10_000..10_300).collect();
    let mut loss = vec![1.0; batches.len()];
    loss[450] = 100.0;
    let found = spikes(&batches, &loss);
    assert_eq!(found.len(), 1);
    assert_eq!(
        (found[0].onset, found[0].end, found[0].outcome),
        (10_150, 10_151, SpikeOutcome::Recovered)
    );
    assert!((found[0].peak_ratio - 100.0).abs() < 1e-9);
}

#[test]
fn degenerate_logs_do_not_panic() {
    let options = SpikeOptions::default();
    assert_eq!(detect_spikes(&[], &[], &options), Ok(vec![]));
    assert_eq!(detect_spikes(&[3], &[1.0], &options), Ok(vec![]));
    assert_eq!(detect_spikes(&[0, 1], &[f64::NAN; 2], &options), Ok(vec![]));
    assert_eq!(
        detect_spikes(&[0, 1], &[1.0], &options),
        Err(SeriesError::LengthMismatch {
            batches: 2,
            losses: 1
        })
    );
    assert_eq!(
        detect_spikes(&[0, 2, 1], &[1.0; 3], &options),
        Err(SeriesError::BatchesNotIncreasing { index: 1 })
    );
    for bad in [
        SpikeOptions {
            window: 0,
            ..options
        },
        SpikeOptions {
            threshold: 0.0,
            ..options
        },
        SpikeOptions {
            threshold: f64::NAN,
            ..options
        },
    ] {
        assert!(matches!(
            detect_spikes(&[0, 1], &[1.0; 2], &bad),
            Err(SeriesError::InvalidOption { .. })
        ));
    }
    // A window of one batch, extreme values and the largest batch numbers.
    let tiny = SpikeOptions {
        window: 1,
        ..options
    };
    let batches = [u64::MAX - 3, u64::MAX - 2, u64::MAX - 1, u64::MAX];
    let found = detect_spikes(&batches, &[f64::MIN_POSITIVE, f64::MAX, 1.0, 1.0], &tiny).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].outcome, SpikeOutcome::Settled);
}
