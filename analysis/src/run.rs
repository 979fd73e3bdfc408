//! A run opened for analysis: its directory, its config and the id its rows carry; which of
//! its snapshots to replay, and the model at one of them.

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
