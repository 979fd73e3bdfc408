//! Loss spikes in the per-batch training log: where the loss jumps well above its recent level,
//! how high it goes and when it comes back.
//!
//! Training with AdamW sometimes throws the loss up by a large factor for a few to a few hundred
//! batches (often while the model sits on a plateau or has just left one). This module finds
//! those events, one row per spike, so that they can be counted, compared across runs and lined
//! up with the plateaus of [`crate::phases`].
//!
//! Rule, in log10(loss): a spike opens at a batch whose log-loss is more than `threshold` above
//! the median of the previous `window` usable batches (the baseline); the baseline is then
//! frozen (the window would otherwise fill with spike values), and the spike closes at the first
//! batch whose log-loss is below `baseline + threshold / 2`. The half threshold for closing is a
//! hysteresis, so that a spike whose loss wobbles around the opening threshold on its way down is
//! one spike, not several. Batches inside a spike are not added to the window, so after a spike
//! the baseline is that of the batches before it.

use crate::phases::{check_series, SeriesError};
use serde::{Deserialize, Serialize};

/// Default [`SpikeOptions::window`]: 100 batches. Long enough that the median ignores a spike
/// that is still rising and the per-batch noise of a batch of 128 (about 0.05 to 0.1 in log10 in
/// the calibration runs, heavier-tailed near zero loss); short enough that the baseline follows
/// a drop between plateaus within a few hundred batches.
pub const DEFAULT_SPIKE_WINDOW: usize = 100;
/// Default [`SpikeOptions::threshold`]: 0.5 in log10, a factor of about 3 above the baseline.
/// On a plateau the per-batch log-loss stays within about 0.3 of its median in the calibration
/// runs, so 0.5 does not fire on noise, while the spikes a researcher points at are a factor 10
/// or more.
pub const DEFAULT_SPIKE_THRESHOLD: f64 = 0.5;

/// Thresholds of the spike detector.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SpikeOptions {
    /// Number of usable batches (finite, positive loss) in the trailing window whose median of
    /// log10(loss) is the baseline. No spike can open before the window is full.
    pub window: usize,
    /// A spike opens when log10(loss) exceeds the baseline by more than this, and closes when it
    /// falls below the baseline plus half of it.
    pub threshold: f64,
}

impl Default for SpikeOptions {
    fn default() -> Self {
        SpikeOptions {
            window: DEFAULT_SPIKE_WINDOW,
            threshold: DEFAULT_SPIKE_THRESHOLD,
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
    /// Batch at which the spike closed; for a spike still open, the last usable batch.
    pub end: u64,
    /// Whether the loss came back below the closing threshold before the end of the log.
    pub closed: bool,
    /// The baseline: 10 to the median of log10(loss) over the window before the onset.
    pub loss_before: f64,
    /// Loss at the peak.
    pub loss_peak: f64,
    /// Loss at `end`.
    pub loss_after: f64,
    /// `loss_peak / loss_before`.
    pub peak_ratio: f64,
}

/// Finds the spikes of a per-batch training loss.
///
/// `batches` must be strictly increasing and as long as `loss`. Batches whose loss is NaN,
/// infinite, zero or negative are skipped: they do not enter the window, open or close a spike.
/// An empty log, or one with no more usable batches than the window, has no spikes.
pub fn detect_spikes(
    batches: &[u64],
    loss: &[f64],
    options: &SpikeOptions,
) -> Result<Vec<Spike>, SeriesError> {
    check_series(batches, loss)?;
    if options.window == 0 {
        return Err(SeriesError::InvalidOption { name: "window" });
    }
    if !(options.threshold.is_finite() && options.threshold > 0.0) {
        return Err(SeriesError::InvalidOption { name: "threshold" });
    }
    let mut trailing = TrailingMedian::new(options.window);
    let mut spikes = Vec::new();
    // The spike being followed and its frozen baseline (median of log10(loss) before onset).
    let mut open: Option<(Spike, f64)> = None;
    let mut last_usable: Option<(u64, f64)> = None;
    for (&batch, &value) in batches.iter().zip(loss) {
        if !(value.is_finite() && value > 0.0) {
            continue;
        }
        last_usable = Some((batch, value));
        let log_loss = value.log10();
        open = match open.take() {
            Some((mut spike, baseline)) => {
                if value > spike.loss_peak {
                    spike.peak = batch;
                    spike.loss_peak = value;
                }
                if log_loss < baseline + options.threshold / 2.0 {
                    spikes.push(spike.ended_at(batch, value, true));
                    trailing.push(log_loss);
                    None
                } else {
                    Some((spike, baseline))
                }
            }
            None => match trailing.median() {
                Some(baseline) if log_loss > baseline + options.threshold => {
                    Some((Spike::opening(batch, value, baseline), baseline))
                }
                _ => {
                    trailing.push(log_loss);
                    None
                }
            },
        };
    }
    if let (Some((spike, _)), Some((batch, value))) = (open, last_usable) {
        spikes.push(spike.ended_at(batch, value, false));
    }
    Ok(spikes)
}

impl Spike {
    /// A spike opening at `batch` with loss `value` over the log10 `baseline`.
    fn opening(batch: u64, value: f64, baseline: f64) -> Spike {
        let loss_before = 10f64.powf(baseline);
        Spike {
            onset: batch,
            peak: batch,
            end: batch,
            closed: false,
            loss_before,
            loss_peak: value,
            loss_after: value,
            peak_ratio: value / loss_before,
        }
    }

    /// The spike ending at `batch` with loss `value`.
    fn ended_at(self, batch: u64, value: f64, closed: bool) -> Spike {
        Spike {
            end: batch,
            closed,
            loss_after: value,
            peak_ratio: self.loss_peak / self.loss_before,
            ..self
        }
    }
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

    /// The median (mean of the two middle values for an even window), once the window is full.
    fn median(&self) -> Option<f64> {
        if self.sorted.len() < self.capacity {
            return None;
        }
        let middle = self.sorted.len() / 2;
        Some(if self.sorted.len() % 2 == 0 {
            (self.sorted[middle - 1] + self.sorted[middle]) / 2.0
        } else {
            self.sorted[middle]
        })
    }
}
