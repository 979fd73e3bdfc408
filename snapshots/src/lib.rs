//! digitlab-snapshots: the run directory of digitlab and its file formats (config, manifest,
//! zstd-compressed safetensors snapshots and optimizer checkpoints, parquet training log and
//! analyses).
//!
//! It is a crate of its own, without candle, so that analysis tools (and their tests) can read
//! a run without the training stack, and so the on-disk contract lives in one place. Every
//! file is written atomically (under a lock, one writer per run); every read is checked (only
//! regular files, bounded by the manifest, tied to `config.json` by the config hash) and
//! fails with an error that names the file and says what to do.

mod atomic;
mod checkpoint;
mod compress;
mod error;
mod hash;
mod lock;
mod manifest;
mod parquet;
mod regular_file;
mod run;
mod snapshot;
mod tensor;
mod train_log;

#[cfg(test)]
mod defence_tests;
#[cfg(test)]
mod run_tests;
#[cfg(test)]
mod test_support;

pub use atomic::write_atomic;
pub use checkpoint::Checkpoint;
pub use compress::{compress_snapshot, ZSTD_LEVEL};
pub use error::RunError;
pub use hash::{config_hash, run_config_hash, sha256_hex};
pub use lock::{RunLock, LOCK_FILE};
pub use manifest::{checkpoint_file, snapshot_file, FileEntry, Manifest, MANIFEST_FORMAT};
pub use parquet::{read_parquet, write_parquet_atomic};
pub use run::{NewFile, RunDir, CONFIG_HASH_KEY};
pub use snapshot::{decode_tensors, encode_tensors, Snapshot};
pub use tensor::NamedTensor;
pub use train_log::{LogRow, TensorStats, TrainLog};
