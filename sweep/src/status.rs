//! The state of every point, whichever process or machine ran it.
//!
//! Each point has its own record, `.sweep/points/<point>.json`, written atomically and only by
//! the holder of the point's claim, so processes running different points (local workers,
//! SLURM array tasks) never write the same file. `sweep_status.parquet` is merged from the
//! records under the folder's lock and written atomically, so concurrent updates neither
//! interleave nor leave half a table.

use std::fs;
use std::path::Path;

use anyhow::Result;
use digitlab_snapshots::{write_atomic, write_parquet_atomic, Manifest};
use polars::prelude::{Column, DataFrame};
use serde::{Deserialize, Serialize};

use crate::claim::Claim;
use crate::folder::SweepFolder;
use crate::point::Point;
use crate::value::OptValue;

/// Where a point stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Not started (or its run directory was removed).
    Pending,
    /// A live process holds its claim.
    Running,
    /// Trained and analysed.
    Done,
    /// `train` or `analyze` failed; the next run retries it.
    Failed,
    /// Stopped by a signal, or its process died; the next run resumes it.
    Interrupted,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Running => "running",
            State::Done => "done",
            State::Failed => "failed",
            State::Interrupted => "interrupted",
        }
    }
}

/// A point's record, as its last runner left it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PointRecord {
    pub name: String,
    pub options: Vec<(String, OptValue)>,
    pub state: State,
    /// `train` finished (so only analyses remain).
    pub trained: bool,
    /// The analyses that ran after training.
    pub analyses: Vec<String>,
    /// RFC 3339, UTC.
    pub started: Option<String>,
    pub finished: Option<String>,
    pub seconds: Option<f64>,
    pub exit_status: Option<i32>,
    pub error: Option<String>,
    /// Which process ran it: `pid 123 on host`, with the SLURM job and task if any.
    pub job: Option<String>,
}

impl PointRecord {
    /// A record for a point that has not run.
    pub fn new(point: &Point) -> PointRecord {
        PointRecord {
            name: point.name.clone(),
            options: point.options.clone(),
            state: State::Pending,
            trained: false,
            analyses: Vec::new(),
            started: None,
            finished: None,
            seconds: None,
            exit_status: None,
            error: None,
            job: None,
        }
    }

