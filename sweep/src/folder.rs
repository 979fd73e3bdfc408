//! The sweep folder: where a grid's runs and tables live, and which grid it belongs to.
//!
//! ```text
//! runs/units-width/sweep.toml              the grid as last run (`sweep run runs/units-width/sweep.toml` continues it)
//! runs/units-width/sweep_status.parquet    one row per point: options, state, times, exit status, error
//! runs/units-width/summary.parquet         `analyze summary` over the runs, once every point is finished
//! runs/units-width/d_model=8,n_heads=1,…/  one run directory per point
//! runs/units-width/.sweep/                 bookkeeping: grid origin, per-point status and claims, logs, SLURM scripts
//! ```
//!
//! `analyze summary` reads every folder with a `config.json` directly under the sweep folder,
//! so the runs sit there and the bookkeeping stays in the hidden `.sweep/`.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use digitlab_snapshots::write_atomic;

use crate::error::bad_input;

/// The bookkeeping folder inside a sweep folder.
const BOOKKEEPING: &str = ".sweep";
/// The copy of the grid.
pub const GRID_COPY: &str = "sweep.toml";

/// A sweep folder (which may not exist yet).
#[derive(Clone, Debug)]
pub struct SweepFolder {
    root: PathBuf,
}

impl SweepFolder {
    /// The folder of `grid`: `--out` if given; the folder holding it if the grid is a sweep
    /// folder's own `sweep.toml`; else `runs/<grid file name without .toml>`.
    pub fn for_grid(grid: &Path, out: Option<&Path>) -> SweepFolder {
        let root = match out {
            Some(out) => out.to_path_buf(),
            None => match grid.parent() {
                Some(parent)
                    if grid.file_name() == Some(GRID_COPY.as_ref())
                        && parent.join(BOOKKEEPING).is_dir() =>
                {
                    parent.to_path_buf()
                }
                _ => {
                    let stem = grid.file_stem().unwrap_or_default();
                    Path::new("runs").join(stem)
                }
            },
        };
        SweepFolder { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the sweep has started here (its bookkeeping exists).
    pub fn exists(&self) -> bool {
        self.bookkeeping().is_dir()
    }

    /// Refuses (bad input) a folder made by another grid file, or an existing folder that is
    /// not a sweep folder. A grid inside the folder (its `sweep.toml`, a SLURM copy) is the
    /// folder's own; a grid moved away from its recorded place is taken as the same grid.
    pub fn check_owner(&self, grid: &Path) -> Result<()> {
        if !self.exists() {
            let empty = fs::read_dir(&self.root).map_or(true, |mut d| d.next().is_none());
            if !empty {
                return Err(bad_input(format!(
                    "{} exists and is not a sweep folder (no {BOOKKEEPING}/ in it): choose another folder with --out",
                    self.root.display()
                )));
            }
            return Ok(());
        }
        let grid = canonical(grid)?;
        let root = canonical(&self.root)?;
        if grid.starts_with(&root) {
            return Ok(());
        }
        let recorded = fs::read_to_string(self.origin_file()).unwrap_or_default();
        let recorded = Path::new(recorded.trim());
        if recorded == grid || !recorded.is_file() {
            return Ok(());
        }
        Err(bad_input(format!(
            "{} is the sweep folder of another grid, {}; this grid is {}. Give it its own folder \
             with --out, or continue that sweep with `sweep run {}`",
            self.root.display(),
            recorded.display(),
            grid.display(),
            self.root.join(GRID_COPY).display()
        )))
    }

    /// Create the folder (after [`SweepFolder::check_owner`]) and write the grid copy and its
    /// origin. A grid from the bookkeeping folder (a SLURM task's frozen copy) leaves the copy
    /// as it is, so a queued task never rolls back a newer grid.
    pub fn prepare(&self, grid: &Path, grid_text: &str) -> Result<()> {
        for dir in ["points", "claims", "logs"] {
            let path = self.bookkeeping().join(dir);
            fs::create_dir_all(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
        }
        // Two sweeps starting at once would share the temporary files of the atomic writes.
        let _lock = self.lock()?;
        let grid = canonical(grid)?;
        if !grid.starts_with(canonical(&self.root)?) {
            write_atomic(&self.origin_file(), grid.display().to_string().as_bytes())?;
        }
        if !grid.starts_with(canonical(&self.bookkeeping())?) {
            write_atomic(&self.root.join(GRID_COPY), grid_text.as_bytes())?;
        }
        Ok(())
    }

    /// The run directory of a point.
    pub fn run_dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The status record of a point (`status.rs`).
    pub fn point_record(&self, name: &str) -> PathBuf {
        self.bookkeeping()
            .join("points")
            .join(format!("{name}.json"))
    }

    /// Folder of the status records.
    pub fn point_records(&self) -> PathBuf {
        self.bookkeeping().join("points")
    }

    /// The claim lock of a point (`claim.rs`).
    pub fn claim(&self, name: &str) -> PathBuf {
        self.bookkeeping()
            .join("claims")
            .join(format!("{name}.lock"))
    }

    /// Output of a point's `train` and `analyze`.
    pub fn log(&self, name: &str) -> PathBuf {
        self.bookkeeping().join("logs").join(format!("{name}.log"))
    }

    /// Take the folder's lock (released when the file is dropped), held by whoever writes a
    /// file shared by all processes of the sweep: the grid copy, the status table, the summary.
    pub fn lock(&self) -> Result<File> {
        let path = self.bookkeeping().join("status.lock");
        let lock =
            File::create(&path).with_context(|| format!("cannot open {}", path.display()))?;
        lock.lock()
            .with_context(|| format!("cannot lock {}", path.display()))?;
        Ok(lock)
    }

    pub fn status_table(&self) -> PathBuf {
        self.root.join("sweep_status.parquet")
    }

    /// sbatch scripts, the grids they were submitted with, and the tasks' output.
    pub fn slurm_dir(&self) -> PathBuf {
        self.bookkeeping().join("slurm")
    }

    fn bookkeeping(&self) -> PathBuf {
        self.root.join(BOOKKEEPING)
    }

    fn origin_file(&self) -> PathBuf {
        self.bookkeeping().join("grid")
    }
}

/// The absolute path without `.`, `..` or links; a path that does not exist yet is made
/// absolute from its existing parent.
pub fn canonical(path: &Path) -> Result<PathBuf> {
    if let Ok(p) = fs::canonicalize(path) {
        return Ok(p);
    }
    let absolute = std::path::absolute(path)
        .with_context(|| format!("cannot make {} absolute", path.display()))?;
    match (absolute.parent(), absolute.file_name()) {
        (Some(parent), Some(name)) if parent != absolute => Ok(canonical(parent)?.join(name)),
        _ => Ok(absolute),
    }
}
