//! analysis
pub mod digit_metrics;
pub mod fourier;
pub mod phases;
pub mod spike_detection;
