//! manifest.json: the index of a run's snapshot and checkpoint files with their sizes and
//! checksums. It is rewritten (atomically) after every file it lists, so whatever it lists is
//! complete on disk.

use serde::{Deserialize, Serialize};

/// The value of [`Manifest::format`] this crate writes and reads.
pub const MANIFEST_FORMAT: &str = "digitlab-run-v1";

/// One compressed safetensors file of the run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    /// Optimizer steps taken before the stored weights.
    pub batch: u64,
    /// Path relative to the run root, e.g. `snapshots/batch-000050.safetensors.zst`.
    pub file: String,
    /// Length of the decompressed (plain safetensors) bytes.
    pub raw_bytes: u64,
    /// Length of the file on disk.
    pub compressed_bytes: u64,
    /// Lower-case hex sha256 of the **decompressed** bytes.
    pub sha256: String,
}

/// The content of manifest.json. Both lists are sorted by batch, with at most one entry per
/// batch.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// Always [`MANIFEST_FORMAT`].
    pub format: String,
    /// Weight snapshots.
    pub snapshots: Vec<FileEntry>,
    /// Optimizer checkpoints.
    pub checkpoints: Vec<FileEntry>,
    /// [`crate::run_config_hash`] of the run's `config.json`, so an edited or foreign config
    /// is noticed when the run is opened (absent in manifests of older digitlab versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
}

impl Default for Manifest {
    /// An empty manifest of the current format.
    fn default() -> Self {
        Manifest {
            format: MANIFEST_FORMAT.to_string(),
            snapshots: Vec::new(),
            checkpoints: Vec::new(),
            config_hash: None,
        }
    }
}

/// Relative path of the snapshot file of `batch`.
pub fn snapshot_file(batch: u64) -> String {
    format!("snapshots/batch-{batch:06}.safetensors.zst")
}

/// Relative path of the checkpoint file of `batch`.
pub fn checkpoint_file(batch: u64) -> String {
    format!("snapshots/checkpoint-{batch:06}.safetensors.zst")
}

impl Manifest {
    /// Add a snapshot entry, replacing one of the same batch, keeping the list sorted.
    pub(crate) fn upsert_snapshot(&mut self, entry: FileEntry) {
        upsert(&mut self.snapshots, entry);
    }

    /// Add a checkpoint entry, replacing one of the same batch, keeping the list sorted.
    pub(crate) fn upsert_checkpoint(&mut self, entry: FileEntry) {
        upsert(&mut self.checkpoints, entry);
    }

    /// Remove the entries (snapshots and checkpoints) with batch > `batch`; return them.
    pub(crate) fn truncate_after(&mut self, batch: u64) -> Vec<FileEntry> {
        let mut removed = Vec::new();
        for list in [&mut self.snapshots, &mut self.checkpoints] {
            let keep = list.partition_point(|e| e.batch <= batch);
            removed.extend(list.drain(keep..));
        }
        removed
    }

    /// Check what a reader relies on: the format, sorted unique batches, and file names that
    /// are exactly the ones this crate writes (so a damaged manifest can never point a read or
    /// a delete outside the run's snapshots folder). The error is a plain description.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.format != MANIFEST_FORMAT {
            return Err(format!(
                "format is {:?}, this version of digitlab reads {MANIFEST_FORMAT:?}",
                self.format
            ));
        }
        if let Some(hash) = &self.config_hash {
            if hash.len() != 16 || !is_lower_hex(hash) {
                return Err(format!("config_hash {hash:?} is not 16 hex digits"));
            }
        }
        validate_list("snapshots", &self.snapshots, snapshot_file)?;
        validate_list("checkpoints", &self.checkpoints, checkpoint_file)
    }
}

/// Check one list of [`Manifest::validate`]: sorted unique batches, the file name `file_of`
/// gives for each batch, a well-formed sha256.
fn validate_list(what: &str, list: &[FileEntry], file_of: fn(u64) -> String) -> Result<(), String> {
    for pair in list.windows(2) {
        if pair[0].batch >= pair[1].batch {
            return Err(format!(
                "{what} are not sorted by batch with unique batches"
            ));
        }
    }
    for e in list {
        if e.file != file_of(e.batch) {
            return Err(format!(
                "{what} entry of batch {} names file {:?}, expected {:?}",
                e.batch,
                e.file,
                file_of(e.batch)
            ));
        }
        if e.sha256.len() != 64 || !is_lower_hex(&e.sha256) {
            return Err(format!("{} has a malformed sha256", e.file));
        }
    }
    Ok(())
}

/// Whether `text` is made of lower-case hex digits only.
fn is_lower_hex(text: &str) -> bool {
    text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Manifest {
    /// The newest batch any entry lists (snapshot or checkpoint), if any.
    pub(crate) fn last_batch(&self) -> Option<u64> {
        let last = |list: &[FileEntry]| list.last().map(|e| e.batch);
        last(&self.snapshots).max(last(&self.checkpoints))
    }

    /// Whether the manifest lists no file at all (a run stopped before its first snapshot).
    pub(crate) fn is_empty(&self) -> bool {
        self.snapshots.is_empty() && self.checkpoints.is_empty()
    }
}

/// Insert `entry` into the sorted `list`, replacing an entry of the same batch.
fn upsert(list: &mut Vec<FileEntry>, entry: FileEntry) {
    match list.binary_search_by_key(&entry.batch, |e| e.batch) {
        Ok(i) => list[i] = entry,
        Err(i) => list.insert(i, entry),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(batch: u64, sha: char) -> FileEntry {
        FileEntry {
            batch,
            file: snapshot_file(batch),
            raw_bytes: 10,
            compressed_bytes: 5,
            sha256: sha.to_string().repeat(64),
        }
    }

    #[test]
    fn upsert_keeps_sorted_unique_and_replaces() {
        let mut m = Manifest::default();
        for b in [50, 0, 100, 50] {
            m.upsert_snapshot(entry(b, 'a'));
        }
        m.upsert_snapshot(entry(50, 'b'));
        let batches: Vec<u64> = m.snapshots.iter().map(|e| e.batch).collect();
        assert_eq!(batches, vec![0, 50, 100]);
        assert_eq!(m.snapshots[1].sha256, "b".repeat(64));
        assert_eq!(m.validate(), Ok(()));
    }

    #[test]
    fn truncate_after_keeps_the_given_batch() {
        let mut m = Manifest::default();
        for b in [0, 50, 100, 150] {
            m.upsert_snapshot(entry(b, 'a'));
        }
        let removed = m.truncate_after(50);
        assert_eq!(m.snapshots.len(), 2);
        assert_eq!(
            removed.iter().map(|e| e.batch).collect::<Vec<_>>(),
            [100, 150]
        );
    }

    #[test]
    fn validate_rejects_foreign_paths_and_bad_order() {
        let mut m = Manifest::default();
        m.snapshots.push(FileEntry {
            file: "../../etc/passwd".into(),
            ..entry(0, 'a')
        });
        assert!(m.validate().unwrap_err().contains("expected"));

        let m = Manifest {
            snapshots: vec![entry(50, 'a'), entry(0, 'a')],
            ..Manifest::default()
        };
        assert!(m.validate().unwrap_err().contains("sorted"));

        let m = Manifest {
            format: "other".into(),
            ..Manifest::default()
        };
        assert!(m.validate().is_err());
    }
}
