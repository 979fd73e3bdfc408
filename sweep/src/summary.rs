//! The end of a sweep: the status table brought up to date and, once no point of the grid is
//! pending, running or interrupted, `summary.parquet` from `analyze summary` over the folder.
//! Whoever finishes the last point writes it (a local `sweep run`, or the last SLURM task),
//! under the status lock so two finishers do not write it at once.

use std::process::Command;

use anyhow::Result;

use crate::child::run_logged;
use crate::folder::SweepFolder;
use crate::point::Point;
use crate::status::{write_table_locked, State};
use crate::tools::Tools;

/// What the end of a sweep found.
pub struct Ending {
    /// `Some(Err(message))` if `analyze summary` failed; `None` if it was not due.
    pub summary: Option<std::result::Result<(), String>>,
}

/// Write the status table, and the summary if every point of the grid is done or failed (and
/// one at least is done). `cores` is given to `analyze` as RAYON_NUM_THREADS.
pub fn finish(
    folder: &SweepFolder,
    tools: &Tools,
    points: &[Point],
    cores: usize,
) -> Result<Ending> {
    let _lock = folder.lock()?;
    let rows = write_table_locked(folder, points)?;
    let grid_states: Vec<State> = rows
        .iter()
        .filter(|r| r.index.is_some())
        .map(|r| r.observed.state)
        .collect();
    let finished = grid_states
        .iter()
        .all(|s| matches!(s, State::Done | State::Failed));
    if !finished || !grid_states.contains(&State::Done) {
        return Ok(Ending { summary: None });
    }
    let mut analyze = Command::new(&tools.analyze);
    analyze
        .arg("summary")
        .arg(folder.root())
        .env("RAYON_NUM_THREADS", cores.to_string());
    let end = run_logged(analyze, &folder.log("summary"), None)?;
    let summary = if end.status.success() {
        Ok(())
    } else {
        Err(format!(
            "analyze summary exited with status {}: {} (log: {})",
            end.code(),
            end.message,
            folder.log("summary").display()
        ))
    };
    Ok(Ending {
        summary: Some(summary),
    })
}
