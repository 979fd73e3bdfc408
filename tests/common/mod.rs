//! Test support of the `digitlab` crate, shared by its test files: one candle thread, as the
//! `train` binary sets it, and scratch folders under the target's temporary folder.
#![allow(dead_code)] // each test binary uses part of it

use std::path::PathBuf;

/// One thread for candle, as the `train` binary sets it (candle's spinning element-wise pool
/// is many times slower on a busy 2-core machine). Every test calls this before any candle
/// operation; `Once` makes the others wait, so no test reads the environment while it changes.
pub fn one_thread() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| digitlab::threads::set_threads(1));
}

/// A fresh, empty scratch folder for one test of this process (removed first if a previous
/// run left it).
pub fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("digitlab-tests-{}", std::process::id()))
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
