//! The computations behind the analyses, as pure functions of numbers: no run, no model, no
//! files. Each is tested against an independent plain-loop implementation.
//!
//! - [`digit`]: per-digit loss, accuracy and the naive-sum lens, from logits and labels;
//! - [`fourier`]: excluded and restricted loss, key frequencies of the MLP neurons;
//! - [`grokking`]: the phases of grokking on modular addition, from its curves;
//! - [`phases`]: plateaus of a loss curve and when it leaves and reaches them;
//! - [`spike_detection`]: loss spikes in the per-batch training log.

pub mod digit;
pub mod fourier;
pub mod grokking;
pub mod phases;
pub mod spike_detection;

/// The median of `values` (sorted in place), the mean of the two middle values for an even
/// count; used for figures and benchmark summaries, where the exact middle matters more than
/// the speed of a selection.
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}
