//! The one error type of the crate. Every variant names the file or the data it is about and
//! its message says what to do, because these errors end up in front of a user of the CLI.

use std::path::PathBuf;

/// Everything that can go wrong while reading or writing a run directory.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The folder is not a run directory: one of its required files is missing.
    #[error(
        "{} is not a digitlab run directory: {} is missing; \
         point to a folder created by the `train` binary",
        .root.display(),
        .missing.display()
    )]
    NotARun {
        /// The folder that was opened.
        root: PathBuf,
        /// The required file that is missing.
        missing: PathBuf,
    },

    /// A new run was to be created in a place that is already in use.
    #[error(
        "{} already exists and is not an empty directory; pass --resume to continue the run \
         in it, or choose another directory",
        .path.display()
    )]
    AlreadyExists {
        /// The path that is in use.
        path: PathBuf,
    },

    /// A file of the run exists but its content is wrong.
    #[error(
        "{} is damaged: {reason}; restore it from a copy, or delete the run directory and \
         train again",
        .file.display()
    )]
    Damaged {
        /// The damaged file.
        file: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The operating system refused a read or a write.
    #[error(
        "cannot access {}: {source}; check that the path exists, that it is writable and \
         that the disk is not full",
        .path.display()
    )]
    Io {
        /// The file or folder that was accessed.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The caller asked to write data that cannot be stored (a bug in the caller).
    #[error("cannot write {what}: {reason}; this is a bug in the caller, please report it")]
    InvalidInput {
        /// What was to be written.
        what: String,
        /// Why it cannot be written.
        reason: String,
    },

    /// Bytes or a data frame held in memory do not have the expected format.
    #[error("{what} cannot be decoded: {reason}")]
    Decode {
        /// What was being decoded.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// polars failed to encode a data frame as parquet.
    #[error("cannot encode {} as parquet: {source}", .path.display())]
    Parquet {
        /// The file that was to be written.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: polars::error::PolarsError,
    },
}

impl RunError {
    /// Shorthand for [`RunError::Io`].
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        RunError::Io {
            path: path.into(),
            source,
        }
    }

    /// Shorthand for [`RunError::Damaged`].
    pub(crate) fn damaged(file: impl Into<PathBuf>, reason: impl ToString) -> Self {
        RunError::Damaged {
            file: file.into(),
            reason: reason.to_string(),
        }
    }
}
