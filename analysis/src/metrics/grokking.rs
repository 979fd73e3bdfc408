//! The three phases of grokking on modular addition (docs/metrics.md, 'Phases and plateaus',
//! "Modular addition"), named from the per-snapshot curves of `grokking.parquet` by a written
//! rule, and the epochs the README reports (where each curve falls, where the excluded loss
//! peaks).
//!
//! The rule, with `ln p` the loss of a uniform guess:
//! - **memorisation** runs from the first snapshot to `memorised`, where the training loss
//!   falls below `ln p / 100` (the training set is fitted);
//! - **circuit formation** runs from `memorised` to `cleanup_start`, where the test loss, from
//!   `memorised` on, falls below `ln p` (the model starts to beat chance on pairs it never saw:
//!   the Fourier circuit now outweighs the memorised lookup on them);
//! - **cleanup** runs from `cleanup_start` to `grokked`, where the test loss, from
//!   `cleanup_start` on, falls below `ln p / 100` (weight decay has removed what the circuit
//!   does not use).
//!
//! A curve **falls below** a level at the first snapshot from which it stays below the level
//! except for short excursions ([`falls_below`]): a stretch of snapshots at or above the level
//! that is back below it within `max_excursion_batches` of its first snapshot does not count,
//! a longer one does, and so does one still above the level at the last snapshot. Full-batch
//! AdamW with weight decay has slingshots (Thilak et al., 2022): the training loss jumps for a
//! snapshot or two, long after it fell, and falls back. A plain "stays below at every later
//! snapshot" let one such spike date all three phases at the snapshot after it (a 20,000-epoch
//! run at p = 113 spiked to 0.16 at epoch 17,000 and had all three phases end at 17,200). This
//! is the tolerance of the digit plateaus (docs/metrics.md, 'Phases and plateaus': plateaus on
//! one level are joined across an excursion shorter than a plateau), applied to a threshold.
//! A NaN counts as above every level. A phase whose end is not reached has a null end.

use crate::metrics::phases::runs_of;

/// One curve over the snapshots: `(batch, value)` in batch order.
pub type Curve = [(u64, f64)];

/// Default `max_excursion_batches` of [`grokking_phases`]: 1,000 epochs, 5% of the paper's
/// 20,000-epoch run and five snapshots at its `--snapshot-every 200`. In the p = 113 run the
/// slingshots kept the losses at or above `ln p / 100` for one snapshot (200 epochs) and the
/// training loss settled back within 600 epochs of each spike, while the test loss, once it
/// leaves chance, has no excursion back above `ln p`; an excursion of more than 1,000 epochs is
/// a return to the level, not a spike, and moves the boundary.
pub const DEFAULT_MAX_EXCURSION_BATCHES: u64 = 1000;

/// The phase boundaries and the epochs of the curves' events.
#[derive(Clone, Debug, PartialEq)]
pub struct GrokkingPhases {
    pub memorised: Option<u64>,
    pub cleanup_start: Option<u64>,
    pub grokked: Option<u64>,
    /// Where the restricted loss falls below `ln p / 100`.
    pub restricted_falls: Option<u64>,
    /// The largest excluded loss between `memorised` (or the start) and `grokked` (or the end).
    pub excluded_peak: Option<u64>,
}

/// The first batch at or after `from` from which `curve` stays below `level`, except for
/// excursions: runs of snapshots at or above `level` (or NaN) that are back below it at most
/// `max_excursion` batches after their first snapshot. Only the snapshots at or after `from`
/// are looked at, so a curve above the level at `from` falls where it first goes below after
/// that. `None` for an empty curve, one that never goes below, and one that ends at or above
/// `level` (an excursion that has not come back is not known to be short).
pub fn falls_below(curve: &Curve, level: f64, from: u64, max_excursion: u64) -> Option<u64> {
    let start = curve.partition_point(|&(batch, _)| batch < from);
    let curve = &curve[start..];
    let above: Vec<bool> = curve
        .iter()
        .map(|&(_, value)| value.is_nan() || value >= level)
        .collect();
    let runs = runs_of(&above);
    let mut found = None;
    for (k, &(first, _, is_above)) in runs.iter().enumerate().rev() {
        if !is_above {
            found = Some(curve[first].0);
            continue;
        }
        // The stretch before the first fall, or one that has not come back, is not an
        // excursion.
        let &(back, _, _) = runs.get(k + 1)?;
        if k == 0 || curve[back].0 - curve[first].0 > max_excursion {
            break;
        }
    }
    found
}

