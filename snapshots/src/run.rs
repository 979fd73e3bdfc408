//! The run directory: creating and opening it, and reading and writing every file in it
//! through the manifest, so that what the manifest lists is always complete and checked.
//!
//! ```text
//! root/config.json          every hyperparameter, the seed, the version of the tool
//! root/manifest.json        snapshots and checkpoints: batch, file, sizes, sha256
//! root/snapshots/           batch-NNNNNN.safetensors.zst, checkpoint-NNNNNN.safetensors.zst
//! root/train_log.parquet    one row per batch
//! root/analysis/*.parquet   one file per analysis
//! root/analysis/digitlab.lock  held by the one analysis writing tables (`lock_analysis`)
//! root/digitlab.lock        held by the one process training the run (see `RunLock`)
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::atomic::{is_temporary, replace_file, sync_folder};
use crate::compress::decompress_checked;
use crate::lock::{RunLock, LOCK_FILE};
use crate::manifest::{checkpoint_file, snapshot_file};
use crate::parquet::{read_parquet_checked, write_parquet_with_metadata};
use crate::regular_file::{read_regular, ReadError};
use crate::{
    compress_snapshot, decode_tensors, run_config_hash, write_atomic, Checkpoint, FileEntry,
    Manifest, NamedTensor, RunError, Snapshot, TrainLog,
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
/// Metadata key (in snapshots, checkpoints and the training log) of the run's config hash.
pub const CONFIG_HASH_KEY: &str = "config_hash";
/// Key of the config hash in the training log's parquet metadata.
const LOG_CONFIG_HASH_KEY: &str = "digitlab.config_hash";
/// The largest config.json read: a config is a few hundred bytes.
const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// The largest manifest.json read: about 200 bytes per file, so a million snapshots fit.
const MAX_MANIFEST_BYTES: u64 = 1 << 28;

/// A snapshot or checkpoint for [`RunDir::write_files`].
pub enum NewFile {
    /// Weights after `batch` batches, with the snapshot's metadata (see
    /// [`RunDir::write_snapshot`]).
    Snapshot {
        batch: u64,
        tensors: Vec<NamedTensor>,
        metadata: BTreeMap<String, String>,
    },
    Checkpoint(Checkpoint),
}

impl NewFile {
    /// Bytes of the tensors the file holds.
    pub fn tensor_bytes(&self) -> usize {
        let floats =
            |tensors: &[NamedTensor]| -> usize { tensors.iter().map(|t| t.data.len()).sum() };
        4 * match self {
            NewFile::Snapshot { tensors, .. } => floats(tensors),
            NewFile::Checkpoint(c) => floats(&c.params) + floats(&c.adam_m) + floats(&c.adam_v),
        }
    }
}

/// An open run directory: its root, its configuration and its manifest (kept in memory and
/// rewritten on disk after every change).
///
/// Opened with [`RunDir::open`] it is a read-only view: the manifest is read once, and every
/// file read through it is checked against it and against `config.json` (the config hash in
/// every snapshot, checkpoint and training log). Created with [`RunDir::create`] or opened
/// with [`RunDir::open_locked`] it holds the run's lock ([`RunLock`]) and may write.
#[derive(Debug)]
pub struct RunDir {
    root: PathBuf,
    config: Value,
    config_hash: String,
    manifest: Manifest,
    lock: Option<RunLock>,
}

impl RunDir {
    /// Create a new run directory at `root` with `config.json` (pretty JSON), the
    /// `snapshots/` folder and, last, an empty `manifest.json`; the returned run holds the lock.
    ///
    /// `root` may be missing, an empty directory, or what a run stopped before its first
    /// snapshot left behind (no manifest, or one listing nothing, and only the run's own
    /// files), which is replaced. Anything else is refused with [`RunError::AlreadyExists`]
    /// before anything is written; [`RunError::Locked`] if another process writes there.
    pub fn create(root: &Path, config: &Value) -> Result<RunDir, RunError> {
        check_new_place(root)?;
        fs::create_dir_all(root).map_err(|e| RunError::write(root, e))?;
        let lock = RunLock::acquire(root)?;
        // Again under the lock: another process may have started a run here meanwhile.
        check_new_place(root)?;
        for stale in [CONFIG, MANIFEST, TRAIN_LOG] {
            remove_if_present(&root.join(stale))?;
        }
        remove_temporary_files(root)?;
        let snapshots = root.join(SNAPSHOTS);
        fs::create_dir_all(&snapshots).map_err(|e| RunError::write(&snapshots, e))?;
        let config_hash = run_config_hash(config);
        let run = RunDir {
            root: root.to_path_buf(),
            config: config.clone(),
            manifest: Manifest {
                config_hash: Some(config_hash.clone()),
                ..Manifest::default()
            },
            config_hash,
            lock: Some(lock),
        };
        write_json(&run.root.join(CONFIG), &run.config)?;
        // The manifest is written last: a folder without one is a run that never started.
        write_json(&run.root.join(MANIFEST), &run.manifest)?;
        Ok(run)
    }

    /// Open an existing run directory for reading (no lock).
    ///
    /// [`RunError::NotARun`] if `config.json` or `manifest.json` is missing (the error says
    /// which); [`RunError::Damaged`] if either is not a regular file, does not parse or the
    /// manifest is inconsistent; [`RunError::Mismatch`] if `config.json` is not the config the
    /// manifest was written for (edited, or copied from another run).
    pub fn open(root: &Path) -> Result<RunDir, RunError> {
        let config: Value = read_json(root, CONFIG, MAX_CONFIG_BYTES)?;
        let manifest: Manifest = read_json(root, MANIFEST, MAX_MANIFEST_BYTES)?;
        manifest
            .validate()
            .map_err(|reason| RunError::damaged(root.join(MANIFEST), reason))?;
        let config_hash = run_config_hash(&config);
        if let Some(expected) = manifest.config_hash.as_ref().filter(|h| **h != config_hash) {
            return Err(RunError::Mismatch {
                file: root.join(CONFIG),
                reason: format!(
                    "its config hash is {config_hash}, but manifest.json was written for a run \
                     with config hash {expected}, so config.json was edited or comes from \
                     another run"
                ),
            });
        }
        Ok(RunDir {
            root: root.to_path_buf(),
            config,
            config_hash,
            manifest,
            lock: None,
        })
    }

    /// Open an existing run directory for writing: check it is a run ([`RunDir::open`]), take
    /// its lock ([`RunError::Locked`] if another process holds it), read it again under the
    /// lock, and remove the temporary files a killed writer may have left.
    pub fn open_locked(root: &Path) -> Result<RunDir, RunError> {
        // First without the lock, so no lock file is created in a folder that is not a run.
        RunDir::open(root)?;
        let lock = RunLock::acquire(root)?;
        let mut run = RunDir::open(root)?;
        for folder in [SNAPSHOTS, ANALYSIS] {
            let path = root.join(folder);
            if fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(RunError::damaged(
                    &path,
                    "it is a symbolic link; the folders of a run must be real folders inside it",
                ));
            }
        }
        remove_temporary_files(root)?;
        run.lock = Some(lock);
        Ok(run)
    }

    /// The run's root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The content of `config.json`.
    pub fn config(&self) -> &Value {
        &self.config
    }

    /// [`run_config_hash`] of `config.json`: the hash every file of the run carries.
    pub fn config_hash(&self) -> &str {
        &self.config_hash
    }

    /// Rewrite `config.json` atomically (e.g. a resume with a new step count). Only `steps`
    /// may change: a config with another [`run_config_hash`] is refused.
    pub fn set_config(&mut self, config: &Value) -> Result<(), RunError> {
        self.check_writable()?;
        if run_config_hash(config) != self.config_hash {
            return Err(RunError::InvalidInput {
                what: CONFIG.into(),
                reason: "a run's config may change only in `steps`".into(),
            });
        }
        write_json(&self.root.join(CONFIG), config)?;
        self.config = config.clone();
        Ok(())
    }

    /// The content of `manifest.json`, as read when the run was opened (plus this process's
    /// own writes): one consistent list for a whole invocation, even while a `train` adds
    /// snapshots.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Compress `tensors` (see [`compress_snapshot`]), write
    /// `snapshots/batch-{batch:06}.safetensors.zst` atomically, then rewrite `manifest.json`
    /// atomically. An existing entry of the same batch is replaced. The run's config hash is
    /// put into `metadata` under [`CONFIG_HASH_KEY`].
    pub fn write_snapshot(
        &mut self,
        batch: u64,
        tensors: &[NamedTensor],
        metadata: &BTreeMap<String, String>,
    ) -> Result<FileEntry, RunError> {
        let file = NewFile::Snapshot {
            batch,
            tensors: tensors.to_vec(),
            metadata: metadata.clone(),
        };
        Ok(self.write_files(vec![file])?.remove(0))
    }

    /// Write several snapshots and checkpoints, each as [`RunDir::write_snapshot`] and
    /// [`RunDir::write_checkpoint`] do, in order, then list them all with one rewrite of
    /// `manifest.json`. A process killed in between leaves files the manifest does not list
    /// yet, as a kill between one file and its entry would: readers go by the manifest, and
    /// the next writer replaces them. One rewrite for many files matters when files come
    /// fast: at d_model 16, snapshots every 50 batches are 160 files a second, and rewriting
    /// and flushing a growing manifest (and the folder) after each one made `train` a tenth
    /// slower (6,370 against 7,100 steps/s).
    pub fn write_files(&mut self, files: Vec<NewFile>) -> Result<Vec<FileEntry>, RunError> {
        self.check_writable()?;
        let (mut written, mut folders) = (Vec::with_capacity(files.len()), Vec::new());
        for file in files {
            let checkpoint = matches!(file, NewFile::Checkpoint(_));
            let (rel, batch, tensors, metadata) = match file {
                NewFile::Snapshot {
                    batch,
                    tensors,
                    metadata,
                } => (snapshot_file(batch), batch, tensors, metadata),
                NewFile::Checkpoint(checkpoint) => {
                    let batch = checkpoint.batch;
                    let (tensors, metadata) = checkpoint.into_file_tensors();
                    (checkpoint_file(batch), batch, tensors, metadata)
                }
            };
            let (compressed, raw_bytes, sha256) = self.compress(&tensors, metadata)?;
            let (entry, folder) = self.write_file(rel, batch, &compressed, raw_bytes, sha256)?;
            if !folders.contains(&folder) {
                folders.push(folder);
            }
            written.push((checkpoint, entry));
        }
        // The renames reach the disk before the manifest lists them; each folder once.
        for folder in folders {
            sync_folder(&folder)?;
        }
        self.update_manifest(|m| {
            for (checkpoint, entry) in &written {
                if *checkpoint {
                    m.upsert_checkpoint(entry.clone());
                } else {
                    m.upsert_snapshot(entry.clone());
                }
            }
        })?;
        Ok(written.into_iter().map(|(_, entry)| entry).collect())
    }

    /// Like [`RunDir::write_snapshot`], for bytes already produced by [`compress_snapshot`]
    /// (e.g. on another thread); `raw_bytes` and `sha256` are its other two results. The
    /// metadata must hold the run's [`CONFIG_HASH_KEY`], or reading the snapshot fails.
    pub fn write_compressed_snapshot(
        &mut self,
        batch: u64,
        compressed: &[u8],
        raw_bytes: u64,
        sha256: String,
    ) -> Result<FileEntry, RunError> {
        self.check_writable()?;
        let (entry, folder) =
            self.write_file(snapshot_file(batch), batch, compressed, raw_bytes, sha256)?;
        sync_folder(&folder)?;
        self.update_manifest(|m| m.upsert_snapshot(entry.clone()))?;
        Ok(entry)
    }

    /// Read a snapshot listed in the manifest: read (a regular file only, bounded by the
    /// manifest's sizes), decompress, verify size and sha256 of the decompressed bytes,
    /// decode. [`RunError::Damaged`] naming the file if any of that fails (a directory, a
    /// link or a FIFO in its place included); [`RunError::Mismatch`] if it carries another
    /// config hash than `config.json`.
    pub fn read_snapshot(&self, entry: &FileEntry) -> Result<Snapshot, RunError> {
        let (path, raw) = self.read_verified(entry, snapshot_file)?;
        let (tensors, metadata) = decode_tensors(&raw).map_err(|e| RunError::damaged(&path, e))?;
        self.check_config_hash(&path, metadata.get(CONFIG_HASH_KEY))?;
        Ok(Snapshot {
            batch: entry.batch,
            tensors,
            metadata,
        })
    }

    /// Write `snapshots/checkpoint-{batch:06}.safetensors.zst` (tensor names prefixed
    /// `param.`, `adam_m.`, `adam_v.`; metadata `batch`, `kind = checkpoint` and the config
    /// hash) atomically, then rewrite `manifest.json`. An existing entry of the same batch is
    /// replaced.
    pub fn write_checkpoint(&mut self, checkpoint: &Checkpoint) -> Result<FileEntry, RunError> {
        Ok(self
            .write_files(vec![NewFile::Checkpoint(checkpoint.clone())])?
            .remove(0))
    }

    /// Read a checkpoint listed in the manifest, verified like [`RunDir::read_snapshot`].
    /// Each tensor list comes back sorted by name.
    pub fn read_checkpoint(&self, entry: &FileEntry) -> Result<Checkpoint, RunError> {
        let (path, raw) = self.read_verified(entry, checkpoint_file)?;
        let (tensors, metadata) = decode_tensors(&raw).map_err(|e| RunError::damaged(&path, e))?;
        self.check_config_hash(&path, metadata.get(CONFIG_HASH_KEY))?;
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
        self.check_writable()?;
        // Manifest first: a crash in between leaves unlisted files, never listed missing ones.
        let removed = self.update_manifest(|m| m.truncate_after(batch))?;
        for entry in removed {
            remove_if_present(&self.root.join(&entry.file))?;
        }
        Ok(())
    }

    /// `root/train_log.parquet`.
    pub fn train_log_path(&self) -> PathBuf {
        self.root.join(TRAIN_LOG)
    }

    /// Take the lock of the `analysis/` folder (creating the folder if needed, never through
    /// a link), which every analysis holds while it writes tables, and remove the temporary
    /// files a killed analysis left there. It is not the run's own lock, which `train` holds
    /// while it trains: a run that is still training can be analysed. [`RunError::Locked`],
    /// naming the holder's pid, if another analysis holds it.
    pub fn lock_analysis(&self) -> Result<RunLock, RunError> {
        let folder = self.root.join(ANALYSIS);
        match fs::symlink_metadata(&folder) {
            Ok(m) if !m.is_dir() => {
                return Err(RunError::damaged(
                    &folder,
                    "it is not a folder (a link or a file); the tables of a run are written \
                     into a real folder inside it",
                ))
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {
                fs::create_dir(&folder).map_err(|e| RunError::write(&folder, e))?
            }
            Err(e) => return Err(RunError::write(&folder, e)),
        }
        let lock = RunLock::acquire(&folder)?;
        remove_temporary_files_in(&folder)?;
        Ok(lock)
    }

    /// `root/analysis/{name}.parquet`; [`crate::write_parquet_atomic`] creates the folder.
    pub fn analysis_path(&self, name: &str) -> PathBuf {
        self.root.join(ANALYSIS).join(format!("{name}.parquet"))
    }

    /// Write the training log to [`RunDir::train_log_path`] atomically, with the run's config
    /// hash in its parquet metadata (key `digitlab.config_hash`).
    pub fn write_train_log(&self, log: &TrainLog) -> Result<(), RunError> {
        self.check_writable()?;
        let metadata =
            BTreeMap::from([(LOG_CONFIG_HASH_KEY.to_string(), self.config_hash.clone())]);
        write_parquet_with_metadata(&self.train_log_path(), &mut log.to_dataframe()?, &metadata)
    }

    /// Read the training log: `None` if the file does not exist. Checked against the run:
    /// [`RunError::Mismatch`] if its config hash is not the run's (a log copied from another
    /// run); [`RunError::Damaged`] if it is not a regular file, does not parse, its rows are
    /// not batches 0, 1, 2, … in order, or it ends before the newest batch the manifest lists
    /// (rows deleted) or after the config's `steps`. Rows a resume with more steps added since
    /// this view was opened are accepted and left out: the log ends at this view's `steps`.
    pub fn read_train_log(&self) -> Result<Option<TrainLog>, RunError> {
        let path = self.train_log_path();
        if !path_exists(&path) {
            return Ok(None);
        }
        let steps = self.config.get("steps").and_then(Value::as_u64);
        let needed = self.manifest.last_batch().unwrap_or(0);
        let check = |metadata: &BTreeMap<String, String>, rows: usize| {
            self.check_config_hash(&path, metadata.get(LOG_CONFIG_HASH_KEY))?;
            let rows = rows as u64;
            if rows < needed {
                return Err(RunError::damaged(
                    &path,
                    format!(
                        "it has {rows} rows, but manifest.json lists files up to batch \
                         {needed}, so it needs at least {needed} (rows were deleted)"
                    ),
                ));
            }
            // A `train --resume --steps` since this view was opened raised the steps of
            // config.json: the rows it added are progress, not damage.
            let steps_now = || {
                read_json::<Value>(&self.root, CONFIG, MAX_CONFIG_BYTES)
                    .ok()
                    .and_then(|c| c.get("steps").and_then(Value::as_u64))
            };
            if let Some(steps) = steps.filter(|&s| rows > s) {
                let steps = steps_now().map_or(steps, |now| now.max(steps));
                if rows > steps {
                    return Err(RunError::damaged(
                        &path,
                        format!("it has {rows} rows, more than the {steps} steps of config.json"),
                    ));
                }
            }
            Ok(())
        };
        let df = read_parquet_checked(&path, check)?;
        let mut log = TrainLog::from_dataframe(&df).map_err(|e| RunError::damaged(&path, e))?;
        if let Some((i, row)) = log
            .rows
            .iter()
            .enumerate()
            .find(|(i, r)| r.batch != *i as u64)
        {
            return Err(RunError::damaged(
                &path,
                format!(
                    "row {i} is batch {}, expected {i}: the rows must be batches 0, 1, 2, … \
                     in order (rows were deleted, reordered or duplicated)",
                    row.batch
                ),
            ));
        }
        // The log as far as the config this view was opened with goes.
        if let Some(steps) = steps {
            log.truncate(steps);
        }
        Ok(Some(log))
    }

    /// A [`RunError::Mismatch`] about `file` unless `found` is the run's config hash.
    fn check_config_hash(&self, file: &Path, found: Option<&String>) -> Result<(), RunError> {
        match found {
            Some(hash) if *hash == self.config_hash => Ok(()),
            Some(hash) => Err(RunError::Mismatch {
                file: file.to_path_buf(),
                reason: format!(
                    "it was written for config hash {hash}, but config.json hashes to {}, so \
                     one of the two was edited or copied from another run",
                    self.config_hash
                ),
            }),
            None => Err(RunError::Mismatch {
                file: file.to_path_buf(),
                reason: "it carries no config hash, so it was not written by this version of \
                         digitlab for this run"
                    .into(),
            }),
        }
    }

    /// An error unless this run holds the lock (it was created or opened for writing).
    fn check_writable(&self) -> Result<(), RunError> {
        match self.lock {
            Some(_) => Ok(()),
            None => Err(RunError::InvalidInput {
                what: format!("into {}", self.root.display()),
                reason: "the run was opened read-only; open it with RunDir::open_locked".into(),
            }),
        }
    }

    /// [`compress_snapshot`] of `tensors` with `metadata` and the run's [`CONFIG_HASH_KEY`].
    fn compress(
        &self,
        tensors: &[NamedTensor],
        mut metadata: BTreeMap<String, String>,
    ) -> Result<(Vec<u8>, u64, String), RunError> {
        metadata.insert(CONFIG_HASH_KEY.into(), self.config_hash.clone());
        compress_snapshot(tensors, &metadata)
    }

    /// Write a compressed file at `rel` (relative to the root) atomically, but for the flush
    /// of its folder; its manifest entry and the folder, which the caller flushes before the
    /// manifest lists the file.
    fn write_file(
        &self,
        rel: String,
        batch: u64,
        compressed: &[u8],
        raw_bytes: u64,
        sha256: String,
    ) -> Result<(FileEntry, PathBuf), RunError> {
        let folder = replace_file(&self.root.join(&rel), compressed)?;
        let entry = FileEntry {
            batch,
            file: rel,
            raw_bytes,
            compressed_bytes: compressed.len() as u64,
            sha256,
        };
        Ok((entry, folder))
    }

    /// Apply `change` to a copy of the manifest, check it, write it atomically, and only then
    /// adopt it, so memory and disk never disagree.
    fn update_manifest<R>(
        &mut self,
        change: impl FnOnce(&mut Manifest) -> R,
    ) -> Result<R, RunError> {
        let mut manifest = self.manifest.clone();
        let result = change(&mut manifest);
        manifest.config_hash = Some(self.config_hash.clone());
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
    ///
    /// The decompressed bytes (their length and sha256) are the contract, not the compressed
    /// file: a snapshot recompressed at another level is accepted. The file is refused
    /// unread if it is longer than any zstd compression of `raw_bytes` can be.
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
        let max_len = max_compressed_len(entry.raw_bytes);
        let compressed = read_regular(&path, max_len)
            .map_err(|e| e.damaged(&path, "listed in manifest.json but missing"))?;
        let raw = decompress_checked(&compressed, entry.raw_bytes, &entry.sha256)
            .map_err(|reason| RunError::damaged(&path, reason))?;
        Ok((path, raw))
    }
}

/// The longest a zstd frame of `raw_len` bytes can be (zstd's own compress bound: the data
/// stored uncompressed in blocks, plus frame and block headers and the checksum).
fn max_compressed_len(raw_len: u64) -> u64 {
    raw_len
        .saturating_add(raw_len / 128)
        .saturating_add(1 << 10)
}

/// Whether something (a file, a folder, a link, even a dangling one) is at `path`.
fn path_exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

/// Refuse to create a run at `root` unless it is missing, an empty directory, or a run
/// stopped before its first snapshot (see [`is_unstarted_run`]).
fn check_new_place(root: &Path) -> Result<(), RunError> {
    let meta = match fs::symlink_metadata(root) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(RunError::io(root, e)),
    };
    if meta.file_type().is_symlink() && fs::metadata(root).is_err() {
        return Err(RunError::BadPath {
            path: root.to_path_buf(),
            reason: "it is a symbolic link to something that does not exist; remove the link \
                     or choose another directory"
                .into(),
        });
    }
    let is_dir = fs::metadata(root)
        .map_err(|e| RunError::io(root, e))?
        .is_dir();
    if is_dir && is_unstarted_run(root)? {
        return Ok(());
    }
    Err(RunError::AlreadyExists {
        path: root.to_path_buf(),
    })
}

