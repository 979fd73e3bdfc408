//! One driver per `analyze` subcommand: each opens what it needs of a run (snapshots, the
//! training log, checkpoints), applies the computations of [`crate::metrics`] and writes its
//! tables atomically under `runs/x/analysis/`.
//!
//! - [`snapshot`]: `loss`, `naive-lens` and `excluded-loss`, computed from every snapshot's
//!   logits on the balanced eval set;
//! - [`grokking`]: modular addition's progress measures and phases, from every snapshot's
//!   logits on the p×p grid and its weights;
//! - [`phases`]: plateaus of each digit's eval and training loss;
//! - [`summary`]: the phases of every run in a folder, beside each run's config;
//! - [`spikes`]: loss spikes replayed from a checkpoint and attributed to parameter groups.

pub mod grokking;
pub mod phases;
pub mod snapshot;
pub mod spikes;
pub mod summary;
