//! Reading a run's files without trusting what sits at their paths: only regular files are
//! read, and never more bytes than the caller can justify.
//!
//! A snapshot path could hold a symbolic link to `/dev/zero`, a FIFO, a directory or a huge
//! sparse file. The file is opened without following a final symbolic link and without
//! blocking (a FIFO opens at once instead of waiting for a writer), and the *opened* file is
//! checked with `fstat`, so there is no window between the check and the read in which the
//! path could be swapped. Its size is compared with the caller's bound before a byte is read.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
#[cfg(unix)]
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::RunError;

/// Why a file could not be read; the caller decides which [`RunError`] that is.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// Nothing at the path.
    Missing,
    /// Something other than a regular file, or larger than allowed: the description says what.
    Refused(String),
    /// The operating system refused the open or the read.
    Io(io::Error),
}

impl ReadError {
    /// As a [`RunError`] about `path`: missing and refused files are [`RunError::Damaged`]
    /// with `missing` as the reason of the former.
    pub(crate) fn damaged(self, path: &Path, missing: &str) -> RunError {
        match self {
            ReadError::Missing => RunError::damaged(path, missing),
            ReadError::Refused(reason) => RunError::damaged(path, reason),
            ReadError::Io(e) => RunError::io(path, e),
        }
    }
}

/// Open `path` for reading if it is a regular file (not a symbolic link, FIFO, device or
/// directory); returns the file and its length.
pub(crate) fn open_regular(path: &Path) -> Result<(File, u64), ReadError> {
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    let file = match options.open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ReadError::Missing),
        Err(e) if is_refused_link(&e) => {
            return Err(ReadError::Refused(
                "it is a symbolic link; the files of a run must be regular files".into(),
            ))
        }
        Err(e) => return Err(ReadError::Io(e)),
    };
    let meta = file.metadata().map_err(ReadError::Io)?;
    if !meta.is_file() {
        let kind = if meta.is_dir() {
            "a directory"
        } else {
            "a device, FIFO or socket"
        };
        return Err(ReadError::Refused(format!(
            "it is {kind}, not a regular file"
        )));
    }
    Ok((file, meta.len()))
}

/// Whether an open with `O_NOFOLLOW` failed because the path is a symbolic link (ELOOP).
pub(crate) fn is_refused_link(e: &io::Error) -> bool {
    #[cfg(unix)]
    return e.raw_os_error() == Some(libc::ELOOP);
    #[cfg(not(unix))]
    return false;
}

/// The whole content of the regular file at `path`, refused without reading if it is longer
/// than `max_len` bytes.
pub(crate) fn read_regular(path: &Path, max_len: u64) -> Result<Vec<u8>, ReadError> {
    let (file, len) = open_regular(path)?;
    if len > max_len {
        return Err(ReadError::Refused(format!(
            "it is {len} bytes, more than the {max_len} it can be"
        )));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // `take` guards against a file that grows between the fstat and the read.
    file.take(max_len)
        .read_to_end(&mut bytes)
        .map_err(ReadError::Io)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TestDir;

    #[test]
    fn reads_regular_files_and_refuses_everything_else() {
        let dir = TestDir::new("regular");
        let file = dir.path().join("a");
        std::fs::write(&file, b"hello").unwrap();
        assert_eq!(read_regular(&file, 5).unwrap(), b"hello");
        assert!(
            matches!(read_regular(&file, 4), Err(ReadError::Refused(r)) if r.contains("5 bytes"))
        );
        assert!(matches!(
            read_regular(&dir.path().join("none"), 10),
            Err(ReadError::Missing)
        ));
        // A directory, a link to /dev/zero, a FIFO: refused at once, nothing read.
        assert!(
            matches!(read_regular(dir.path(), 10), Err(ReadError::Refused(r)) if r.contains("directory"))
        );
        #[cfg(unix)]
        {
            let link = dir.path().join("zero");
            std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
            assert!(
                matches!(read_regular(&link, 10), Err(ReadError::Refused(r)) if r.contains("symbolic link"))
            );
            let fifo = dir.path().join("fifo");
            let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
            // SAFETY: mkfifo only reads the NUL-terminated path.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
            assert!(
                matches!(read_regular(&fifo, 10), Err(ReadError::Refused(r)) if r.contains("FIFO"))
            );
        }
    }
}
