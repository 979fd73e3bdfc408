//! The `phases` analysis of a run: plateaus of each digit's eval loss (from `loss.parquet`,
//! computed first where missing) and of its per-batch training loss, and when each digit leaves
//! ln 10 and reaches the later levels. Writes `phases.parquet` (one row per digit and source)
//! and `plateaus.parquet` (one row per plateau).

use anyhow::{Context, Result};
use digitlab_snapshots::{read_parquet, write_parquet_atomic, TrainLog};
use polars::df;
use polars::prelude::{ChunkCompareEq, DataFrame};

use crate::analyses::snapshot::{
    digits_to_analyse, run_snapshot_analyses, EvalOptions, SnapshotAnalysis,
};
use crate::metrics::phases::{
    carry_probability, detect_phases, reference_levels, PhaseOptions, PhaseSummary, Plateau,
    CARRY_ENTROPY_LEVEL, ZERO_LEVEL,
};
use crate::run::Run;

/// The phases of one digit's curve from one source (`eval` or `train_log`).
pub struct PhaseRecord {
    pub digit: usize,
    pub source: &'static str,
    pub carry_entropy: f64,
    pub summary: PhaseSummary,
}

impl PhaseRecord {
    fn reached(&self, level: &str) -> Option<u64> {
        self.summary
            .reaches
            .iter()
            .find(|r| r.level == level)
            .and_then(|r| r.batch)
    }
}

/// Everything `phases` checks before it writes: the options, and the training log read (so a
/// damaged or foreign `train_log.parquet` is refused before any table is written). `None`
/// for a run without a log.
pub fn phase_inputs(
    run: &Run,
    eval: &EvalOptions,
    options: &PhaseOptions,
) -> Result<Option<TrainLog>> {
    options.validate()?;
    eval.validate(run)?;
    Ok(run.dir.read_train_log()?)
}

/// Computes the phases of `run` from its `train_log` (read by [`phase_inputs`]), writes its
/// two tables and returns the records.
pub fn run_phases(
    run: &Run,
    train_log: Option<&TrainLog>,
    eval: &EvalOptions,
    options: &PhaseOptions,
) -> Result<Vec<PhaseRecord>> {
    options.validate()?;
    // The eval loss, brought up to date (only new snapshots are computed).
    run_snapshot_analyses(run, &[SnapshotAnalysis::Loss], eval)?;
    let loss = read_parquet(&run.dir.analysis_path(SnapshotAnalysis::Loss.file_name()))?;
    let mut records = Vec::new();
    for digit in digits_to_analyse(run, eval)? {
        let p_carry = if digit == 0 {
            0.0
        } else {
            carry_probability(digit)
        };
        let levels = reference_levels(p_carry, options);
        let carry_entropy = levels
            .iter()
            .find(|l| l.name == CARRY_ENTROPY_LEVEL)
            .map_or(0.0, |l| l.loss);
        let (batches, values) = eval_curve(&loss, digit, eval)?;
        let summary = detect_phases(&batches, &values, &levels, options)
            .with_context(|| format!("eval loss of digit {digit}"))?;
        records.push(PhaseRecord {
            digit,
            source: "eval",
            carry_entropy,
            summary,
        });
        if let Some(log) = train_log {
            if let Some(i) = log.digits.iter().position(|&d| d == digit) {
                let batches: Vec<u64> = log.rows.iter().map(|r| r.batch).collect();
                let values: Vec<f64> = log
                    .rows
                    .iter()
                    .map(|r| f64::from(r.digit_loss[i]))
                    .collect();
                let summary = detect_phases(&batches, &values, &levels, options)
                    .with_context(|| format!("training loss of digit {digit}"))?;
                records.push(PhaseRecord {
                    digit,
                    source: "train_log",
                    carry_entropy,
                    summary,
                });
            }
        }
    }
    write_parquet_atomic(
        &run.dir.analysis_path("phases"),
        &mut phases_table(&run.id, &records)?,
    )?;
    write_parquet_atomic(
        &run.dir.analysis_path("plateaus"),
        &mut plateaus_table(&run.id, &records)?,
    )?;
    Ok(records)
}

/// The eval loss of `digit` over all examples, by batch, for the current eval options.
fn eval_curve(loss: &DataFrame, digit: usize, eval: &EvalOptions) -> Result<(Vec<u64>, Vec<f64>)> {
    let mask = loss.column("digit")?.i64()?.equal(digit as i64)
        & loss.column("carry_kind")?.str()?.equal("all")
        & loss.column("metric")?.str()?.equal("loss")
        & loss.column("contexts")?.i64()?.equal(eval.contexts as i64)
        & loss
            .column("eval_seed")?
            .i64()?
            .equal(eval.eval_seed as i64);
    let rows = loss.filter(&mask)?;
    let batches = rows
        .column("batch")?
        .i64()?
        .iter()
        .map(|b| b.unwrap_or(0) as u64)
        .collect();
    let values = rows
        .column("value")?
        .f64()?
        .iter()
        .map(|v| v.unwrap_or(f64::NAN))
        .collect();
    Ok((batches, values))
}

/// One row per (digit, source); the columns the researcher queries.
pub fn phases_table(run: &str, records: &[PhaseRecord]) -> Result<DataFrame> {
    let batch = |b: Option<u64>| b.map(|b| b as i64);
    let column = |f: &dyn Fn(&PhaseRecord) -> Option<u64>| {
        records.iter().map(|r| batch(f(r))).collect::<Vec<_>>()
    };
    Ok(df!(
        "run" => vec![run; records.len()],
        "digit" => records.iter().map(|r| r.digit as i64).collect::<Vec<_>>(),
        "source" => records.iter().map(|r| r.source).collect::<Vec<_>>(),
        "leaves_ln10_batch" => column(&|r| r.summary.leaves_ln10_batch),
        "reaches_carry_entropy_batch" => column(&|r| r.reached(CARRY_ENTROPY_LEVEL)),
        "reaches_zero_batch" => column(&|r| r.reached(ZERO_LEVEL)),
        "carry_entropy" => records.iter().map(|r| r.carry_entropy).collect::<Vec<_>>(),
        "final_loss" => records.iter().map(|r| r.summary.final_loss).collect::<Vec<_>>(),
        "final_level" => records.iter().map(|r| r.summary.final_level.as_str()).collect::<Vec<_>>(),
        "still_descending" => records.iter().map(|r| r.summary.still_descending).collect::<Vec<_>>(),
        "n_plateaus" => records.iter().map(|r| r.summary.plateaus.len() as i64).collect::<Vec<_>>(),
    )?)
}

/// One row per plateau.
fn plateaus_table(run: &str, records: &[PhaseRecord]) -> Result<DataFrame> {
    let rows: Vec<(&PhaseRecord, &Plateau)> = records
        .iter()
        .flat_map(|r| r.summary.plateaus.iter().map(move |p| (r, p)))
        .collect();
    Ok(df!(
        "run" => vec![run; rows.len()],
        "digit" => rows.iter().map(|(r, _)| r.digit as i64).collect::<Vec<_>>(),
        "source" => rows.iter().map(|(r, _)| r.source).collect::<Vec<_>>(),
        "start_batch" => rows.iter().map(|(_, p)| p.start_batch as i64).collect::<Vec<_>>(),
        "end_batch" => rows.iter().map(|(_, p)| p.end_batch as i64).collect::<Vec<_>>(),
        "level" => rows.iter().map(|(_, p)| p.level.as_str()).collect::<Vec<_>>(),
        "median_loss" => rows.iter().map(|(_, p)| p.median_loss).collect::<Vec<_>>(),
    )?)
}
