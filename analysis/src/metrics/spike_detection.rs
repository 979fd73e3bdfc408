//! Loss spikes in the per-batch training log: where the loss jumps well above its recent level,
//! how high it goes and when it comes back.
//!
//! Training with AdamW sometimes throws the loss up by a large factor for a few to a few hundred
//! batches (often while the model sits on a plateau or has just left one). This module finds
//! those events, one row per spike, so that they can be counted, compared across runs and lined
//! up with the plateaus of [`crate::metrics::phases`].
//!
//! Rule, in log10(loss):
//! - a spike opens at a batch whose log-loss is more than `threshold` above the median of the
//!   previous `window` usable batches (the baseline); no spike opens before the window is full;
//! - the baseline is then frozen (the window would otherwise fill with spike values), and the
//!   spike has *recovered* at the first batch whose log-loss is below `baseline + threshold / 2`.
//!   The half threshold is a hysteresis, so that a loss wobbling around the opening threshold on
//!   its way down is one spike, not several; likewise a spike whose loss rises above the opening
//!   threshold again within `rejoin_batches` of recovering (as a big spike often does after a
//!   small first jump) goes on. Batches inside a spike are not added to the window, so after a
//!   recovered spike the baseline is that of the batches before it;
//! - a spike that has not recovered `window` batches after its peak has *settled* at a new level:
//!   the median of those `window` batches. It ends at the first batch after the peak whose
//!   log-loss is below that level plus `threshold / 2`, and the baseline restarts from there
//!   (the window refills from the batches after the end before another spike can open). This is
//!   not in the original rule: in the calibration runs, a spike at very low loss (1e-8) came
//!   down within 50 batches to a level 30 times its old baseline and stayed there, so a spike
//!   held open until a full recovery would have lasted 2,700 batches and swallowed the three
//!   spikes that followed it. A spike that recovers within `window` batches of its peak is
//!   unaffected;
//! - a spike still open at the last usable batch is reported as *open* there.

use crate::metrics::phases::{check_series, median_in_place, SeriesError};
use serde::{Deserialize, Serialize};

/// Default [`SpikeOptions::window`]: 100 batches. In the calibration runs
/// of [`crate::metrics::phases`] (batch 128) the per-batch log10-loss scatters by at most about ±0.1
/// around its trend (nearly not at all on ln 10), so the median of 100 batches is steady to about
/// 0.01 and the first batches of a spike cannot move it; and a drop between plateaus, which takes
/// a few hundred batches, is followed closely enough not to look like a spike.
pub const DEFAULT_SPIKE_WINDOW: usize = 100;
/// Default [`SpikeOptions::threshold`]: 0.5 in log10, a factor of about 3:
/// five times the per-batch scatter of the calibration runs. It found no spike in the ten runs
/// without a visible one (74,000 batches, four of the runs leaving ln 10), and the 11 spikes of
/// the two runs that had them rose by a factor 4 to 10^7.
pub const DEFAULT_SPIKE_THRESHOLD: f64 = 0.5;

/// Default [`SpikeOptions::rejoin_batches`]: 10 batches. In the calibration runs a large spike
/// was often announced by one or two small jumps that came back for a batch or two; every such
/// re-opening came within 3 batches of the recovery, and distinct spikes were 100 or more
/// batches apart.
pub const DEFAULT_REJOIN_BATCHES: u64 = 10;

/// Thresholds of the spike detector.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SpikeOptions {
    /// Number of usable batches (finite, positive loss) in the trailing window whose median of
    /// log10(loss) is the baseline; no spike can open before the window is full. Also the number
    /// of batches after its peak within which a spike must recover, else it has settled.
    pub window: usize,
    /// A spike opens when log10(loss) exceeds the baseline by more than this, and closes when it
    /// falls below the baseline plus half of it.
    pub threshold: f64,
    /// A spike whose loss rises above the opening threshold again within this many batches of
    /// recovering has not recovered: it goes on.
    pub rejoin_batches: u64,
}

impl Default for SpikeOptions {
    fn default() -> Self {
        SpikeOptions {
            window: DEFAULT_SPIKE_WINDOW,
            threshold: DEFAULT_SPIKE_THRESHOLD,
            rejoin_batches: DEFAULT_REJOIN_BATCHES,
        }
    }
}

