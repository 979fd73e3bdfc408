//! Test support of the `digitlab` crate, shared by its test files: one candle thread, as the
//! `train` binary sets it, scratch folders under the target's temporary folder, running the
//! `train` binary on small runs, and reading a run back.
#![allow(dead_code)] // each test binary uses part of it

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use digitlab_snapshots::{LogRow, Manifest, RunDir};

pub const SMALL: [&str; 9] = [
    "--d-model",
    "16",
    "--n-heads",
    "2",
    "--snapshot-every",
    "20",
    "--checkpoint-every",
    "40",
    "-q",
];

pub fn train() -> Command {
    Command::new(env!("CARGO_BIN_EXE_train"))
}

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

pub fn run(args: &[&str]) -> Output {
    train().args(args).output().expect("run train")
}

pub fn run_ok(args: &[&str]) -> Output {
    let out = run(args);
    assert!(
        out.status.success(),
        "train {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn small(steps: u64, dir: &Path) -> Vec<String> {
    let mut args: Vec<String> = SMALL.iter().map(|s| s.to_string()).collect();
    args.extend([
        "--steps".to_string(),
        steps.to_string(),
        dir.display().to_string(),
    ]);
    args
}

pub fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

pub fn manifest(dir: &Path) -> Manifest {
    RunDir::open(dir).unwrap().manifest().clone()
}

pub fn log_rows(dir: &Path) -> Vec<LogRow> {
    RunDir::open(dir)
        .unwrap()
        .read_train_log()
        .unwrap()
        .expect("train_log.parquet exists")
        .rows
}

/// Every file under `dir` with its bytes.
pub fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.insert(
                    path.strip_prefix(dir).unwrap().to_path_buf(),
                    std::fs::read(&path).unwrap(),
                );
            }
        }
    }
    files
}

/// Runs `train` with `args` and the run directory `dir` last; it must exit with status 2, say
/// something containing every one of `expected` on stderr, and leave `dir` as it was.
pub fn assert_refused(args: &[&str], expected: &[&str]) {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "train {args:?}: {stderr}");
    for e in expected {
        assert!(
            stderr.contains(e),
            "train {args:?}: stderr does not mention `{e}`: {stderr}"
        );
    }
}
