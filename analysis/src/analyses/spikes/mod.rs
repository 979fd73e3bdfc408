//! `analyze spikes`: find loss spikes in the per-batch training log, replay each from the
//! newest optimizer checkpoint before it (weights kept in memory, checked bit for bit against
//! the log, or to a tolerance when this machine's kernel is not the run's), and attribute the rise and fall to parameter groups (docs/metrics.md, 'Spikes').
//! Writes `spikes.parquet`, `spike_attribution.parquet` and `spike_steps.parquet`; returns a
//! short text report.
//!
//! This file finds the spikes and writes the tables; `attribute` replays and attributes one
//! spike, `diagnostics` adds the optimizer and model-internal rows, `rows` defines the tables.

mod attribute;
mod diagnostics;
mod rows;

use anyhow::{Context, Result};
use digitlab_snapshots::{write_parquet_atomic, TrainLog};

use crate::eval_set::check_eval_memory;
use crate::metrics::spike_detection::{detect_spikes, Spike, SpikeOptions};
use crate::run::Run;
use attribute::attribute;
use rows::{attribution_table, spikes_table, steps_table};

/// Options of the spike analysis.
pub struct SpikeAnalysisOptions {
    pub detection: SpikeOptions,
    /// Contexts of the fixed eval batch (x 100 examples) the attribution measures.
    pub contexts: usize,
    pub eval_seed: u64,
    /// Attribute at most this many spikes (the largest first); 0 = detection only.
    pub max_attributed: usize,
}

/// A detected spike and the log series it was found in.
struct Found {
    series: String,
    digit: Option<usize>,
    spike: Spike,
}

/// Runs the whole analysis on `run`.
pub fn analyze_spikes(run: &Run, options: &SpikeAnalysisOptions) -> Result<Vec<String>> {
    options.detection.validate()?;
    // One eval set of the spiking digit, measured on one thread.
    check_eval_memory(&run.cfg, 1, options.contexts, 1)?;
    let log = run.dir.read_train_log()?.with_context(|| {
        format!(
            "{} has no train_log.parquet: spikes are found in the per-batch training log, which `train` writes at every snapshot",
            run.dir.root().display()
        )
    })?;
    let found = detect_all(&log, &options.detection)?;
    let mut report = vec![format!("{} spike(s) found in {}", found.len(), run.id)];
    // Attribute the largest spikes of the per-digit series.
    let mut order: Vec<usize> = (0..found.len())
        .filter(|&i| found[i].digit.is_some())
        .collect();
    order.sort_by(|&a, &b| {
        found[b]
            .spike
            .peak_ratio
            .total_cmp(&found[a].spike.peak_ratio)
    });
    order.truncate(options.max_attributed);
    let exact = run.cfg.replays_exactly_here();
    if !exact && !order.is_empty() {
        report.push(replay_note(&run.cfg));
    }
    let (mut attribution, mut steps) = (Vec::new(), Vec::new());
    for &i in &order {
        let lines = attribute(
            run,
            &log,
            i,
            &found[i],
            options,
            &mut attribution,
            &mut steps,
        )?;
        report.extend(lines);
    }
    // Everything is computed and checked; the three tables are written under the lock.
    let _lock = run.dir.lock_analysis()?;
    write_parquet_atomic(
        &run.dir.analysis_path("spikes"),
        &mut spikes_table(&run.id, &found, &order, exact)?,
    )?;
    write_parquet_atomic(
        &run.dir.analysis_path("spike_attribution"),
        &mut attribution_table(&run.id, &attribution)?,
    )?;
    write_parquet_atomic(
        &run.dir.analysis_path("spike_steps"),
        &mut steps_table(&run.id, &steps)?,
    )?;
    report.push(format!(
        "spikes -> {}",
        run.dir.analysis_path("spikes").display()
    ));
    Ok(report)
}

/// Why a replay here cannot be bit-exact, said once per analysis.
fn replay_note(cfg: &digitlab::config::TrainConfig) -> String {
    format!(
        "the run was trained with kernel {}, this machine runs {}: the replay cannot reproduce the \
         logged losses bit for bit, so it is checked to {:e} relative instead (replay_exact is \
         false in spikes.parquet)",
        cfg.recorded_kernel(),
        cfg.training_kernel(),
        attribute::REPLAY_TOLERANCE
    )
}

fn detect_all(log: &TrainLog, options: &SpikeOptions) -> Result<Vec<Found>> {
    let batches: Vec<u64> = log.rows.iter().map(|r| r.batch).collect();
    let mut series: Vec<(String, Option<usize>, Vec<f64>)> = log
        .digits
        .iter()
        .enumerate()
        .map(|(i, &k)| {
            (
                format!("loss_digit_{k}"),
                Some(k),
                log.rows
                    .iter()
                    .map(|r| f64::from(r.digit_loss[i]))
                    .collect(),
            )
        })
        .collect();
    if log.digits.len() > 1 {
        series.push((
            "loss".into(),
            None,
            log.rows.iter().map(|r| f64::from(r.loss)).collect(),
        ));
    }
    let mut found = Vec::new();
    for (name, digit, values) in series {
        for spike in
            detect_spikes(&batches, &values, options).map_err(|e| anyhow::anyhow!("{name}: {e}"))?
        {
            found.push(Found {
                series: name.clone(),
                digit,
                spike,
            });
        }
    }
    Ok(found)
}
