//! The run directory: creating and opening it, and reading and writing every file in it
//! through the manifest, so that what the manifest lists is always complete and checked.
//!
//! ```text
//! root/config.json          every hyperparameter, the seed, the version of the tool
//! root/manifest.json        snapshots and checkpoints: batch, file, sizes, sha256
//! root/snapshots/           batch-NNNNNN.safetensors.zst, checkpoint-NNNNNN.safetensors.zst
//! root/train_log.parquet    one row per batch
//! root/analysis/*.parquet   one file per analysis
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::compress::decompress_checked;
use crate::manifest::{checkpoint_file, snapshot_file};
use crate::{
    compress_snapshot, decode_tensors, read_parquet, write_atomic, write_parquet_atomic,
    Checkpoint, FileEntry, Manifest, NamedTensor, RunError, Snapshot, TrainLog,
};

/// File name of the configuration.
const CONFIG: &str = "config.json";
/// File name of the manifest.
const MANIFEST: &str = "manifest.json";
/// Folder of snapshot and checkpoint files.
const SNAPSHOTS: &str = "snapshots";
/// File name of the training log.
const TRAIN_LOG: &str = "train_log.parquet";
/// Folder of the analysis results.
const ANALYSIS: &str = "analysis";

/// An open run directory: its root, its configuration and its manifest (kept in memory and
/// rewritten on disk after every change).
#[derive(Debug)]
pub struct RunDir {
    root: PathBuf,
    config: Value,
    manifest: Manifest,
}

