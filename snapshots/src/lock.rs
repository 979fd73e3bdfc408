//! The run directory's lock: one writer at a time.
//!
//! Every process that writes into a run (`train`, `train --resume`, `analyze` writing its
//! tables) holds an exclusive advisory lock (`flock`) on `digitlab.lock` in the run directory
//! for as long as it writes. The operating system releases the lock when the process ends,
//! however it ends (a `kill -9` included), so a stale lock cannot block a run. The holder
//! writes its pid into the file so a second writer can say who holds it; the file is emptied
//! again on a clean release. Readers do not lock: every file is replaced atomically, so they
//! always see complete files.

use std::fs::{File, OpenOptions};
use std::io;
#[cfg(unix)]
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::regular_file::{is_refused_link, read_regular};
use crate::RunError;

/// File name of the lock file in a run directory.
pub const LOCK_FILE: &str = "digitlab.lock";

/// The longest pid text read back from a lock file.
const MAX_PID_TEXT: u64 = 32;

/// The exclusive lock of one run directory, held until dropped.
#[derive(Debug)]
pub struct RunLock {
    file: File,
    path: PathBuf,
}

impl RunLock {
    /// Take the lock of the run directory `root` without waiting, creating `digitlab.lock` if
    /// needed (never through a symbolic link). [`RunError::Locked`], naming the holder's pid,
    /// if another process holds it; the message contains the words "is locked by".
    pub fn acquire(root: &Path) -> Result<RunLock, RunError> {
        let path = root.join(LOCK_FILE);
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        options.custom_flags(libc::O_NOFOLLOW);
        let file = options.open(&path).map_err(|e| {
            if is_refused_link(&e) {
                RunError::damaged(&path, "it is a symbolic link; remove it")
            } else {
                RunError::write(&path, e)
            }
        })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(RunError::Locked {
                    root: root.to_path_buf(),
                    holder: holder_pid(&path),
                })
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(RunError::write(&path, e)),
        }
        let lock = RunLock { file, path };
        lock.write_pid()
            .map_err(|e| RunError::write(&lock.path, e))?;
        Ok(lock)
    }

    /// Replace the lock file's content with this process's pid.
    fn write_pid(&self) -> io::Result<()> {
        self.file.set_len(0)?;
        let text = format!("{}\n", std::process::id());
        #[cfg(unix)]
        self.file.write_all_at(text.as_bytes(), 0)?;
        #[cfg(not(unix))]
        {
            use std::io::Write;
            (&self.file).write_all(text.as_bytes())?;
        }
        Ok(())
    }
}

impl Drop for RunLock {
    /// Empty the file (its pid would be stale), then closing it releases the lock.
    fn drop(&mut self) {
        // Best effort: a pid left behind is only shown if someone holds the lock again.
        let _ = self.file.set_len(0);
    }
}

/// The pid in the lock file at `path`, if it holds one.
fn holder_pid(path: &Path) -> Option<u32> {
    let bytes = read_regular(path, MAX_PID_TEXT).ok()?;
    String::from_utf8(bytes).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TestDir;

    #[test]
    fn second_lock_is_refused_naming_the_holder_and_released_on_drop() {
        let dir = TestDir::new("lock");
        let first = RunLock::acquire(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
        // flock locks belong to the open file: a second open in this process conflicts too.
        let err = RunLock::acquire(dir.path()).unwrap_err();
        assert!(
            matches!(&err, RunError::Locked { holder: Some(pid), .. } if *pid == std::process::id()),
            "{err:?}"
        );
        assert!(err.to_string().contains("is locked by process"), "{err}");
        assert_eq!(err.exit_status(), 2);
        drop(first);
        assert_eq!(std::fs::read(dir.path().join(LOCK_FILE)).unwrap(), b"");
        RunLock::acquire(dir.path()).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_planted_link_at_the_lock_file_is_not_followed() {
        let dir = TestDir::new("lock-link");
        let outside = dir.path().join("outside");
        std::fs::write(&outside, b"precious").unwrap();
        let run = dir.path().join("run");
        std::fs::create_dir(&run).unwrap();
        std::os::unix::fs::symlink(&outside, run.join(LOCK_FILE)).unwrap();
        let err = RunLock::acquire(&run).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read(&outside).unwrap(), b"precious");
    }
}
