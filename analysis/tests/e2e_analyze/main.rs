//! End-to-end tests of the `analyze` binary on real (short) training runs.
//!
//! Runs are trained in-process with the `digitlab` library, then analysed by running the
//! `analyze` binary as a user would. The numbers it writes are checked against an independent
//! f64 computation (`common::reference`: plain loops over the logits of the model's general
//! forward pass; nothing shared with the code under test except the examples of the eval set,
//! whose structure is checked separately).
//!
//! One test binary, so the trained runs are shared by all its tests (trained once per process,
//! never written to afterwards); every test that writes analyses works on its own copy. The
//! tests are grouped by topic: metrics, incremental re-runs, bad input, schema.

#[path = "../common/mod.rs"]
mod common;

mod bad_input;
mod defences;
mod incremental;
mod metrics;
mod schema;
