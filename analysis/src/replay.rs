//! The replay engine: open a run, pick its snapshots, rebuild the model of each and hand it to
//! a measurement, in parallel with rayon.
//!
//! Each rayon task reads, checks and decompresses its own snapshot and drops it when done, so
//! at most one snapshot per thread is in memory, however long the run.

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use digitlab::config::TrainConfig;
use digitlab::model::Transformer;
use digitlab_snapshots::{FileEntry, RunDir, RunError};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;

/// A run opened for analysis: its directory, its config and the id its rows carry.
pub struct Run {
    pub dir: RunDir,
    pub cfg: TrainConfig,
    /// The run directory's name, the `run` column of every analysis.
    pub id: String,
}

/// Which snapshots to replay.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Every K-th snapshot of those in range (1 = all).
    pub every: usize,
    pub from: Option<u64>,
    pub to: Option<u64>,
}

impl Run {
    pub fn open(path: &Path) -> Result<Run> {
        let dir = RunDir::open(path)?;
        let cfg: TrainConfig = serde_json::from_value(dir.config().clone()).with_context(|| {
            format!(
                "{} is not a digitlab training config",
                path.join("config.json").display()
            )
        })?;
        let id = path
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| path.display().to_string());
        Ok(Run { dir, cfg, id })
    }

    /// The snapshots to replay, in batch order; an error if there are none.
    pub fn select(&self, selection: &Selection) -> Result<Vec<FileEntry>> {
        let all = &self.dir.manifest().snapshots;
        if all.is_empty() {
            bail!(
                "{} has no snapshots yet: train it first",
                self.dir.root().display()
            );
        }
        let in_range: Vec<FileEntry> = all
            .iter()
            .filter(|e| selection.from.is_none_or(|f| e.batch >= f))
            .filter(|e| selection.to.is_none_or(|t| e.batch <= t))
            .cloned()
            .collect();
        let every = selection.every.max(1);
        let picked: Vec<FileEntry> = in_range.iter().step_by(every).cloned().collect();
        if picked.is_empty() {
            bail!(
                "no snapshot of {} lies in the batches asked for (it has {} to {})",
                self.dir.root().display(),
                all[0].batch,
                all[all.len() - 1].batch
            );
        }
        Ok(picked)
    }

    /// The model at one snapshot (checksum verified).
    pub fn load_model(&self, entry: &FileEntry) -> Result<Transformer, ReplayError> {
        let snapshot = self.dir.read_snapshot(entry).map_err(|e| match e {
            RunError::Damaged { .. } => ReplayError::Damaged(e.to_string()),
            other => ReplayError::Other(other.into()),
        })?;
        Transformer::from_params(&self.cfg.model, &snapshot.tensors, &Device::Cpu)
            .map_err(|e| ReplayError::Other(e.into()))
    }
}

/// Why a snapshot could not be replayed.
pub enum ReplayError {
    /// The file failed its checksum or did not decompress (message names the file).
    Damaged(String),
    Other(anyhow::Error),
}

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
