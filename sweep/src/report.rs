//! What `sweep plan` and `sweep status` print: one line per point.

use std::path::Path;

use digitlab_snapshots::read_parquet;

use crate::folder::SweepFolder;
use crate::point::Point;
use crate::status::{Row, State};
use crate::tools::Checked;

/// `index  steps  state  name`, then the analyses.
pub fn print_plan(
    folder: &SweepFolder,
    points: &[Point],
    checked: &[Checked],
    rows: Option<&[Row]>,
    analyses: &[String],
) {
    println!("{} points into {}", points.len(), folder.root().display());
    println!("{:>5}  {:>7}  {:<11}  name", "index", "steps", "state");
    for (p, c) in points.iter().zip(checked) {
        let state = rows
            .and_then(|rows| rows.iter().find(|r| r.name == p.name))
            .map_or(State::Pending, |r| r.observed.state);
        println!(
            "{:>5}  {:>7}  {:<11}  {}",
            p.index,
            c.steps,
            state.as_str(),
            p.name
        );
    }
    let analyses = if analyses.is_empty() {
        "none".to_string()
    } else {
        analyses.join(", ")
    };
    println!("after training: analyze {analyses}; at the end: analyze summary");
}

/// Counts by state, then `index  state  time  name  result`.
pub fn print_status(folder: &SweepFolder, rows: &[Row]) {
    let count = |s: State| rows.iter().filter(|r| r.observed.state == s).count();
    let states = [
        State::Done,
        State::Running,
        State::Failed,
        State::Interrupted,
        State::Pending,
    ];
    let counts: Vec<String> = states
        .iter()
        .map(|&s| format!("{} {}", count(s), s.as_str()))
        .collect();
    println!(
        "{}: {} points: {}",
        folder.root().display(),
        rows.len(),
        counts.join(", ")
    );
    println!(
        "{:>5}  {:<11}  {:>9}  {:<40}  result",
        "index", "state", "time", "name"
    );
    for row in rows {
        let record = row.observed.record.as_ref();
        let time = record
            .and_then(|r| r.seconds)
            .map_or(String::new(), |s| format!("{s:.1} s"));
        let result = match row.observed.state {
            State::Done => phases_result(&folder.run_dir(&row.name)),
            State::Running => match &row.observed.holder {
                Some(h) => format!("batch {} ({h})", row.batch.unwrap_or(0)),
                None => String::new(),
            },
            State::Failed => record.and_then(|r| r.error.clone()).unwrap_or_default(),
            State::Interrupted => format!("resumes from batch {}", row.batch.unwrap_or(0)),
            State::Pending => String::new(),
        };
        let index = row.index.map_or("-".to_string(), |i| i.to_string());
        println!(
            "{index:>5}  {:<11}  {time:>9}  {:<40}  {result}",
            row.observed.state.as_str(),
            row.name
        );
    }
    if rows.iter().any(|r| r.index.is_none()) {
        println!("(index - : a point of an earlier version of the grid, kept)");
    }
}

/// `digit 0 leaves ln10 at 1200` per digit, from the run's `analysis/phases.parquet` (eval
/// loss), or nothing if that analysis did not run.
fn phases_result(run_dir: &Path) -> String {
    let Ok(df) = read_parquet(&run_dir.join("analysis").join("phases.parquet")) else {
        return String::new();
    };
    let (Ok(digit), Ok(source), Ok(leaves), Ok(level)) = (
        df.column("digit"),
        df.column("source"),
        df.column("leaves_ln10_batch"),
        df.column("final_level"),
    ) else {
        return String::new();
    };
    (0..df.height())
        .filter(|&i| source.get(i).is_ok_and(|s| s.get_str() == Some("eval")))
        .map(|i| {
            let text =
                |c: &polars::prelude::Column| c.get(i).map_or("?".to_string(), |v| v.to_string());
            let level = level
                .get(i)
                .ok()
                .and_then(|v| v.get_str().map(str::to_string))
                .unwrap_or_default();
            format!(
                "digit {} leaves ln10 at {}, ends at {level}",
                text(digit),
                text(leaves)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}
