//! Test support of the analysis crate, shared by its test files: seeded random numbers
//! (`rng`), scratch folders (`scratch`), trained runs (`runs`), the `analyze` binary (`cli`),
//! reading tables back (`tables`) and the independent reference computation (`reference`).
//! Test files that need only one part include it by path (`#[path = "common/rng.rs"]`).
#![allow(dead_code, unused_imports)] // each test binary uses part of it

pub mod cli;
pub mod reference;
pub mod rng;
pub mod runs;
pub mod scratch;
pub mod tables;

pub use cli::*;
pub use reference::*;
pub use runs::*;
pub use scratch::*;
pub use tables::*;

/// Contexts per digit in every analysis of these tests (1000 examples per digit).
pub const CONTEXTS: usize = 10;
/// The default eval seed of `analyze`.
pub const EVAL_SEED: u64 = 1234;
