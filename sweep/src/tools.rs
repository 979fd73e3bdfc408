//! The `train` and `analyze` executables the sweep runs, and the checks it asks of them before
//! anything runs: `train --check` for each point's options (so every value `train` rejects is
//! reported by `sweep plan`, in `train`'s own words) and `analyze NAME --help` for each
//! analysis of the grid.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::error::bad_input;
use crate::folder::{canonical, SweepFolder};
use crate::grid::Grid;
use crate::point::Point;

/// Points whose errors are listed in full; the rest are counted.
const LISTED_ERRORS: usize = 10;

/// Where `train` and `analyze` are.
#[derive(Clone, Debug)]
pub struct Tools {
    pub train: PathBuf,
    pub analyze: PathBuf,
}

/// What `train --check` says of a point: the config the run would have.
#[derive(Clone, Debug)]
pub struct Checked {
    /// The run's `config.json` as `train` would write it.
    pub config: Value,
    pub steps: u64,
}

impl Tools {
    /// `DIGITLAB_TRAIN` / `DIGITLAB_ANALYZE`, else `train` and `analyze` beside the `sweep`
    /// executable (the same build), as absolute paths (SLURM tasks run them from elsewhere).
    pub fn locate() -> Result<Tools> {
        let beside = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        let find = |name: &str, var: &str| -> Result<PathBuf> {
            let path = std::env::var_os(var).map_or_else(|| beside.join(name), PathBuf::from);
            if !path.is_file() {
                return Err(bad_input(format!(
                    "cannot find `{name}` at {}: build it beside `sweep` (cargo build --release \
                     --bin train --bin analyze) or set {var} to its path",
                    path.display()
                )));
            }
            canonical(&path)
        };
        Ok(Tools {
            train: find("train", "DIGITLAB_TRAIN")?,
            analyze: find("analyze", "DIGITLAB_ANALYZE")?,
        })
    }

    /// `train --check` every point, in parallel; bad input listing every rejected point.
    pub fn check_points(
        &self,
        grid: &Grid,
        points: &[Point],
        folder: &SweepFolder,
    ) -> Result<Vec<Checked>> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let chunk = points.len().div_ceil(threads).max(1);
        let results: Vec<Result<Checked, String>> = std::thread::scope(|scope| {
            let handles: Vec<_> = points
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        part.iter()
                            .map(|p| self.check_point(grid, p, folder))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("check thread"))
                .collect()
        });
        let errors: Vec<String> = results.iter().filter_map(|r| r.clone().err()).collect();
        if errors.is_empty() {
            return Ok(results.into_iter().map(|r| r.expect("no error")).collect());
        }
        let mut message = format!("train rejects {} of {} points:", errors.len(), points.len());
        for e in errors.iter().take(LISTED_ERRORS) {
            message.push_str(&format!("\n  {e}"));
        }
        if errors.len() > LISTED_ERRORS {
            message.push_str(&format!("\n  … and {} more", errors.len() - LISTED_ERRORS));
        }
        Err(bad_input(message))
    }

    /// One point: `Ok` with the config, or `Err` with the point and `train`'s message (and
    /// the grid line of an option `train` does not know).
    fn check_point(
        &self,
        grid: &Grid,
        point: &Point,
        folder: &SweepFolder,
    ) -> Result<Checked, String> {
        let output = Command::new(&self.train)
            .arg("--check")
            .args(point.train_args())
            .arg(folder.run_dir(&point.name))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.train.display()))?;
        let fail = |why: String| format!("point {} ({}): {why}", point.index, point.name);
        if !output.status.success() {
            return Err(fail(train_complaint(grid, point, &output)));
        }
        let config: Value = serde_json::from_slice(&output.stdout).map_err(|e| {
            fail(format!(
                "train --check printed no config ({e}); is {} a digitlab train?",
                self.train.display()
            ))
        })?;
        let steps = config["steps"]
            .as_u64()
            .ok_or_else(|| fail("train --check printed a config without steps".to_string()))?;
        Ok(Checked { config, steps })
    }

    /// Each analysis must be an `analyze` subcommand that takes one run (not `summary`, which
    /// the sweep runs over the whole folder at the end).
    pub fn check_analyses(&self, grid: &Grid) -> Result<()> {
        for name in &grid.analyses {
            let known = name != "summary"
                && Command::new(&self.analyze)
                    .args([name, "--help"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .with_context(|| format!("cannot run {}", self.analyze.display()))?
                    .success();
            if !known {
                return Err(bad_input(format!(
                    "`analyses`{}: `{name}` is not an analysis of one run; see `analyze --help` \
                     (summary runs by itself at the end)",
                    grid.line_note("analyses")
                )));
            }
        }
        Ok(())
    }
}

/// `train`'s `error:` and `tip:` lines, and the grid line of an option it names.
fn train_complaint(grid: &Grid, point: &Point, output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("error:") || l.starts_with("tip:"))
        .collect();
    let mut text = if lines.is_empty() {
        stderr.trim().to_string()
    } else {
        lines.join(" ")
    };
    for (key, _) in &point.options {
        if stderr.contains(&format!("'--{}'", key.replace('_', "-"))) {
            text.push_str(&format!(" [option `{key}`{}]", grid.line_note(key)));
        }
    }
    text
}
