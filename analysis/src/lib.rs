//! digitlab-analysis: replay the snapshots of a training run into progress measures (per-digit
//! loss, the naive-sum lens, Fourier excluded and restricted loss, plateaus and spikes),
//! written as tidy Parquet tables under `runs/x/analysis/`.
//!
//! Every analysis is a pure computation plus a driver that applies it to a run:
//! - [`metrics`]: the computations, pure functions of numbers (logits, labels, loss curves);
//! - [`analyses`]: one driver per `analyze` subcommand, which reads a run and writes its tables;
//! - between them, what the drivers share: [`run`] (a run opened for analysis), [`replay`]
//!   (every selected snapshot's model, in parallel), [`eval_set`] (the balanced eval set),
//!   [`activations`] (logits and MLP activations on it), [`attribution`] (loss changes
//!   allocated to parameter groups) and [`table`] (the long-format rows);
//! - [`report`]: the pictures, an interactive page and PNG/SVG figures drawn from the tables only.

pub mod activations;
pub mod analyses;
pub mod attribution;
pub mod eval_set;
pub mod metrics;
pub mod replay;
pub mod report;
pub mod run;
pub mod table;

#[cfg(test)]
#[path = "../tests/common/rng.rs"]
mod test_rng;