/// Whether the directory `root` holds nothing but what a run killed before its first snapshot
/// leaves: the lock file, `config.json`, a manifest listing no file, an (empty) log,
/// temporary files, and a `snapshots/` folder holding temporary files only.
fn is_unstarted_run(root: &Path) -> Result<bool, RunError> {
    let list = |dir: &Path| -> Result<Vec<String>, RunError> {
        fs::read_dir(dir)
            .map_err(|e| RunError::io(dir, e))?
            .map(|e| {
                e.map(|e| e.file_name().to_string_lossy().into_owned())
                    .map_err(|e| RunError::io(dir, e))
            })
            .collect()
    };
    for name in list(root)? {
        let path = root.join(&name);
        let ok = match name.as_str() {
            LOCK_FILE | CONFIG | TRAIN_LOG => true,
            MANIFEST => read_regular(&path, MAX_MANIFEST_BYTES)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<Manifest>(&bytes).ok())
                .is_some_and(|m| m.is_empty()),
            SNAPSHOTS => {
                fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir())
                    && list(&path)?.iter().all(|n| is_temporary(n))
            }
            other => is_temporary(other),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Remove the temporary files a killed writer left in the run's folders (only while holding
/// the lock, so they cannot be another writer's).
fn remove_temporary_files(root: &Path) -> Result<(), RunError> {
    // Not `analysis/`: its writers hold the analysis lock, not this one.
    remove_temporary_files_in(root)?;
    remove_temporary_files_in(&root.join(SNAPSHOTS))
}

/// Remove the temporary files directly in `dir` (a missing folder has none).
fn remove_temporary_files_in(dir: &Path) -> Result<(), RunError> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        if is_temporary(&entry.file_name().to_string_lossy()) {
            // Removes a planted link itself, never its target.
            remove_if_present(&entry.path())?;
        }
    }
    Ok(())
}

/// Remove the file (or link) at `path` if there is one.
fn remove_if_present(path: &Path) -> Result<(), RunError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RunError::write(path, e)),
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

/// Read and parse `root/name` (a regular file of at most `max_len` bytes):
/// [`RunError::NotARun`] if it is missing, [`RunError::Damaged`] if it is not a regular file,
/// is too long or does not parse.
fn read_json<T: DeserializeOwned>(root: &Path, name: &str, max_len: u64) -> Result<T, RunError> {
    let path = root.join(name);
    let bytes = match read_regular(&path, max_len) {
        Ok(bytes) => bytes,
        Err(ReadError::Missing) => {
            return Err(RunError::NotARun {
                root: root.to_path_buf(),
                missing: path,
            })
        }
        Err(e) => return Err(e.damaged(&path, "it is missing")),
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| RunError::damaged(&path, format!("not valid {name} ({e})")))
}
