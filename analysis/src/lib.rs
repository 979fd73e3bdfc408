//! digitlab-analysis: replay the snapshots of a training run into progress measures (per-digit
//! loss, the naive-sum lens, Fourier excluded and restricted loss, plateaus and spikes),
//! written as tidy Parquet tables under `runs/x/analysis/`.
//!
//! The metric modules (`digit_metrics`, `fourier`, `phases`, `spike_detection`) are pure
//! functions of numbers; `replay` and `snapshot_analyses` connect them to runs.

pub mod activations;
pub mod attribution;
pub mod digit_metrics;
pub mod eval_set;
pub mod fourier;
pub mod measures;
pub mod phases;
pub mod replay;
pub mod report;
pub mod run_phases;
pub mod snapshot_analyses;
pub mod spike_detection;
pub mod spikes;
pub mod summary;
pub mod table;
