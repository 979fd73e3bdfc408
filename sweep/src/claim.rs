//! A point's claim: an exclusive advisory lock (flock) on `.sweep/claims/<point>.lock`, held
//! by the process that trains and analyses the point, so two `sweep run`s (or SLURM tasks) on
//! one folder never run a point twice. The operating system drops the lock when its holder
//! dies, so a killed sweep leaves no stale claim. The file sits outside the run directory, so
//! it cannot clash with a lock `train` takes on the run directory itself.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

/// Attempts before a claim counts as held elsewhere: a `sweep status` probing the lock holds
/// it for microseconds, and must not make a runner skip a free point.
const ATTEMPTS: u32 = 5;

/// A held claim; dropping it releases the lock.
#[derive(Debug)]
pub struct Claim {
    file: File,
}

impl Claim {
    /// Take the claim at `path`, or `None` if another process holds it.
    pub fn try_take(path: &Path) -> Result<Option<Claim>> {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .read(true)
            .open(path)
            .with_context(|| format!("cannot open the claim {}", path.display()))?;
        for attempt in 0..ATTEMPTS {
            match file.try_lock() {
                Ok(()) => {
                    // Who holds it, for messages; the lock, not this text, is the claim.
                    file.set_len(0)?;
                    write!(file, "pid {} on {}", std::process::id(), hostname())?;
                    return Ok(Some(Claim { file }));
                }
                Err(TryLockError::WouldBlock) if attempt + 1 < ATTEMPTS => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(TryLockError::WouldBlock) => return Ok(None),
                Err(TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("cannot lock {}", path.display()))
                }
            }
        }
        Ok(None)
    }

    /// Who holds the claim at `path` (`pid 123 on node7`), or `None` if nobody does.
    pub fn holder(path: &Path) -> Option<String> {
        let file = File::open(path).ok()?;
        match file.try_lock_shared() {
            Ok(()) => None,
            Err(_) => Some(std::fs::read_to_string(path).unwrap_or_default()),
        }
    }

    /// The descriptor a child process keeps open (see `child.rs`), so that the claim outlives
    /// this process for as long as its child runs.
    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// This machine's name (SLURM tasks run on other nodes).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "this machine".to_string())
}