/// The phases of one run with `p` outputs (module doc), forgiving excursions of at most
/// `max_excursion` batches (usually [`DEFAULT_MAX_EXCURSION_BATCHES`]).
pub fn grokking_phases(
    p: usize,
    train: &Curve,
    test: &Curve,
    restricted: &Curve,
    excluded: &Curve,
    max_excursion: u64,
) -> GrokkingPhases {
    let chance = (p as f64).ln();
    let fitted = chance / 100.0;
    let falls =
        |curve: &Curve, level: f64, from: u64| falls_below(curve, level, from, max_excursion);
    let memorised = falls(train, fitted, 0);
    let cleanup_start = memorised.and_then(|m| falls(test, chance, m));
    let grokked = cleanup_start.and_then(|c| falls(test, fitted, c));
    let (lo, hi) = (memorised.unwrap_or(0), grokked.unwrap_or(u64::MAX));
    let excluded_peak = excluded
        .iter()
        .filter(|(b, v)| (lo..=hi).contains(b) && v.is_finite())
        .fold(None, |best: Option<(u64, f64)>, &(b, v)| match best {
            Some((_, bv)) if bv >= v => best,
            _ => Some((b, v)),
        })
        .map(|(b, _)| b);
    GrokkingPhases {
        memorised,
        cleanup_start,
        grokked,
        restricted_falls: falls(restricted, fitted, 0),
        excluded_peak,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u64 = DEFAULT_MAX_EXCURSION_BATCHES;

    fn curve(values: &[f64]) -> Vec<(u64, f64)> {
        values
            .iter()
            .enumerate()
            .map(|(i, &v)| (i as u64 * 100, v))
            .collect()
    }

    /// The rule read literally: the smallest snapshot at or after `from` below `level` such
    /// that every later stretch at or above it is back below within `max` batches.
    fn falls_below_by_definition(curve: &Curve, level: f64, from: u64, max: u64) -> Option<u64> {
        let above = |i: usize| curve[i].1.is_nan() || curve[i].1 >= level;
        (0..curve.len())
            .filter(|&b| curve[b].0 >= from && !above(b))
            .find(|&b| {
                (b + 1..curve.len())
                    .filter(|&i| above(i) && !above(i - 1))
                    .all(|i| {
                        (i + 1..curve.len())
                            .find(|&j| !above(j))
                            .is_some_and(|j| curve[j].0 - curve[i].0 <= max)
                    })
            })
            .map(|b| curve[b].0)
    }

    #[test]
    fn phases_of_a_constructed_grokking_run() {
        let ln_p = (113f64).ln();
        // Train loss fitted from batch 300.
        let train = curve(&[
            4.7, 1.0, 0.1, 0.001, 0.001, 0.001, 0.001, 0.001, 0.001, 0.001,
        ]);
        // Test loss rises, stays above chance until 600, falls below ln p / 100 at 800.
        let test = curve(&[4.7, 8.0, 12.0, 15.0, 14.0, 9.0, 3.0, 0.5, 0.01, 0.001]);
        let restricted = curve(&[4.7, 4.7, 4.0, 2.0, 0.5, 0.04, 0.01, 0.001, 0.001, 0.001]);
        let excluded = curve(&[4.7, 5.0, 6.0, 9.0, 11.0, 10.0, 20.0, 30.0, 40.0, 50.0]);
        let got = grokking_phases(113, &train, &test, &restricted, &excluded, MAX);
        assert!(0.1 > ln_p / 100.0 && 0.01 < ln_p / 100.0);
        assert_eq!(got.memorised, Some(300));
        assert_eq!(got.cleanup_start, Some(600));
        assert_eq!(got.grokked, Some(800));
        assert_eq!(got.restricted_falls, Some(500));
        // The peak is looked for between memorisation and grokking only.
        assert_eq!(got.excluded_peak, Some(800));
        let early = grokking_phases(
            113,
            &train,
            &test,
            &restricted,
            &curve(&[0.0, 0.0, 0.0, 9.0, 11.0, 10.0, 2.0, 1.0, 0.0, 99.0]),
            MAX,
        );
        assert_eq!(early.excluded_peak, Some(400));
    }

    /// The shape of the p = 113 run: snapshots every 200 epochs to 20,000, the training loss
    /// fitted at 200, the test loss below ln p at 9,400 and below ln p / 100 at 10,400, and one
    /// slingshot at 17,000 that lifts every loss above ln p / 100 for one snapshot.
    #[test]
    fn a_slingshot_after_the_fall_does_not_move_the_phases() {
        let ln_p = (113f64).ln();
        let batches: Vec<u64> = (0..=100).map(|i| i * 200).collect();
        let make = |value: &dyn Fn(u64) -> f64| -> Vec<(u64, f64)> {
            batches.iter().map(|&b| (b, value(b))).collect()
        };
        let spike = |b: u64, base: f64| if b == 17_000 { 0.16 } else { base };
        let train = make(&|b| spike(b, if b == 0 { ln_p } else { 1e-4 }));
        let test = make(&|b| {
            spike(
                b,
                match b {
                    0..=9_200 => 20.0,
                    9_400..=10_200 => 1.0,
                    _ => 1e-3,
                },
            )
        });
        let restricted = make(&|b| spike(b, if b < 9_200 { 3.0 } else { 1e-3 }));
        let excluded = make(&|b| b as f64 / 1000.0);
        let got = grokking_phases(113, &train, &test, &restricted, &excluded, MAX);
        assert_eq!(got.memorised, Some(200));
        assert_eq!(got.cleanup_start, Some(9_400));
        assert_eq!(got.grokked, Some(10_400));
        assert_eq!(got.restricted_falls, Some(9_200));
        assert_eq!(got.excluded_peak, Some(10_400));
        // Without the tolerance the spike dates every phase after it, as the old rule did.
        let strict = grokking_phases(113, &train, &test, &restricted, &excluded, 0);
        assert_eq!(strict.memorised, Some(17_200));
        assert_eq!(strict.grokked, Some(17_200));
    }

    #[test]
    fn a_long_return_above_the_level_moves_the_boundary() {
        let level = 0.5;
        // Falls at 100; above from 400: back below at 900 (500 batches) or at 1,600 (1,200).
        let short = curve(&[1.0, 0.1, 0.1, 0.1, 2.0, 2.0, 2.0, 2.0, 2.0, 0.1, 0.1]);
        assert_eq!(falls_below(&short, level, 0, MAX), Some(100));
        let mut long = vec![1.0, 0.1, 0.1, 0.1];
        long.extend([2.0; 12]);
        long.extend([0.1; 3]);
        assert_eq!(falls_below(&curve(&long), level, 0, MAX), Some(1_600));
        // The excursion's length is from its first snapshot above to the first back below:
        // 400 to 900 is 500 batches, forgiven at 500 but not at 499.
        assert_eq!(falls_below(&short, level, 0, 500), Some(100));
        assert_eq!(falls_below(&short, level, 0, 499), Some(900));
        // A curve that ends above the level has not fallen, however short the stretch.
        assert_eq!(
            falls_below(&curve(&[1.0, 0.1, 0.1, 2.0]), level, 0, MAX),
            None
        );
    }

    #[test]
    fn edge_cases_nan_never_falls_empty_and_from() {
        let level = 0.5;
        assert_eq!(falls_below(&[], level, 0, MAX), None);
        assert_eq!(falls_below(&curve(&[1.0, 2.0, 0.5]), level, 0, MAX), None);
        // A NaN is above every level: one NaN snapshot is a short excursion, a trailing NaN
        // means the curve has not come back, a NaN curve never falls.
        let nan = f64::NAN;
        assert_eq!(
            falls_below(&curve(&[1.0, 0.0, nan, 0.0]), level, 0, MAX),
            Some(100)
        );
        assert_eq!(falls_below(&curve(&[1.0, 0.0, nan]), level, 0, MAX), None);
        assert_eq!(falls_below(&curve(&[nan, nan]), level, 0, MAX), None);
        // Only snapshots from `from` on count: a curve above the level at `from` falls where
        // it next goes below, even if it was below before.
        let c = curve(&[0.0, 0.0, 1.0, 1.0, 0.0, 0.0]);
        assert_eq!(falls_below(&c, level, 0, MAX), Some(0));
        assert_eq!(falls_below(&c, level, 150, MAX), Some(400));
        assert_eq!(falls_below(&c, level, 450, MAX), Some(500));
        assert_eq!(falls_below(&c, level, 600, MAX), None);
        // A curve below the level from its first snapshot falls there.
        assert_eq!(falls_below(&curve(&[0.0, 0.0]), level, 0, MAX), Some(0));
    }

    /// On many pseudo-random curves with irregular spacing, the walk over runs agrees with the
    /// rule read literally.
    #[test]
    fn falls_below_agrees_with_the_definition() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..2_000 {
            let n = (next() % 12) as usize;
            let mut batch = 0;
            let c: Vec<(u64, f64)> = (0..n)
                .map(|_| {
                    batch += 1 + next() % 300;
                    let value = match next() % 4 {
                        0 => f64::NAN,
                        1 => 2.0,
                        _ => 0.1,
                    };
                    (batch, value)
                })
                .collect();
            let (from, max) = (next() % 1_500, next() % 700);
            assert_eq!(
                falls_below(&c, 0.5, from, max),
                falls_below_by_definition(&c, 0.5, from, max),
                "{c:?} from {from} max {max}"
            );
        }
    }

    #[test]
    fn unreached_phases_have_no_end() {
        let train = curve(&[4.7, 1.0, 0.001, 0.001]);
        let test = curve(&[4.7, 9.0, 12.0, 11.0]);
        let got = grokking_phases(113, &train, &test, &test, &test, MAX);
        assert_eq!(got.memorised, Some(200));
        assert_eq!((got.cleanup_start, got.grokked), (None, None));
        let never = grokking_phases(113, &test, &test, &test, &test, MAX);
        assert_eq!(
            (never.memorised, never.cleanup_start, never.grokked),
            (None, None, None)
        );
        let empty = grokking_phases(113, &[], &[], &[], &[], MAX);
        assert_eq!(
            empty,
            GrokkingPhases {
                memorised: None,
                cleanup_start: None,
                grokked: None,
                restricted_falls: None,
                excluded_peak: None,
            }
        );
    }
}