    /// Read a point's record; `None` if it has none (or an unreadable one: the point then
    /// runs again, and `train --resume` continues whatever its run directory holds).
    pub fn read(folder: &SweepFolder, name: &str) -> Option<PointRecord> {
        let text = fs::read(folder.point_record(name)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Write the record atomically.
    pub fn write(&self, folder: &SweepFolder) -> Result<()> {
        let json = serde_json::to_vec_pretty(self)?;
        write_atomic(&folder.point_record(&self.name), &json)?;
        Ok(())
    }
}

/// A point's state as seen now: its record, corrected by its claim (a record saying
/// `running` whose claim nobody holds was left by a process that died).
#[derive(Clone, Debug)]
pub struct Observed {
    pub state: State,
    pub record: Option<PointRecord>,
    /// Who runs it, if someone does.
    pub holder: Option<String>,
}

impl Observed {
    /// Done, with every one of `analyses` run.
    pub fn is_done_with(&self, analyses: &[String]) -> bool {
        self.state == State::Done
            && self
                .record
                .as_ref()
                .is_some_and(|r| analyses.iter().all(|a| r.analyses.contains(a)))
    }
}

/// Observe one point.
pub fn observe(folder: &SweepFolder, name: &str) -> Observed {
    let record = PointRecord::read(folder, name);
    let holder = Claim::holder(&folder.claim(name));
    let state = match (&holder, &record) {
        (Some(_), _) => State::Running,
        (None, None) => State::Pending,
        (None, Some(r)) => match r.state {
            State::Running => State::Interrupted,
            State::Done if !folder.run_dir(name).join("manifest.json").is_file() => State::Pending,
            s => s,
        },
    };
    Observed {
        state,
        record,
        holder,
    }
}

/// The newest snapshot's batch of a run (its manifest is rewritten atomically after every
/// file, so it can be read while `train` runs).
pub fn newest_snapshot(run_dir: &Path) -> Option<u64> {
    let text = fs::read(run_dir.join("manifest.json")).ok()?;
    let manifest: Manifest = serde_json::from_slice(&text).ok()?;
    manifest.snapshots.last().map(|e| e.batch)
}

/// One row of the status table.
#[derive(Clone, Debug)]
pub struct Row {
    /// Index in the current grid; `None` for a point of an earlier version of the grid.
    pub index: Option<usize>,
    pub name: String,
    pub options: Vec<(String, OptValue)>,
    pub observed: Observed,
    pub batch: Option<u64>,
}

/// Observe every point (the grid's, then those of earlier grids, by name) and write
/// `sweep_status.parquet` under the status lock. Returns the rows.
pub fn write_table(folder: &SweepFolder, points: &[Point]) -> Result<Vec<Row>> {
    let _lock = folder.lock()?;
    write_table_locked(folder, points)
}

/// [`write_table`] for a caller holding [`SweepFolder::lock`].
pub fn write_table_locked(folder: &SweepFolder, points: &[Point]) -> Result<Vec<Row>> {
    let rows = rows(folder, points);
    write_parquet_atomic(&folder.status_table(), &mut table(&rows)?)?;
    Ok(rows)
}

/// Observe every point without writing anything.
pub fn rows(folder: &SweepFolder, points: &[Point]) -> Vec<Row> {
    let row = |index, name: &str, options: &[(String, OptValue)]| Row {
        index,
        name: name.to_string(),
        options: options.to_vec(),
        observed: observe(folder, name),
        batch: newest_snapshot(&folder.run_dir(name)),
    };
    let mut rows: Vec<Row> = points
        .iter()
        .map(|p| row(Some(p.index), &p.name, &p.options))
        .collect();
    let in_grid: std::collections::HashSet<&str> = points.iter().map(|p| p.name.as_str()).collect();
    let mut earlier: Vec<PointRecord> = fs::read_dir(folder.point_records())
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| serde_json::from_slice::<PointRecord>(&fs::read(e.path()).ok()?).ok())
        .filter(|r| !in_grid.contains(r.name.as_str()))
        .collect();
    earlier.sort_by(|a, b| a.name.cmp(&b.name));
    rows.extend(earlier.iter().map(|r| row(None, &r.name, &r.options)));
    rows
}

/// The status table: `index`, `name`, `in_grid`, one column per option (Int64, Float64 or
/// String; null where a point does not set it), `state`, `started`, `finished`, `seconds`,
/// `exit_status`, `error`, `job`, `batch` (the newest snapshot).
fn table(rows: &[Row]) -> Result<DataFrame> {
    let n = rows.len();
    let mut columns = vec![
        Column::new(
            "index".into(),
            rows.iter()
                .map(|r| r.index.map(|i| i as i64))
                .collect::<Vec<_>>(),
        ),
        Column::new(
            "name".into(),
            rows.iter().map(|r| r.name.clone()).collect::<Vec<_>>(),
        ),
        Column::new(
            "in_grid".into(),
            rows.iter().map(|r| r.index.is_some()).collect::<Vec<_>>(),
        ),
    ];
    let mut keys: Vec<&String> = Vec::new();
    for (k, _) in rows.iter().flat_map(|r| &r.options) {
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    for key in keys {
        let values: Vec<Option<&OptValue>> = rows
            .iter()
            .map(|r| r.options.iter().find(|(k, _)| k == key).map(|(_, v)| v))
            .collect();
        columns.push(option_column(key, &values));
    }
    let record = |f: &dyn Fn(&PointRecord) -> Option<String>| -> Vec<Option<String>> {
        rows.iter()
            .map(|r| r.observed.record.as_ref().and_then(f))
            .collect()
    };
    columns.extend([
        Column::new(
            "state".into(),
            rows.iter()
                .map(|r| r.observed.state.as_str())
                .collect::<Vec<_>>(),
        ),
        Column::new("started".into(), record(&|r| r.started.clone())),
        Column::new("finished".into(), record(&|r| r.finished.clone())),
        Column::new(
            "seconds".into(),
            rows.iter()
                .map(|r| r.observed.record.as_ref().and_then(|r| r.seconds))
                .collect::<Vec<_>>(),
        ),
        Column::new(
            "exit_status".into(),
            rows.iter()
                .map(|r| {
                    r.observed
                        .record
                        .as_ref()
                        .and_then(|r| r.exit_status.map(i64::from))
                })
                .collect::<Vec<_>>(),
        ),
        Column::new("error".into(), record(&|r| r.error.clone())),
        Column::new(
            "job".into(),
            rows.iter()
                .map(|r| {
                    r.observed
                        .holder
                        .clone()
                        .or_else(|| r.observed.record.as_ref()?.job.clone())
                })
                .collect::<Vec<_>>(),
        ),
        Column::new(
            "batch".into(),
            rows.iter()
                .map(|r| r.batch.map(|b| b as i64))
                .collect::<Vec<_>>(),
        ),
    ]);
    Ok(DataFrame::new(n, columns)?)
}

/// An option's column: Int64 if every value is an integer, Float64 if they are numbers,
/// else String.
fn option_column(key: &str, values: &[Option<&OptValue>]) -> Column {
    let all = |f: fn(&OptValue) -> bool| values.iter().flatten().all(|v| f(v));
    if all(|v| matches!(v, OptValue::Int(_))) {
        let ints: Vec<Option<i64>> = values
            .iter()
            .map(|v| match v {
                Some(OptValue::Int(i)) => Some(*i),
                _ => None,
            })
            .collect();
        Column::new(key.into(), ints)
    } else if all(|v| matches!(v, OptValue::Int(_) | OptValue::Float(_))) {
        let floats: Vec<Option<f64>> = values
            .iter()
            .map(|v| match v {
                Some(OptValue::Int(i)) => Some(*i as f64),
                Some(OptValue::Float(f)) => Some(*f),
                _ => None,
            })
            .collect();
        Column::new(key.into(), floats)
    } else {
        let texts: Vec<Option<String>> = values.iter().map(|v| v.map(OptValue::cli_text)).collect();
        Column::new(key.into(), texts)
    }
}
