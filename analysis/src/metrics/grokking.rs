//! The three phases of grokking on modular addition (docs/metrics.md, 'Phases and plateaus',
//! "Modular addition"), named from the per-snapshot curves of `grokking.parquet` by a written
//! rule, and the epochs the README reports (where each curve falls, where the excluded loss
//! peaks).
//!
//! The rule, with `ln p` the loss of a uniform guess:
//! - **memorisation** runs from the first snapshot to `memorised`, the first snapshot from
//!   which the training loss stays below `ln p / 100` (the training set is fitted);
//! - **circuit formation** runs from `memorised` to `cleanup_start`, the first later snapshot
//!   from which the test loss stays below `ln p` (the model starts to beat chance on pairs it
//!   never saw: the Fourier circuit now outweighs the memorised lookup on them);
//! - **cleanup** runs from `cleanup_start` to `grokked`, the first snapshot from which the test
//!   loss stays below `ln p / 100` (weight decay has removed what the circuit does not use).
//!
//! "Stays below" (every later snapshot too) makes one noisy sample unable to end a phase.
//! A phase whose end is not reached has a null end.

/// One curve over the snapshots: `(batch, value)` in batch order.
pub type Curve = [(u64, f64)];

/// The phase boundaries and the epochs of the curves' events.
#[derive(Clone, Debug, PartialEq)]
pub struct GrokkingPhases {
    pub memorised: Option<u64>,
    pub cleanup_start: Option<u64>,
    pub grokked: Option<u64>,
    /// Where the restricted loss stays below `ln p / 100`.
    pub restricted_falls: Option<u64>,
    /// The largest excluded loss between `memorised` (or the start) and `grokked` (or the end).
    pub excluded_peak: Option<u64>,
}

/// The first batch from which `curve` stays below `level`, at or after `from`.
pub fn stays_below(curve: &Curve, level: f64, from: u64) -> Option<u64> {
    let mut found = None;
    for &(batch, value) in curve.iter().rev() {
        // A NaN ends the run below `level` as a value above it does.
        if value.is_nan() || value >= level {
            break;
        }
        if batch >= from {
            found = Some(batch);
        }
    }
    found
}

/// The phases of one run with `p` outputs (module doc).
pub fn grokking_phases(
    p: usize,
    train: &Curve,
    test: &Curve,
    restricted: &Curve,
    excluded: &Curve,
) -> GrokkingPhases {
    let chance = (p as f64).ln();
    let fitted = chance / 100.0;
    let memorised = stays_below(train, fitted, 0);
    let cleanup_start = memorised.and_then(|m| stays_below(test, chance, m));
    let grokked = stays_below(test, fitted, cleanup_start.unwrap_or(u64::MAX));
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
        restricted_falls: stays_below(restricted, fitted, 0),
        excluded_peak,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(values: &[f64]) -> Vec<(u64, f64)> {
        values
            .iter()
            .enumerate()
            .map(|(i, &v)| (i as u64 * 100, v))
            .collect()
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
        let got = grokking_phases(113, &train, &test, &restricted, &excluded);
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
        );
        assert_eq!(early.excluded_peak, Some(400));
    }

    #[test]
    fn unreached_phases_have_no_end() {
        let train = curve(&[4.7, 1.0, 0.001, 0.001]);
        let test = curve(&[4.7, 9.0, 12.0, 11.0]);
        let got = grokking_phases(113, &train, &test, &test, &test);
        assert_eq!(got.memorised, Some(200));
        assert_eq!((got.cleanup_start, got.grokked), (None, None));
        assert_eq!(stays_below(&curve(&[1.0, 0.0, f64::NAN]), 0.5, 0), None);
    }
}
