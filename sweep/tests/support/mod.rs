//! Shared by the sweep's integration tests and benchmark: the real `train` and `analyze`
//! binaries of this workspace (built if needed, in the profile `sweep` was built with), scratch
//! folders, grid files, and reading a sweep's results.
#![allow(dead_code)] // each test binary uses a part

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The `sweep` binary under test.
pub fn sweep_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sweep"))
}

/// `train` and `analyze` beside `sweep`, built by cargo once per test binary (a no-op when
/// they are up to date), so the tests always run the code of this tree.
pub fn tools() -> &'static (PathBuf, PathBuf) {
    static TOOLS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let dir = sweep_exe().parent().expect("target folder").to_path_buf();
        let release = dir.file_name().is_some_and(|n| n == "release");
        let mut build = Command::new(env!("CARGO"));
        build.args([
            "build",
            "-q",
            "-p",
            "digitlab",
            "--bin",
            "train",
            "-p",
            "digitlab-analysis",
            "--bin",
            "analyze",
        ]);
        if release {
            build.arg("--release");
        }
        let status = build
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build of train and analyze failed");
        (dir.join("train"), dir.join("analyze"))
    })
}

/// A `sweep` command with `train` and `analyze` set through the environment.
pub fn sweep() -> Command {
    let (train, analyze) = tools();
    let mut cmd = Command::new(sweep_exe());
    cmd.env("DIGITLAB_TRAIN", train)
        .env("DIGITLAB_ANALYZE", analyze);
    cmd
}

/// Run `sweep` with `args`, returning its output.
pub fn run_sweep(args: &[&str]) -> Output {
    sweep().args(args).output().expect("run sweep")
}

/// A fresh scratch folder for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("sweep-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Write a grid file.
pub fn write_grid(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

/// stderr of an output, as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every file of every run directory's `snapshots/` and its `train_log.parquet`, by path
/// relative to the sweep folder: what must be byte-identical between two sweeps.
pub fn run_files(folder: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for run in std::fs::read_dir(folder).unwrap().flatten() {
        let run = run.path();
        if !run.join("config.json").is_file() {
            continue;
        }
        let name = run.file_name().unwrap().to_string_lossy().into_owned();
        for entry in std::fs::read_dir(run.join("snapshots")).unwrap().flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            files.insert(
                format!("{name}/snapshots/{file}"),
                std::fs::read(entry.path()).unwrap(),
            );
        }
        for file in ["train_log.parquet", "config.json", "manifest.json"] {
            files.insert(
                format!("{name}/{file}"),
                std::fs::read(run.join(file)).unwrap(),
            );
        }
    }
    files
}

/// `name -> state` from a sweep folder's `sweep_status.parquet`.
pub fn states(folder: &Path) -> BTreeMap<String, String> {
    let table = digitlab_snapshots::read_parquet(&folder.join("sweep_status.parquet")).unwrap();
    let names = table.column("name").unwrap().str().unwrap().clone();
    let states = table.column("state").unwrap().str().unwrap().clone();
    names
        .iter()
        .zip(states.iter())
        .map(|(n, s)| (n.unwrap().to_string(), s.unwrap().to_string()))
        .collect()
}

/// One string column of the status table, by point name.
pub fn status_column(folder: &Path, column: &str) -> BTreeMap<String, Option<String>> {
    let table = digitlab_snapshots::read_parquet(&folder.join("sweep_status.parquet")).unwrap();
    let names = table.column("name").unwrap().str().unwrap().clone();
    let values = table
        .column(column)
        .unwrap()
        .cast(&polars::prelude::DataType::String)
        .unwrap();
    let values = values.str().unwrap().clone();
    names
        .iter()
        .zip(values.iter())
        .map(|(n, v)| (n.unwrap().to_string(), v.map(str::to_string)))
        .collect()
}

/// How many times `train` was started for a point (header lines in its log).
pub fn train_starts(folder: &Path, point: &str) -> usize {
    let log = std::fs::read_to_string(folder.join(".sweep/logs").join(format!("{point}.log")))
        .unwrap_or_default();
    log.lines()
        .filter(|l| l.starts_with("== ") && l.contains("/train\""))
        .count()
}
