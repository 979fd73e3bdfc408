//! The Parquet tables of a run, read once for the report. Every table is optional: a missing
//! or unreadable one becomes a sentence on the page saying what is missing and how to make it,
//! and the figures that need it are left out.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use digitlab::config::TrainConfig;
use digitlab_snapshots::read_parquet;
use polars::prelude::{DataFrame, DataType};

/// The tables under `analysis/` of a digit-addition run, by file stem, with the command that
/// writes each.
const DIGIT_TABLES: [(&str, &str); 9] = [
    ("loss", "analyze loss"),
    ("naive_lens", "analyze naive-lens"),
    ("excluded_loss", "analyze excluded-loss"),
    ("key_frequencies", "analyze excluded-loss"),
    ("phases", "analyze phases"),
    ("plateaus", "analyze phases"),
    ("spikes", "analyze spikes"),
    ("spike_attribution", "analyze spikes"),
    ("spike_steps", "analyze spikes"),
];

/// The tables of a modular-addition run: the digit analyses refuse such a run, so their
/// absence is not news and is not reported.
const MODP_TABLES: [(&str, &str); 3] = [
    ("grokking", "analyze grokking"),
    ("grokking_phases", "analyze grokking"),
    ("key_frequencies", "analyze grokking"),
];

/// A run as the report sees it: its config and whichever tables exist.
pub struct RunTables {
    pub id: String,
    pub root: PathBuf,
    pub config: TrainConfig,
    pub train_log: Option<DataFrame>,
    pub loss: Option<DataFrame>,
    pub naive_lens: Option<DataFrame>,
    pub excluded_loss: Option<DataFrame>,
    pub key_frequencies: Option<DataFrame>,
    pub phases: Option<DataFrame>,
    pub plateaus: Option<DataFrame>,
    pub spikes: Option<DataFrame>,
    pub spike_attribution: Option<DataFrame>,
    pub spike_steps: Option<DataFrame>,
    /// Modular addition's progress measures and phases (`analyze grokking`).
    pub grokking: Option<DataFrame>,
    pub grokking_phases: Option<DataFrame>,
    /// One sentence per missing or unreadable table.
    pub missing: Vec<String>,
}

impl RunTables {
    /// Reads `root/config.json` (required: without it `root` is not a run) and every table
    /// of the run's task.
    pub fn read(root: &Path) -> Result<RunTables> {
        let (id, config) = read_config(root)?;
        let mut missing = Vec::new();
        let train_log = read_optional(
            &root.join("train_log.parquet"),
            "train_log.parquet",
            "`train` writes it at every snapshot",
            &mut missing,
        );
        let tables: &[(&str, &str)] = if config.task.modp.is_some() {
            &MODP_TABLES
        } else {
            &DIGIT_TABLES
        };
        let mut read = |name: &str| {
            let (_, command) = tables.iter().find(|(n, _)| *n == name)?;
            read_optional(
                &root.join("analysis").join(format!("{name}.parquet")),
                &format!("analysis/{name}.parquet"),
                &format!("`{command}` writes it"),
                &mut missing,
            )
        };
        Ok(RunTables {
            loss: read("loss"),
            naive_lens: read("naive_lens"),
            excluded_loss: read("excluded_loss"),
            key_frequencies: read("key_frequencies"),
            phases: read("phases"),
            plateaus: read("plateaus"),
            spikes: read("spikes"),
            spike_attribution: read("spike_attribution"),
            spike_steps: read("spike_steps"),
            grokking: read("grokking"),
            grokking_phases: read("grokking_phases"),
            id,
            root: root.to_path_buf(),
            config,
            train_log,
            missing,
        })
    }
}

/// The run's name (its folder's) and config; an error if `root` is not a run.
pub fn read_config(root: &Path) -> Result<(String, TrainConfig)> {
    let config_path = root.join("config.json");
    let text = std::fs::read_to_string(&config_path)
        .with_context(|| format!("{} is not a run: no readable config.json", root.display()))?;
    let config: TrainConfig = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a digitlab training config",
            config_path.display()
        )
    })?;
    let id = root
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| root.display().to_string());
    Ok((id, config))
}

/// A table if it exists and reads; otherwise a sentence for the page saying why not.
pub fn read_optional(
    path: &Path,
    name: &str,
    how: &str,
    missing: &mut Vec<String>,
) -> Option<DataFrame> {
    if !path.is_file() {
        missing.push(format!("{name} does not exist ({how})."));
        return None;
    }
    match read_parquet(path) {
        Ok(df) => Some(df),
        Err(e) => {
            missing.push(format!("{name} cannot be read: {e}."));
            None
        }
    }
}

/// A column as f64 (nulls and missing columns as NaN), whatever its numeric type.
pub fn floats(df: &DataFrame, name: &str) -> Vec<f64> {
    let n = df.height();
    df.column(name)
        .ok()
        .and_then(|c| c.cast(&DataType::Float64).ok())
        .and_then(|c| {
            c.f64()
                .ok()
                .map(|a| a.iter().map(|v| v.unwrap_or(f64::NAN)).collect())
        })
        .unwrap_or_else(|| vec![f64::NAN; n])
}

/// A column as text (numbers written out, nulls and missing columns as `None`), so key
/// columns compare the same whether a writer stored `1` or `"1"`.
pub fn texts(df: &DataFrame, name: &str) -> Vec<Option<String>> {
    let n = df.height();
    df.column(name)
        .ok()
        .and_then(|c| c.cast(&DataType::String).ok())
        .and_then(|c| {
            c.str()
                .ok()
                .map(|a| a.iter().map(|v| v.map(str::to_string)).collect())
        })
        .unwrap_or_else(|| vec![None; n])
}

/// Rows of a tidy long table (`batch`, `digit`, keys, `metric`, `value`) whose columns equal
/// the given texts, as (batch, value) sorted by batch.
pub fn long_series(df: &DataFrame, equal: &[(&str, &str)]) -> (Vec<f64>, Vec<f64>) {
    let columns: Vec<Vec<Option<String>>> = equal.iter().map(|(c, _)| texts(df, c)).collect();
    let batch = floats(df, "batch");
    let value = floats(df, "value");
    let mut rows: Vec<(f64, f64)> = (0..df.height())
        .filter(|&i| {
            equal
                .iter()
                .zip(&columns)
                .all(|((_, want), col)| col[i].as_deref() == Some(*want))
        })
        .map(|i| (batch[i], value[i]))
        .collect();
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    rows.into_iter().unzip()
}

/// The distinct non-null texts of a column, in order of first appearance.
pub fn distinct(df: &DataFrame, name: &str) -> Vec<String> {
    let mut seen = Vec::new();
    for v in texts(df, name).into_iter().flatten() {
        if !seen.contains(&v) {
            seen.push(v);
        }
    }
    seen
}
