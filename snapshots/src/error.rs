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

    /// A path given for a run cannot be used as one.
    #[error("{} cannot be used: {reason}", .path.display())]
    BadPath {
        /// The path given.
        path: PathBuf,
        /// Why, and what to do.
        reason: String,
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
        "cannot access {}: {source}; check that the path exists and that you may read it",
        .path.display()
    )]
    Io {
        /// The file or folder that was accessed.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A file of the run belongs to another configuration than `config.json` (an edited or
    /// copied config, or a file copied in from another run).
    #[error(
        "{} does not belong to this run: {reason}; restore the run's own files (config.json \
         may differ from the one the run was trained with only in `steps`), or point to the \
         run this file came from",
        .file.display()
    )]
    Mismatch {
        /// The file that disagrees with the rest of the run.
        file: PathBuf,
        /// What disagrees.
        reason: String,
    },

    /// Another process holds the run directory's lock: it is writing to the run.
    #[error(
        "{} is locked by {}: another `train` or `analyze` is writing to this run; wait until \
         it has finished (or stop it), then try again",
        .root.display(),
        .holder.map_or("another process".to_string(), |pid| format!("process {pid}"))
    )]
    Locked {
        /// The run directory.
        root: PathBuf,
        /// The pid written into the lock file by its holder, if it could be read.
        holder: Option<u32>,
    },

    /// The operating system refused a write (most often: the disk is full).
    #[error(
        "cannot write {}: {source}; free some disk space or check that the folder is \
         writable, then run the same command again (files already written are complete)",
        .path.display()
    )]
    Write {
        /// The file or folder that was written.
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
    /// The exit status a command line tool should end with for this error: 1 when the
    /// machine failed the work (a write failed, e.g. a full disk; a bug), 2 when the input
    /// was refused (a missing, damaged, foreign or locked run, a bad path). Every digitlab
    /// binary follows this convention.
    pub fn exit_status(&self) -> u8 {
        match self {
            RunError::Write { .. } | RunError::Parquet { .. } | RunError::InvalidInput { .. } => 1,
            RunError::NotARun { .. }
            | RunError::AlreadyExists { .. }
            | RunError::BadPath { .. }
            | RunError::Damaged { .. }
            | RunError::Mismatch { .. }
            | RunError::Locked { .. }
            | RunError::Io { .. }
            | RunError::Decode { .. } => 2,
        }
    }

    /// Shorthand for [`RunError::Write`].
    pub(crate) fn write(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        RunError::Write {
            path: path.into(),
            source,
        }
    }

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
