//! A run opened for analysis: its directory, its config and the id its rows carry; which of
//! its snapshots to replay, and the model at one of them.
//!
//! The manifest is read once, when the run is opened, and every stage of an invocation uses
//! that list: a run that is still training can be analysed, and the analysis covers the
//! snapshots listed when the command started.

use std::path::Path;

use anyhow::{bail, Result};
use candle_core::Device;
use digitlab::config::TrainConfig;
use digitlab::model::Transformer;
use digitlab_snapshots::{FileEntry, RunDir, RunError};

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
    /// Opens the run at `path` for reading: its manifest (read once, see the module doc) and
    /// its config, validated as `train` validates one from the command line.
    pub fn open(path: &Path) -> Result<Run> {
        let dir = RunDir::open(path)?;
        let cfg = TrainConfig::from_run(&dir)?;
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
        if selection.every == 0 {
            bail!("--every must be at least 1");
        }
        let picked: Vec<FileEntry> = in_range.iter().step_by(selection.every).cloned().collect();
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

    /// The snapshot at `batch`; an error listing the snapshots there are if there is none.
    pub fn snapshot_at(&self, batch: u64) -> Result<&FileEntry> {
        let all = &self.dir.manifest().snapshots;
        if let Some(entry) = all.iter().find(|e| e.batch == batch) {
            return Ok(entry);
        }
        match (all.first(), all.last()) {
            (Some(first), Some(last)) => bail!(
                "run {} has no snapshot at batch {batch}; its {} snapshots are at batches {} to \
                 {} (see manifest.json)",
                self.id,
                all.len(),
                first.batch,
                last.batch
            ),
            _ => bail!("run {} has no snapshots yet: train it first", self.id),
        }
    }

    /// The model at one snapshot (checksum verified).
    pub fn load_model(&self, entry: &FileEntry) -> Result<Transformer, ReplayError> {
        let snapshot = self.dir.read_snapshot(entry).map_err(|e| match e {
            RunError::Damaged { .. } => ReplayError::Damaged(e.to_string()),
            other => ReplayError::Other(other.into()),
        })?;
        // The config hash ties the snapshot to config.json, so a tensor of the wrong shape
        // means a snapshot written by another build.
        Transformer::from_params(&self.cfg.model, &snapshot.tensors, &Device::Cpu).map_err(|e| {
            ReplayError::Other(anyhow::anyhow!(
                "{} does not hold the model config.json describes ({e}); it was written by \
                 another version of digitlab: analyse it with that version",
                self.dir.root().join(&entry.file).display()
            ))
        })
    }
}

/// Why a snapshot could not be replayed.
pub enum ReplayError {
    /// The file failed its checksum or did not decompress (message names the file).
    Damaged(String),
    Other(anyhow::Error),
}
