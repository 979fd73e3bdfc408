//! `sweep slurm`: the grid as a SLURM job array whose task i runs point i with
//! `sweep run-one GRID --index i`, the same code path as a local run (so a sweep can be
//! started here and finished on a cluster, and the status table is the same).
//!
//! Each submission freezes the grid it was made from (`.sweep/slurm/grid-<time>.toml`), so a
//! task queued for hours runs the point it was submitted for even if the grid file changes.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::error::bad_input;
use crate::tools::Tools;

/// What the sbatch script asks of SLURM.
#[derive(Clone, Debug, Default)]
pub struct SlurmOptions {
    pub partition: Option<String>,
    /// `--time`, e.g. `2:00:00`.
    pub time: Option<String>,
    pub cpus_per_task: usize,
    /// `--mem`, e.g. `2G`.
    pub mem: Option<String>,
    /// At most this many tasks at once (`%T` of `--array`).
    pub throttle: Option<usize>,
    /// Further `#SBATCH` lines, e.g. `--qos=long` or `#SBATCH --account=lab`.
    pub extra: Vec<String>,
}

/// Everything the script names, as absolute paths.
pub struct Submission<'a> {
    pub sweep: PathBuf,
    pub tools: &'a Tools,
    pub folder: PathBuf,
    pub frozen_grid: PathBuf,
    pub indices: &'a [usize],
}

/// The sbatch script of a job array over `indices`.
pub fn script(s: &Submission, options: &SlurmOptions) -> String {
    let name = s.folder.file_name().unwrap_or_default().to_string_lossy();
    let mut lines = vec![
        "#!/bin/bash".to_string(),
        format!("#SBATCH --job-name=sweep-{name}"),
        format!(
            "#SBATCH --array={}{}",
            array_spec(s.indices),
            options.throttle.map_or(String::new(), |t| format!("%{t}"))
        ),
        format!("#SBATCH --cpus-per-task={}", options.cpus_per_task),
        format!(
            "#SBATCH --output={}/%A_%a.out",
            s.frozen_grid.parent().unwrap_or(Path::new(".")).display()
        ),
    ];
    let optional = [
        ("partition", &options.partition),
        ("time", &options.time),
        ("mem", &options.mem),
    ];
    for (flag, value) in optional {
        if let Some(v) = value {
            lines.push(format!("#SBATCH --{flag}={v}"));
        }
    }
    for extra in &options.extra {
        let extra = extra.trim();
        lines.push(if extra.starts_with("#SBATCH") {
            extra.to_string()
        } else {
            format!("#SBATCH {extra}")
        });
    }
    lines.extend([
        String::new(),
        "# Task i runs point i of the grid frozen at submission, with the train and analyze"
            .to_string(),
        "# of the build that submitted it (same build, same bytes).".to_string(),
        format!("export DIGITLAB_TRAIN={}", quote(&s.tools.train)),
        format!("export DIGITLAB_ANALYZE={}", quote(&s.tools.analyze)),
        format!(
            "exec {} run-one {} --index \"$SLURM_ARRAY_TASK_ID\" --out {}",
            quote(&s.sweep),
            quote(&s.frozen_grid),
            quote(&s.folder)
        ),
        String::new(),
    ]);
    lines.join("\n")
}

/// `sbatch` on this machine's PATH, or bad input saying where to run.
pub fn find_sbatch() -> Result<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("sbatch"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            bad_input(
                "sbatch is not on the PATH: run `sweep slurm` on a SLURM login node, or add \
                 --dry-run to print the script",
            )
        })
}

/// Submit the script; the job id.
pub fn submit(sbatch: &Path, script: &Path) -> Result<String> {
    let out = Command::new(sbatch)
        .arg("--parsable")
        .arg(script)
        .output()
        .with_context(|| format!("cannot run {}", sbatch.display()))?;
    if !out.status.success() {
        anyhow::bail!(
            "sbatch refused {}: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // `--parsable` prints `jobid` or `jobid;cluster`.
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .trim()
        .split(';')
        .next()
        .unwrap_or_default()
        .to_string())
}

/// Sorted indices as SLURM's array list: `0-3,5,7-9`.
pub fn array_spec(indices: &[usize]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < indices.len() {
        let start = indices[i];
        while i + 1 < indices.len() && indices[i + 1] == indices[i] + 1 {
            i += 1;
        }
        parts.push(if indices[i] == start {
            start.to_string()
        } else {
            format!("{start}-{}", indices[i])
        });
        i += 1;
    }
    parts.join(",")
}

/// A path as one shell word.
fn quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_spec_joins_runs_of_indices() {
        assert_eq!(array_spec(&[0, 1, 2, 3]), "0-3");
        assert_eq!(array_spec(&[0, 1, 2, 3, 5, 7, 8, 9]), "0-3,5,7-9");
        assert_eq!(array_spec(&[4]), "4");
    }
}