impl RunDir {
    /// Create a new run directory at `root` with `config.json` (pretty JSON), an empty
    /// `manifest.json` and the `snapshots/` folder.
    ///
    /// Refuses with [`RunError::AlreadyExists`] if `root` exists and is not an empty
    /// directory.
    pub fn create(root: &Path, config: &Value) -> Result<RunDir, RunError> {
        match fs::metadata(root) {
            Ok(meta) => {
                let empty_dir = meta.is_dir()
                    && fs::read_dir(root)
                        .map_err(|e| RunError::io(root, e))?
                        .next()
                        .is_none();
                if !empty_dir {
                    return Err(RunError::AlreadyExists {
                        path: root.to_path_buf(),
                    });
                }
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(RunError::io(root, e)),
        }
        let snapshots = root.join(SNAPSHOTS);
        fs::create_dir_all(&snapshots).map_err(|e| RunError::io(&snapshots, e))?;
        let run = RunDir {
            root: root.to_path_buf(),
            config: config.clone(),
            manifest: Manifest::default(),
        };
        write_json(&run.root.join(CONFIG), &run.config)?;
        write_json(&run.root.join(MANIFEST), &run.manifest)?;
        Ok(run)
    }

    /// Open an existing run directory.
    ///
    /// [`RunError::NotARun`] if `config.json` or `manifest.json` is missing (the error says
    /// which); [`RunError::Damaged`] if either does not parse or the manifest is inconsistent.
    pub fn open(root: &Path) -> Result<RunDir, RunError> {
        let config: Value = read_json(root, CONFIG)?;
        let manifest: Manifest = read_json(root, MANIFEST)?;
        manifest
            .validate()
            .map_err(|reason| RunError::damaged(root.join(MANIFEST), reason))?;
        Ok(RunDir {
            root: root.to_path_buf(),
            config,
            manifest,
        })
    }

    /// The run's root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The content of `config.json`.
    pub fn config(&self) -> &Value {
        &self.config
    }

    /// Rewrite `config.json` atomically (e.g. a resume with a new step count).
    pub fn set_config(&mut self, config: &Value) -> Result<(), RunError> {
        write_json(&self.root.join(CONFIG), config)?;
        self.config = config.clone();
        Ok(())
    }

    /// The content of `manifest.json`.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Compress `tensors` (see [`compress_snapshot`]), write
    /// `snapshots/batch-{batch:06}.safetensors.zst` atomically, then rewrite `manifest.json`
    /// atomically. An existing entry of the same batch is replaced.
    pub fn write_snapshot(
        &mut self,
        batch: u64,
        tensors: &[NamedTensor],
        metadata: &BTreeMap<String, String>,
    ) -> Result<FileEntry, RunError> {
        let (compressed, raw_bytes, sha256) = compress_snapshot(tensors, metadata)?;
        self.write_compressed_snapshot(batch, &compressed, raw_bytes, sha256)
    }

    /// Like [`RunDir::write_snapshot`], for bytes already produced by [`compress_snapshot`]
    /// (e.g. on another thread); `raw_bytes` and `sha256` are its other two results.
    pub fn write_compressed_snapshot(
        &mut self,
        batch: u64,
        compressed: &[u8],
        raw_bytes: u64,
        sha256: String,
    ) -> Result<FileEntry, RunError> {
        let entry = self.write_file(snapshot_file(batch), batch, compressed, raw_bytes, sha256)?;
        self.update_manifest(|m| m.upsert_snapshot(entry.clone()))?;
        Ok(entry)
    }

    /// Read a snapshot listed in the manifest: read, decompress, verify size and sha256,
    /// decode. [`RunError::Damaged`] naming the file if any of that fails.
    pub fn read_snapshot(&self, entry: &FileEntry) -> Result<Snapshot, RunError> {
        let (path, raw) = self.read_verified(entry, snapshot_file)?;
        let (tensors, metadata) = decode_tensors(&raw).map_err(|e| RunError::damaged(&path, e))?;
        Ok(Snapshot {
            batch: entry.batch,
            tensors,
            metadata,
        })
    }

    /// Write `snapshots/checkpoint-{batch:06}.safetensors.zst` (tensor names prefixed
    /// `param.`, `adam_m.`, `adam_v.`; metadata `batch` and `kind = checkpoint`) atomically,
    /// then rewrite `manifest.json`. An existing entry of the same batch is replaced.
    pub fn write_checkpoint(&mut self, checkpoint: &Checkpoint) -> Result<FileEntry, RunError> {
        let (tensors, metadata) = checkpoint.to_file_tensors();
        let (compressed, raw_bytes, sha256) = compress_snapshot(&tensors, &metadata)?;
        let batch = checkpoint.batch;
        let entry = self.write_file(
            checkpoint_file(batch),
            batch,
            &compressed,
            raw_bytes,
            sha256,
        )?;
        self.update_manifest(|m| m.upsert_checkpoint(entry.clone()))?;
        Ok(entry)
    }

    /// Read a checkpoint listed in the manifest, verified like [`RunDir::read_snapshot`].
    /// Each tensor list comes back sorted by name.
    pub fn read_checkpoint(&self, entry: &FileEntry) -> Result<Checkpoint, RunError> {
        let (path, raw) = self.read_verified(entry, checkpoint_file)?;
        let (tensors, metadata) = decode_tensors(&raw).map_err(|e| RunError::damaged(&path, e))?;
        let checkpoint = Checkpoint::from_file_tensors(tensors, &metadata)
            .map_err(|reason| RunError::damaged(&path, reason))?;
        if checkpoint.batch != entry.batch {
            return Err(RunError::damaged(
                &path,
                format!(
                    "it holds batch {}, manifest.json says {}",
                    checkpoint.batch, entry.batch
                ),
            ));
        }
        Ok(checkpoint)
    }

    /// Drop the manifest entries (snapshots and checkpoints) with batch > `batch`, rewrite
    /// `manifest.json`, then delete their files. Used when resuming from an older checkpoint.
    pub fn truncate_after(&mut self, batch: u64) -> Result<(), RunError> {
        // Manifest first: a crash in between leaves unlisted files, never listed missing ones.
        let removed = self.update_manifest(|m| m.truncate_after(batch))?;
        for entry in removed {
            let path = self.root.join(&entry.file);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(RunError::io(&path, e)),
            }
        }
        Ok(())
    }

    /// `root/train_log.parquet`.
    pub fn train_log_path(&self) -> PathBuf {
        self.root.join(TRAIN_LOG)
    }

