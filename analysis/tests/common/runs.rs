//! The trained runs the end-to-end tests analyse: each trained once per test process with the
//! `digitlab` library, then read only (tests that write get a private copy), and the same runs
//! analysed once with `analyze all`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use digitlab::config::TrainConfig;
use digitlab::task::{Layout, TaskConfig};
use digitlab::train::{new_run, resume_run, train};

use super::cli::{analyze, succeeded};
use super::scratch::{copy_dir, scratch_base, Scratch};

pub fn config(task: TaskConfig, d_model: usize, n_heads: usize, steps: u64) -> TrainConfig {
    let mut cfg = TrainConfig::default_for(task, d_model, n_heads);
    cfg.steps = steps;
    cfg.snapshot_every = 50;
    cfg.checkpoint_every = 100;
    cfg
}

/// Trains a new run at `dir` (which must not exist) from scratch.
pub fn train_run(dir: &Path, cfg: &TrainConfig) {
    let (run, state, log) = new_run(cfg, dir).unwrap();
    train(cfg, run, state, log, false).unwrap();
}

/// Extends the run at `dir` to `steps` batches from its newest checkpoint, as
/// `train --resume DIR --steps N` does.
pub fn extend_run(dir: &Path, steps: u64) {
    let (cfg, run, state, log) = resume_run(dir, Some(steps)).unwrap();
    train(&cfg, run, state, log, false).unwrap();
}

/// A trained run shared by the tests (read only): trained once per process.
pub struct Fixture {
    pub cell: OnceLock<PathBuf>,
    pub name: &'static str,
    pub make: fn() -> TrainConfig,
}

impl Fixture {
    pub fn path(&self) -> &Path {
        self.cell.get_or_init(|| {
            let dir = scratch_base()
                .join(format!("p{}", std::process::id()))
                .join("fixtures")
                .join(self.name);
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
            train_run(&dir, &(self.make)());
            dir
        })
    }

    /// A private copy of the run at `scratch/name`.
    pub fn copy_to(&self, scratch: &Scratch, name: &str) -> PathBuf {
        let to = scratch.path().join(name);
        copy_dir(self.path(), &to);
        to
    }
}

/// The units digit at d_model 128 / 4 heads (a configuration the speed goals use): leaves ln 10 within a
/// few hundred batches and reaches a loss near zero by 600.
pub static UNITS_128: Fixture = Fixture {
    cell: OnceLock::new(),
    name: "units_128",
    make: || {
        let task = TaskConfig {
            n_digits: 5,
            layout: Layout::Prompt,
            targets: vec![0],
            modp: None,
        };
        config(task, 128, 4, 600)
    },
};

/// A small prompt-layout run on the hundreds digit of 3-digit addition, where all three carry
/// kinds occur.
pub static HUNDREDS_32: Fixture = Fixture {
    cell: OnceLock::new(),
    name: "hundreds_32",
    make: || {
        let task = TaskConfig {
            n_digits: 3,
            layout: Layout::Prompt,
            targets: vec![2],
            modp: None,
        };
        config(task, 32, 2, 300)
    },
};

/// The answer layout with every digit of 3-digit addition trained (`--digits all`).
pub static ANSWER_ALL_32: Fixture = Fixture {
    cell: OnceLock::new(),
    name: "answer_all_32",
    make: || {
        let task = TaskConfig {
            n_digits: 3,
            layout: Layout::Answer,
            targets: vec![0, 1, 2, 3],
            modp: None,
        };
        config(task, 32, 2, 300)
    },
};

/// A fixture analysed once with `analyze all --contexts 10` (read only afterwards).
pub struct Analysed {
    pub cell: OnceLock<PathBuf>,
    pub fixture: &'static Fixture,
}

impl Analysed {
    pub fn path(&self) -> &Path {
        self.cell.get_or_init(|| {
            let dir = self
                .fixture
                .path()
                .with_file_name(format!("{}-analysed", self.fixture.name));
            let _ = std::fs::remove_dir_all(&dir);
            copy_dir(self.fixture.path(), &dir);
            let out = analyze(&["all", "-q", "--contexts", "10", dir.to_str().unwrap()]);
            succeeded(&out);
            dir
        })
    }
}

pub static UNITS_128_ANALYSED: Analysed = Analysed {
    cell: OnceLock::new(),
    fixture: &UNITS_128,
};
pub static HUNDREDS_32_ANALYSED: Analysed = Analysed {
    cell: OnceLock::new(),
    fixture: &HUNDREDS_32,
};
pub static ANSWER_ALL_32_ANALYSED: Analysed = Analysed {
    cell: OnceLock::new(),
    fixture: &ANSWER_ALL_32,
};