impl SpikeOptions {
    /// The window at least one batch, the threshold positive and finite; named by their
    /// `analyze spikes` flags. Checked before anything is read or written.
    pub fn validate(&self) -> Result<(), SeriesError> {
        if self.window == 0 {
            return Err(SeriesError::InvalidOption { name: "--window" });
        }
        if !(self.threshold.is_finite() && self.threshold > 0.0) {
            return Err(SeriesError::InvalidOption {
                name: "--threshold",
            });
        }
        Ok(())
    }
}

/// How a spike ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpikeOutcome {
    /// The loss came back below the baseline plus half the threshold.
    Recovered,
    /// The loss did not come back within `window` batches of the peak, but came down to a new
    /// level and stayed there.
    Settled,
    /// The log ends before the spike recovered or settled.
    Open,
}

impl SpikeOutcome {
    /// `"recovered"`, `"settled"` or `"open"`, as in the serialised form.
    pub fn name(self) -> &'static str {
        match self {
            SpikeOutcome::Recovered => "recovered",
            SpikeOutcome::Settled => "settled",
            SpikeOutcome::Open => "open",
        }
    }
}

/// One spike of the training loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spike {
    /// First batch above the opening threshold.
    pub onset: u64,
    /// Batch of the highest loss of the spike.
    pub peak: u64,
    /// Batch at which the spike recovered or settled; for an open spike, the last usable batch.
    pub end: u64,
    /// How the spike ended.
    pub outcome: SpikeOutcome,
    /// The baseline: 10 to the median of log10(loss) over the window before the onset.
    pub loss_before: f64,
    /// Loss at the peak.
    pub loss_peak: f64,
    /// Loss at `end`.
    pub loss_after: f64,
    /// `loss_peak / loss_before`.
    pub peak_ratio: f64,
}

/// A usable batch: finite, positive loss.
#[derive(Debug, Clone, Copy)]
struct Sample {
    batch: u64,
    loss: f64,
    log_loss: f64,
}

/// Finds the spikes of a per-batch training loss.
///
/// `batches` must be strictly increasing and as long as `loss`. Batches whose loss is NaN,
/// infinite, zero or negative are skipped: they do not enter the window, open or end a spike.
/// An empty log, or one with no more usable batches than the window, has no spikes.
pub fn detect_spikes(
    batches: &[u64],
    loss: &[f64],
    options: &SpikeOptions,
) -> Result<Vec<Spike>, SeriesError> {
    check_series(batches, loss)?;
    options.validate()?;
    let samples: Vec<Sample> = batches
        .iter()
        .zip(loss)
        .filter(|(_, value)| value.is_finite() && **value > 0.0)
        .map(|(&batch, &loss)| Sample {
            batch,
            loss,
            log_loss: loss.log10(),
        })
        .collect();
    let mut trailing = TrailingMedian::new(options.window);
    let mut scratch: Vec<f64> = Vec::with_capacity(options.window);
    let mut spikes = Vec::new();
    let mut i = 0;
    while i < samples.len() {
        let log_loss = samples[i].log_loss;
        match trailing.median() {
            Some(baseline) if log_loss > baseline + options.threshold => {
                let (spike, end) = follow_spike(&samples, i, baseline, options, &mut scratch);
                if spike.outcome == SpikeOutcome::Settled {
                    trailing.clear();
                }
                spikes.push(spike);
                // The batch that ends a spike is back to normal and enters the window.
                trailing.push(samples[end].log_loss);
                i = end + 1;
            }
            _ => {
                trailing.push(log_loss);
                i += 1;
            }
        }
    }
    Ok(spikes)
}

