//! The replay engine: open a run, pick its snapshots, rebuild the model of each and hand it to
//! a measurement, in parallel with rayon.
//!
//! Each rayon task reads, checks and decompresses its own snapshot and drops it when done, so
//! at most one snapshot per thread is in memory, however long the run.

use anyhow::{bail, Result};
use digitlab::model::Transformer;
use digitlab_snapshots::FileEntry;
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;

use crate::run::{ReplayError, Run};

/// The results of a replay, in batch order, and the snapshots skipped as damaged.
pub struct Replayed<T> {
    pub results: Vec<(u64, T)>,
    pub skipped: Vec<String>,
}

/// Runs `measure` on the model of every entry, in parallel. A damaged snapshot stops the
/// replay with its file named, unless `skip_damaged`.
pub fn replay<T, F>(
    run: &Run,
    entries: &[FileEntry],
    skip_damaged: bool,
    progress: bool,
    measure: F,
) -> Result<Replayed<T>>
where
    T: Send,
    F: Fn(u64, &Transformer) -> Result<T> + Sync,
{
    let bar = if progress {
        ProgressBar::new(entries.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{prefix} {bar:40} {pos}/{len} snapshots  eta {eta}")
            .expect("valid template"),
    );
    bar.set_prefix(run.id.clone());
    let outcomes: Vec<Result<Option<(u64, T)>, String>> = entries
        .par_iter()
        .map(|entry| {
            let outcome = match run.load_model(entry) {
                Ok(model) => measure(entry.batch, &model)
                    .map(|t| Some((entry.batch, t)))
                    .map_err(|e| format!("{e:#}")),
                Err(ReplayError::Damaged(message)) if skip_damaged => {
                    bar.println(format!("skipped: {message}"));
                    Ok(None)
                }
                Err(ReplayError::Damaged(message)) => Err(format!(
                    "{message} (pass --skip-damaged to analyse the other snapshots)"
                )),
                Err(ReplayError::Other(e)) => Err(format!("{e:#}")),
            };
            bar.inc(1);
            outcome.map_err(|e| format!("snapshot at batch {}: {e}", entry.batch))
        })
        .collect();
    bar.finish_and_clear();
    let mut results = Vec::new();
    let mut skipped = Vec::new();
    for (entry, outcome) in entries.iter().zip(outcomes) {
        match outcome {
            Ok(Some(r)) => results.push(r),
            Ok(None) => skipped.push(entry.file.clone()),
            Err(e) => bail!(e),
        }
    }
    Ok(Replayed { results, skipped })
}
