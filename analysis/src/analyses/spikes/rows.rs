//! The three tables of the spike analysis, one named row struct each, and their DataFrames.

use anyhow::Result;
use polars::df;
use polars::prelude::DataFrame;

use super::Found;
use crate::metrics::spike_detection::Spike;

/// One row of `spike_attribution.parquet`: a parameter group's share of one phase of a spike.
pub struct AttributionRow {
    pub spike: usize,
    /// A parameter group (`blocks.0.attn.W_Q[1]`), or `all` for the whole model.
    pub group: String,
    /// `lca`, `loss_change`, `lca_completeness_error`, `revert_one` or `apply_one`.
    pub method: &'static str,
    /// `rise` or `fall` (LCA), `peak` (revert-one) or `pre` (apply-one).
    pub phase: &'static str,
    pub value: f64,
}

/// One row of `spike_steps.parquet`: a measurement at one replayed batch of a spike.
pub struct StepRow {
    pub spike: usize,
    pub batch: u64,
    pub metric: String,
    /// The tensor, parameter group or head measured; none for whole-model figures.
    pub group: Option<String>,
    pub value: f64,
}

pub fn attribution_table(run: &str, rows: &[AttributionRow]) -> Result<DataFrame> {
    Ok(df!(
        "run" => vec![run; rows.len()],
        "spike" => rows.iter().map(|r| r.spike as i64).collect::<Vec<_>>(),
        "group" => rows.iter().map(|r| r.group.as_str()).collect::<Vec<_>>(),
        "method" => rows.iter().map(|r| r.method).collect::<Vec<_>>(),
        "phase" => rows.iter().map(|r| r.phase).collect::<Vec<_>>(),
        "value" => rows.iter().map(|r| r.value).collect::<Vec<_>>(),
    )?)
}

pub fn steps_table(run: &str, rows: &[StepRow]) -> Result<DataFrame> {
    Ok(df!(
        "run" => vec![run; rows.len()],
        "spike" => rows.iter().map(|r| r.spike as i64).collect::<Vec<_>>(),
        "batch" => rows.iter().map(|r| r.batch as i64).collect::<Vec<_>>(),
        "group" => rows.iter().map(|r| r.group.as_deref()).collect::<Vec<_>>(),
        "metric" => rows.iter().map(|r| r.metric.as_str()).collect::<Vec<_>>(),
        "value" => rows.iter().map(|r| r.value).collect::<Vec<_>>(),
    )?)
}

/// One row per detected spike; `attributed` lists the ones replayed and attributed, `exact`
/// whether their replays were bit-exact (`replay_exact`, null for spikes not replayed).
pub fn spikes_table(
    run: &str,
    found: &[Found],
    attributed: &[usize],
    exact: bool,
) -> Result<DataFrame> {
    let int = |f: fn(&Spike) -> u64| found.iter().map(|x| f(&x.spike) as i64).collect::<Vec<_>>();
    let float = |f: fn(&Spike) -> f64| found.iter().map(|x| f(&x.spike)).collect::<Vec<_>>();
    Ok(df!(
        "run" => vec![run; found.len()],
        "spike" => (0..found.len() as i64).collect::<Vec<_>>(),
        "series" => found.iter().map(|f| f.series.as_str()).collect::<Vec<_>>(),
        "digit" => found.iter().map(|f| f.digit.map(|d| d as i64)).collect::<Vec<_>>(),
        "onset" => int(|s| s.onset),
        "peak" => int(|s| s.peak),
        "end" => int(|s| s.end),
        "outcome" => found.iter().map(|f| f.spike.outcome.name()).collect::<Vec<_>>(),
        "loss_before" => float(|s| s.loss_before),
        "loss_peak" => float(|s| s.loss_peak),
        "loss_after" => float(|s| s.loss_after),
        "peak_ratio" => float(|s| s.peak_ratio),
        "attributed" => (0..found.len()).map(|i| attributed.contains(&i)).collect::<Vec<_>>(),
        "replay_exact" => (0..found.len())
            .map(|i| attributed.contains(&i).then_some(exact))
            .collect::<Vec<_>>(),
    )?)
}