/// Follows the spike opening at `samples[onset]` over the log10 `baseline` to its end; returns
/// it and the index of its last sample. `scratch` is reused for the settled level's median.
fn follow_spike(
    samples: &[Sample],
    onset: usize,
    baseline: f64,
    options: &SpikeOptions,
    scratch: &mut Vec<f64>,
) -> (Spike, usize) {
    let opening = baseline + options.threshold;
    let closing = baseline + options.threshold / 2.0;
    let mut peak = onset;
    let mut end = (samples.len() - 1, SpikeOutcome::Open);
    let mut j = onset;
    while j < samples.len() {
        let sample = samples[j];
        if sample.loss > samples[peak].loss {
            peak = j;
        }
        if sample.log_loss < closing {
            let reopens = samples[j + 1..]
                .iter()
                .take_while(|s| s.batch - sample.batch <= options.rejoin_batches)
                .position(|s| s.log_loss > opening);
            match reopens {
                Some(k) => {
                    j += 1 + k;
                    continue;
                }
                None => {
                    end = (j, SpikeOutcome::Recovered);
                    break;
                }
            }
        }
        if j - peak >= options.window {
            let after_peak = &samples[peak + 1..=j];
            scratch.clear();
            scratch.extend(after_peak.iter().map(|s| s.log_loss));
            let level = median_in_place(scratch);
            let settled = after_peak
                .iter()
                .position(|s| s.log_loss < level + options.threshold / 2.0)
                .map_or(j, |k| peak + 1 + k);
            end = (settled, SpikeOutcome::Settled);
            break;
        }
        j += 1;
    }
    let (end, outcome) = end;
    let loss_before = 10f64.powf(baseline);
    let spike = Spike {
        onset: samples[onset].batch,
        peak: samples[peak].batch,
        end: samples[end].batch,
        outcome,
        loss_before,
        loss_peak: samples[peak].loss,
        loss_after: samples[end].loss,
        peak_ratio: samples[peak].loss / loss_before,
    };
    (spike, end)
}

/// Median of the last `capacity` values pushed, kept sorted alongside a ring buffer so that a
/// step costs one binary search and one shift of at most `capacity` values, without allocating.
struct TrailingMedian {
    /// The values in the order pushed; `next` is the oldest once full.
    ring: Vec<f64>,
    next: usize,
    /// The same values, sorted.
    sorted: Vec<f64>,
    capacity: usize,
}

impl TrailingMedian {
    fn new(capacity: usize) -> Self {
        TrailingMedian {
            ring: Vec::with_capacity(capacity),
            next: 0,
            sorted: Vec::with_capacity(capacity),
            capacity,
        }
    }

    /// Adds a finite value, dropping the oldest once the window is full.
    fn push(&mut self, value: f64) {
        if self.ring.len() < self.capacity {
            self.ring.push(value);
        } else {
            let oldest = std::mem::replace(&mut self.ring[self.next], value);
            if let Ok(position) = self.sorted.binary_search_by(|v| v.total_cmp(&oldest)) {
                self.sorted.remove(position);
            }
            self.next = (self.next + 1) % self.capacity;
        }
        let position = self.sorted.partition_point(|v| v.total_cmp(&value).is_lt());
        self.sorted.insert(position, value);
    }

    /// Empties the window (it must fill again before there is a median).
    fn clear(&mut self) {
        self.ring.clear();
        self.sorted.clear();
        self.next = 0;
    }

    /// The median (the upper middle value for an even window, as [`median_in_place`]), once the
    /// window is full.
    fn median(&self) -> Option<f64> {
        if self.sorted.len() < self.capacity {
            return None;
        }
        Some(self.sorted[self.sorted.len() / 2])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brute-force median of the last `window` values.
    fn sorted_median(values: &[f64], window: usize) -> f64 {
        let mut last = values[values.len() - window..].to_vec();
        last.sort_by(f64::total_cmp);
        last[window / 2]
    }

    #[test]
    fn trailing_median_matches_a_sorted_copy() {
        let mut state = 12345u64;
        // Few distinct values, so that the window holds duplicates.
        let values: Vec<f64> = (0..500)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 33) % 17) as f64 - 8.0
            })
            .collect();
        for window in [1, 2, 7, 8] {
            let mut trailing = TrailingMedian::new(window);
            for (i, &value) in values.iter().enumerate() {
                trailing.push(value);
                let expected = (i + 1 >= window).then(|| sorted_median(&values[..=i], window));
                assert_eq!(trailing.median(), expected, "window {window}, step {i}");
            }
            trailing.clear();
            assert_eq!(trailing.median(), None);
        }
    }
}
