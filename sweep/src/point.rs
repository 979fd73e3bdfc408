//! A grid point: its options and its run directory's name.
//!
//! The name is the point's options as `key=value` joined by commas, the axes first, then the
//! fixed options, each part sorted by key: `d_model=8,n_heads=2,seed=1,steps=6000`. It is
//! readable, the same on every machine and for every order of the grid file, and it holds
//! every option the grid sets, so a point whose options change is a new point (a new folder)
//! while the old one stays.

use anyhow::Result;
use digitlab_snapshots::sha256_hex;

use crate::error::bad_input;
use crate::value::OptValue;

/// Longest name kept in full; past it the fixed options are replaced by a hash of them (a
/// folder name may have at most 255 bytes).
const MAX_NAME: usize = 200;

/// One training run of the grid (and its analyses).
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    /// Position in the expanded grid (`sweep run-one --index`).
    pub index: usize,
    /// The run directory's name in the sweep folder.
    pub name: String,
    /// The options that vary across the grid, then the fixed ones.
    pub options: Vec<(String, OptValue)>,
}

impl Point {
    /// The point from its axis values and the fixed options.
    pub fn new(
        index: usize,
        mut varying: Vec<(String, OptValue)>,
        mut fixed: Vec<(String, OptValue)>,
    ) -> Result<Point> {
        varying.sort_by(|a, b| a.0.cmp(&b.0));
        fixed.sort_by(|a, b| a.0.cmp(&b.0));
        let part = |options: &[(String, OptValue)]| -> Vec<String> {
            options
                .iter()
                .map(|(k, v)| format!("{k}={}", v.name_text()))
                .collect()
        };
        let mut name = [part(&varying), part(&fixed)].concat().join(",");
        if name.len() > MAX_NAME {
            let fixed_text = part(&fixed).join(",");
            let mut short = part(&varying);
            short.push(format!(
                "fixed={}",
                &sha256_hex(fixed_text.as_bytes())[..12]
            ));
            name = short.join(",");
        }
        if name.contains('/') || name.starts_with('.') || name.len() > MAX_NAME {
            return Err(bad_input(format!(
                "point {index} cannot be named `{name}`: option values must not contain `/` \
                 or start the name with `.`, and the varying part must stay under {MAX_NAME} characters"
            )));
        }
        varying.extend(fixed);
        Ok(Point {
            index,
            name,
            options: varying,
        })
    }

    /// `train` arguments for the options (`--d-model 8 --seed 1 …`), without the run directory.
    pub fn train_args(&self) -> Vec<String> {
        self.options
            .iter()
            .flat_map(|(k, v)| [format!("--{}", k.replace('_', "-")), v.cli_text()])
            .collect()
    }
}