    /// `root/analysis/{name}.parquet`; [`write_parquet_atomic`] creates the folder.
    pub fn analysis_path(&self, name: &str) -> PathBuf {
        self.root.join(ANALYSIS).join(format!("{name}.parquet"))
    }

    /// Write the training log to [`RunDir::train_log_path`] atomically.
    pub fn write_train_log(&self, log: &TrainLog) -> Result<(), RunError> {
        write_parquet_atomic(&self.train_log_path(), &mut log.to_dataframe()?)
    }

    /// Read the training log: `None` if the file does not exist, [`RunError::Damaged`] if it
    /// does not parse.
    pub fn read_train_log(&self) -> Result<Option<TrainLog>, RunError> {
        let path = self.train_log_path();
        match fs::metadata(&path) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(RunError::io(&path, e)),
        }
        let df = read_parquet(&path)?;
        TrainLog::from_dataframe(&df)
            .map(Some)
            .map_err(|e| RunError::damaged(&path, e))
    }

    /// Write a compressed file at `rel` (relative to the root) atomically; its manifest entry.
    fn write_file(
        &self,
        rel: String,
        batch: u64,
        compressed: &[u8],
        raw_bytes: u64,
        sha256: String,
    ) -> Result<FileEntry, RunError> {
        write_atomic(&self.root.join(&rel), compressed)?;
        Ok(FileEntry {
            batch,
            file: rel,
            raw_bytes,
            compressed_bytes: compressed.len() as u64,
            sha256,
        })
    }

    /// Apply `change` to a copy of the manifest, check it, write it atomically, and only then
    /// adopt it, so memory and disk never disagree.
    fn update_manifest<R>(
        &mut self,
        change: impl FnOnce(&mut Manifest) -> R,
    ) -> Result<R, RunError> {
        let mut manifest = self.manifest.clone();
        let result = change(&mut manifest);
        manifest
            .validate()
            .map_err(|reason| RunError::InvalidInput {
                what: MANIFEST.into(),
                reason,
            })?;
        write_json(&self.root.join(MANIFEST), &manifest)?;
        self.manifest = manifest;
        Ok(result)
    }

    /// Read the compressed file of `entry`, check it is the file `expected_file` names for its
    /// batch, and return its path and its verified decompressed bytes.
    fn read_verified(
        &self,
        entry: &FileEntry,
        expected_file: fn(u64) -> String,
    ) -> Result<(PathBuf, Vec<u8>), RunError> {
        if entry.file != expected_file(entry.batch) {
            return Err(RunError::InvalidInput {
                what: format!("a read of {}", entry.file),
                reason: format!(
                    "the entry of batch {} must name {}",
                    entry.batch,
                    expected_file(entry.batch)
                ),
            });
        }
        let path = self.root.join(&entry.file);
        let compressed = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(RunError::damaged(
                    &path,
                    "listed in manifest.json but missing",
                ))
            }
            Err(e) => return Err(RunError::io(&path, e)),
        };
        if compressed.len() as u64 != entry.compressed_bytes {
            return Err(RunError::damaged(
                &path,
                format!(
                    "it is {} bytes, manifest.json says {} (truncated or overwritten)",
                    compressed.len(),
                    entry.compressed_bytes
                ),
            ));
        }
        let raw = decompress_checked(&compressed, entry.raw_bytes, &entry.sha256)
            .map_err(|reason| RunError::damaged(&path, reason))?;
        Ok((path, raw))
    }
}

/// Write `value` as pretty JSON with a final newline, atomically.
fn write_json(path: &Path, value: &impl Serialize) -> Result<(), RunError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| RunError::InvalidInput {
        what: path.display().to_string(),
        reason: e.to_string(),
    })?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// Read and parse `root/name`: [`RunError::NotARun`] if it is missing, [`RunError::Damaged`]
/// if it does not parse.
fn read_json<T: DeserializeOwned>(root: &Path, name: &str) -> Result<T, RunError> {
    let path = root.join(name);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(RunError::NotARun {
                root: root.to_path_buf(),
                missing: path,
            })
        }
        Err(e) => return Err(RunError::io(&path, e)),
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| RunError::damaged(&path, format!("not valid {name} ({e})")))
}
