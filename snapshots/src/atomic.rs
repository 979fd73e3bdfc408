//! Atomic file replacement. Every file of a run is written through here, so a reader (or a
//! crash) never sees half a file: either the old content or the new one.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::RunError;

/// Write `bytes` to `path` atomically.
///
/// The bytes go to `.<file name>.tmp` in the same folder, which is flushed to disk and then
/// renamed over `path`; finally the folder itself is flushed so the rename survives a crash.
/// The temporary file is removed if anything fails before the rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RunError> {
    let Some(name) = path.file_name() else {
        return Err(RunError::io(
            path,
            io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"),
        ));
    };
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = folder.join(format!(".{}.tmp", name.to_string_lossy()));

    if let Err(source) = write_synced(&tmp, bytes) {
        // Best effort: the write already failed, and that is the error worth reporting.
        let _ = fs::remove_file(&tmp);
        return Err(RunError::io(&tmp, source));
    }
    if let Err(source) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(RunError::io(path, source));
    }
    sync_folder(&folder).map_err(|source| RunError::io(&folder, source))
}

/// Create (or truncate) `path`, write `bytes` and flush them to disk.
fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Flush a folder's entries (the rename) to disk. Only Unix can open a folder for this.
#[cfg(unix)]
fn sync_folder(folder: &Path) -> io::Result<()> {
    File::open(folder)?.sync_all()
}

/// Flush a folder's entries (the rename) to disk. Only Unix can open a folder for this.
#[cfg(not(unix))]
fn sync_folder(_folder: &Path) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TestDir;

    #[test]
    fn writes_replaces_and_leaves_no_temp_file() {
        let dir = TestDir::new("atomic");
        let path = dir.path().join("a.json");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second, longer").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second, longer");
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["a.json".to_string()]);
    }

    #[test]
    fn missing_folder_is_an_io_error_naming_the_temp_file() {
        let dir = TestDir::new("atomic-missing");
        let path = dir.path().join("no-such-folder").join("a.json");
        let err = write_atomic(&path, b"x").unwrap_err();
        match err {
            RunError::Io { path: p, .. } => assert!(p.ends_with("no-such-folder/.a.json.tmp")),
            other => panic!("expected Io, got {other:?}"),
        }
    }
}
