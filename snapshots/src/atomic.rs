//! Atomic file replacement. Every file of a run is written through here, so a reader (or a
//! crash) never sees half a file: either the old content or the new one.
//!
//! The temporary file is created exclusively (`O_CREAT | O_EXCL`, which also refuses to
//! follow a symbolic link planted at its name) under a name no other writer uses, in the
//! folder of the target, so the rename that publishes it stays within one file system.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::RunError;

/// Suffix of every temporary file; [`is_temporary`] recognises leftovers of a killed writer.
const TMP_SUFFIX: &str = ".tmp";

/// Numbers the temporary files of this process.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// How many names are tried before giving up: a name is taken only if something (a file or a
/// link, planted or left by a crash) already sits there.
const ATTEMPTS: u64 = 64;

/// Write `bytes` to `path` atomically.
///
/// The bytes go to `.<file name>.<pid>-<n>.tmp` in the same folder, created exclusively, which
/// is flushed to disk and then renamed over `path`; finally the folder itself is flushed so
/// the rename survives a crash. The temporary file is removed if anything fails before the
/// rename. Failures are [`RunError::Write`].
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RunError> {
    let folder = replace_file(path, bytes)?;
    sync_folder(&folder)
}

/// The temporary file, its flush and the rename of [`write_atomic`]; returns the folder, for
/// the caller to flush with [`sync_folder`] (once for many files: see
/// [`crate::RunDir::write_files`]).
pub(crate) fn replace_file(path: &Path, bytes: &[u8]) -> Result<PathBuf, RunError> {
    let Some(name) = path.file_name() else {
        return Err(RunError::write(
            path,
            io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"),
        ));
    };
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (tmp, mut file) = create_temporary(&folder, &name.to_string_lossy())?;
    if let Err(source) = file.write_all(bytes).and_then(|()| file.sync_all()) {
        // Best effort: the write already failed, and that is the error worth reporting.
        let _ = fs::remove_file(&tmp);
        return Err(RunError::write(&tmp, source));
    }
    drop(file);
    if let Err(source) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(RunError::write(path, source));
    }
    Ok(folder)
}

/// Whether `name` is one of the temporary names [`write_atomic`] uses.
pub(crate) fn is_temporary(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(TMP_SUFFIX)
}

/// Create a new, empty temporary file for `name` in `folder`: a name unique to this process
/// and call (pid and a counter), created exclusively; the next name if one is taken.
fn create_temporary(folder: &Path, name: &str) -> Result<(PathBuf, File), RunError> {
    let pid = std::process::id();
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = folder.join(format!(".{name}.{pid}-{n}{TMP_SUFFIX}"));
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(tmp),
            Err(e) => return Err(RunError::write(&tmp, e)),
        }
    }
    let tmp = last.unwrap_or_else(|| folder.join(name));
    Err(RunError::write(
        &tmp,
        io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{ATTEMPTS} temporary names in a row are taken; remove the .*.tmp files"),
        ),
    ))
}

/// Flush a folder's entries (the renames) to disk; failures are [`RunError::Write`].
pub(crate) fn sync_folder(folder: &Path) -> Result<(), RunError> {
    sync_folder_entries(folder).map_err(|source| RunError::write(folder, source))
}

/// Only Unix can open a folder for this.
#[cfg(unix)]
fn sync_folder_entries(folder: &Path) -> io::Result<()> {
    File::open(folder)?.sync_all()
}

/// Only Unix can open a folder for this.
#[cfg(not(unix))]
fn sync_folder_entries(_folder: &Path) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TestDir;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn writes_replaces_and_leaves_no_temp_file() {
        let dir = TestDir::new("atomic");
        let path = dir.path().join("a.json");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second, longer").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second, longer");
        assert_eq!(names(dir.path()), vec!["a.json".to_string()]);
    }

    #[test]
    fn missing_folder_is_a_write_error_naming_the_folder() {
        let dir = TestDir::new("atomic-missing");
        let path = dir.path().join("no-such-folder").join("a.json");
        let err = write_atomic(&path, b"x").unwrap_err();
        match &err {
            RunError::Write { path: p, .. } => {
                assert!(p.starts_with(dir.path().join("no-such-folder")))
            }
            other => panic!("expected Write, got {other:?}"),
        }
        assert_eq!(err.exit_status(), 1);
    }

    /// Links planted at the old fixed temporary name and at every name this process would try
    /// next are neither followed nor renamed into place; their target stays untouched.
    #[cfg(unix)]
    #[test]
    fn planted_symlinks_at_temporary_names_are_not_followed() {
        let dir = TestDir::new("atomic-planted");
        let outside = dir.path().join("outside.txt");
        fs::write(&outside, b"precious").unwrap();
        let run = dir.path().join("run");
        fs::create_dir(&run).unwrap();
        let pid = std::process::id();
        std::os::unix::fs::symlink(&outside, run.join(".a.json.tmp")).unwrap();
        // The next names this process will try (other tests only move the counter forward).
        let next = COUNTER.load(Ordering::Relaxed);
        for n in next..next + ATTEMPTS / 2 {
            std::os::unix::fs::symlink(&outside, run.join(format!(".a.json.{pid}-{n}.tmp")))
                .unwrap();
        }
        let path = run.join("a.json");
        write_atomic(&path, b"new").unwrap();
        assert_eq!(fs::read(&outside).unwrap(), b"precious");
        assert!(
            fs::symlink_metadata(&path).unwrap().is_file(),
            "a link was renamed into place"
        );
        assert_eq!(fs::read(&path).unwrap(), b"new");
        // The planted links are still links (not replaced by our data either).
        assert!(fs::symlink_metadata(run.join(".a.json.tmp"))
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn temporary_names_are_recognised() {
        assert!(is_temporary(".manifest.json.123-4.tmp"));
        assert!(is_temporary(".train_log.parquet.tmp"));
        assert!(!is_temporary("manifest.json"));
        assert!(!is_temporary("digitlab.lock"));
    }
}
