//! Bad input (a grid that does not parse, an option `train` rejects, a folder of another grid,
//! `sbatch` missing): an error the user fixes, reported with exit status 2 before anything is
//! touched. Every other error is a failure of the sweep itself (exit status 1).

use std::fmt;

/// An error in what the user gave; `main` exits with status 2 for it.
#[derive(Debug)]
pub struct BadInput(pub String);

impl fmt::Display for BadInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadInput {}

/// A [`BadInput`] as an `anyhow::Error`.
pub fn bad_input(message: impl Into<String>) -> anyhow::Error {
    BadInput(message.into()).into()
}
