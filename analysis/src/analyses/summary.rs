//! `analyze summary runs/`: one table across many runs, one row per (run, digit, source), with
//! the run's config beside its phase figures, so "batches to leave ln 10 by width and heads"
//! is one group-by. Written to `<folder>/summary.parquet`.

use std::path::Path;

use anyhow::{bail, Result};
use digitlab_snapshots::write_parquet_atomic;
use polars::prelude::{Column, DataFrame};

use crate::analyses::phases::{phase_inputs, phases_table, run_phases};
use crate::analyses::snapshot::EvalOptions;
use crate::metrics::phases::PhaseOptions;
use crate::run::Run;

/// Runs `phases` on every run directly under `folder` and writes the joined table; returns
/// its path and the runs skipped with the reason (a run that cannot be opened, such as one
/// whose config.json would be refused by `train`, is skipped, not fatal).
pub fn summarize(
    folder: &Path,
    eval: &EvalOptions,
    options: &PhaseOptions,
) -> Result<(std::path::PathBuf, Vec<String>)> {
    // An option no run can satisfy is refused once, not reported as every run skipped.
    options.validate()?;
    let mut runs: Vec<_> = std::fs::read_dir(folder)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", folder.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("config.json").is_file())
        .collect();
    runs.sort();
    if runs.is_empty() {
        bail!(
            "{} holds no run directories (folders with a config.json)",
            folder.display()
        );
    }
    let mut table: Option<DataFrame> = None;
    let mut skipped = Vec::new();
    for path in runs {
        let outcome = Run::open(&path).and_then(|run| {
            let train_log = phase_inputs(&run, eval, options)?;
            let _lock = run.dir.lock_analysis()?;
            let records = run_phases(&run, train_log.as_ref(), eval, options)?;
            let mut df = phases_table(&run.id, &records)?;
            for column in config_columns(&run, df.height()) {
                df.with_column(column)?;
            }
            Ok(df)
        });
        match outcome {
            Ok(df) => {
                table = Some(match table {
                    None => df,
                    Some(t) => t.vstack(&df)?,
                })
            }
            Err(e) => skipped.push(format!("{}: {e:#}", path.display())),
        }
    }
    let Some(mut table) = table else {
        bail!(
            "no run in {} could be analysed:\n{}",
            folder.display(),
            skipped.join("\n")
        );
    };
    let out = folder.join("summary.parquet");
    write_parquet_atomic(&out, &mut table)?;
    Ok((out, skipped))
}

/// The hyperparameters a researcher groups by, repeated on every row of the run.
fn config_columns(run: &Run, n: usize) -> Vec<Column> {
    let c = &run.cfg;
    let int = |name: &str, v: i64| Column::new(name.into(), vec![v; n]);
    let float = |name: &str, v: f64| Column::new(name.into(), vec![v; n]);
    vec![
        int("n_digits", c.task.n_digits as i64),
        Column::new("layout".into(), vec![c.task.layout.name(); n]),
        int("n_layers", c.model.n_layers as i64),
        int("d_model", c.model.d_model as i64),
        int("n_heads", c.model.n_heads as i64),
        int("d_mlp", c.model.d_mlp as i64),
        float("lr", c.optimizer.lr),
        float("weight_decay", c.optimizer.weight_decay),
        int("batch_size", c.batch_size as i64),
        int("steps", c.steps as i64),
        int("seed", c.seed as i64),
    ]
}
