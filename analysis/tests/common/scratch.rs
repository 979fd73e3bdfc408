//! Scratch folders for the tests: one per test under the target's temporary folder, removed
//! when the test passes (kept for a look when it fails), and those of ended test processes
//! removed at the next start; `copy_dir` for private copies of shared runs.
#![allow(dead_code)] // each includer uses part of it

use std::path::{Path, PathBuf};
use std::sync::Once;

/// Matrix products on one thread in this process (the tests already run in parallel); removes
/// the scratch folders of earlier test processes that have ended.
pub fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        digitlab::threads::set_threads(1);
        let base = scratch_base();
        if let Ok(entries) = std::fs::read_dir(&base) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let pid = name.strip_prefix('p').and_then(|p| p.parse::<u32>().ok());
                if let Some(pid) = pid {
                    if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                        let _ = std::fs::remove_dir_all(entry.path());
                    }
                }
            }
        }
    });
}

pub fn scratch_base() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("analysis-tests")
}

/// A fresh folder for this process and `name`; removed when the test passes.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir = scratch_base()
            .join(format!("p{}", std::process::id()))
            .join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
