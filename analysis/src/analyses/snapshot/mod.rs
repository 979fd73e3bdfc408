//! Runs the snapshot analyses of one run: builds the eval sets, finds the key frequencies,
//! replays only the snapshots whose rows are not yet on disk (same eval options), and writes
//! each table atomically with the old rows kept.

pub mod rows;

pub use self::rows::SnapshotAnalysis;

use std::collections::{BTreeSet, HashMap};

use anyhow::{bail, Context, Result};
use digitlab_snapshots::{read_parquet, write_parquet_atomic, FileEntry};
use polars::df;
use polars::prelude::{BooleanChunked, ChunkCompareEq, DataFrame, SortMultipleOptions};

use self::rows::{excluded_loss_rows, key_set_label, loss_rows, naive_lens_rows};
use crate::activations::{digit_logits, mlp_post_at_prediction};
use crate::eval_set::{check_eval_memory, EvalSet};
use crate::metrics::digit::digit_metrics;
use crate::metrics::fourier::{key_frequencies, Grid, KeyFrequencies};
use crate::replay::replay;
use crate::run::{Run, Selection};
use crate::table::MetricRows;

/// Options shared by the snapshot analyses.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    pub contexts: usize,
    pub eval_seed: u64,
    /// Digits to analyse; empty means every trained digit.
    pub digits: Vec<usize>,
    pub selection: Selection,
    pub skip_damaged: bool,
    /// Fraction of a neuron's variance that makes its frequency key (docs/metrics.md,
    /// 'Key frequencies').
    pub key_threshold: f64,
    /// Snapshot batch at which the key frequencies are found; the last if None.
    pub key_snapshot: Option<u64>,
    pub progress: bool,
}

impl EvalOptions {
    /// Checks every option against `run` before anything is built or written, and returns the
    /// digits to analyse: `--contexts` at least 1 and within the machine's memory, `--every` at
    /// least 1, `--key-threshold` in (0, 1], `--digits` among the trained ones, `--key-snapshot`
    /// among the snapshots, and at least one snapshot selected.
    pub fn validate(&self, run: &Run) -> Result<Vec<usize>> {
        let digits = digits_to_analyse(run, self)?;
        check_eval_memory(
            &run.cfg,
            digits.len(),
            self.contexts,
            rayon::current_num_threads(),
        )?;
        if !(self.key_threshold > 0.0 && self.key_threshold <= 1.0) {
            bail!(
                "--key-threshold must be a fraction above 0 and at most 1, got {}",
                self.key_threshold
            );
        }
        run.select(&self.selection)?;
        if let Some(batch) = self.key_snapshot {
            run.snapshot_at(batch).context("--key-snapshot")?;
        }
        Ok(digits)
    }
}

/// The digits to analyse, checked against what the run trained.
pub fn digits_to_analyse(run: &Run, options: &EvalOptions) -> Result<Vec<usize>> {
    let trained = &run.cfg.task.targets;
    if options.digits.is_empty() {
        return Ok(trained.clone());
    }
    if let Some(d) = options.digits.iter().find(|d| !trained.contains(d)) {
        bail!(
            "run {} did not train digit {d} (it trained {trained:?})",
            run.id
        );
    }
    Ok(options.digits.clone())
}

/// Computes `analyses` for `run` and writes them; returns one line per table for the user.
pub fn run_snapshot_analyses(
    run: &Run,
    analyses: &[SnapshotAnalysis],
    options: &EvalOptions,
) -> Result<Vec<String>> {
    let digits = options.validate(run)?;
    let entries = run.select(&options.selection)?;
    let sets: Vec<EvalSet> = digits
        .iter()
        .map(|&k| EvalSet::new(&run.cfg.task, k, options.contexts, options.eval_seed))
        .collect();

    let key = if analyses.contains(&SnapshotAnalysis::ExcludedLoss) {
        Some(find_key_frequencies(run, &sets, options)?)
    } else {
        None
    };
    // The key set of each digit, which excluded-loss rows must match to be kept.
    let key_labels: HashMap<i64, String> = key
        .as_ref()
        .map(|k| {
            sets.iter()
                .zip(&k.1)
                .map(|(set, key)| (set.digit as i64, key_set_label(key)))
                .collect()
        })
        .unwrap_or_default();

    // What is already on disk with the same options.
    let mut kept: HashMap<SnapshotAnalysis, (Option<DataFrame>, BTreeSet<u64>)> = HashMap::new();
    for &a in analyses {
        kept.insert(a, existing_rows(run, a, options, &key_labels, &digits)?);
    }
    let todo: Vec<FileEntry> = entries
        .iter()
        .filter(|e| analyses.iter().any(|a| !kept[a].1.contains(&e.batch)))
        .cloned()
        .collect();

    let n_out = run.cfg.model.d_vocab_out;
    let new_rows =
        |a: SnapshotAnalysis| MetricRows::new(&a.keys(), options.contexts, options.eval_seed);
    let replayed = replay(
        run,
        &todo,
        options.skip_damaged,
        options.progress,
        |batch, model| {
            let mut tables: Vec<MetricRows> = analyses.iter().map(|&a| new_rows(a)).collect();
            for (i, set) in sets.iter().enumerate() {
                let logits = digit_logits(&run.cfg, model, set)?;
                let metrics = digit_metrics(&logits, n_out, &set.labels);
                for (a, rows) in analyses.iter().zip(tables.iter_mut()) {
                    if kept[a].1.contains(&batch) {
                        continue;
                    }
                    match a {
                        SnapshotAnalysis::Loss => {
                            loss_rows(rows, &run.id, batch, set.digit, &metrics)
                        }
                        SnapshotAnalysis::NaiveLens => {
                            naive_lens_rows(rows, &run.id, batch, set.digit, &metrics)
                        }
                        SnapshotAnalysis::ExcludedLoss if set.is_grid => {
                            let key_set = &key.as_ref().expect("found above").1[i];
                            excluded_loss_rows(rows, &run.id, batch, set, &logits, n_out, key_set);
                        }
                        SnapshotAnalysis::ExcludedLoss => {}
                    }
                }
            }
            Ok(tables)
        },
    )?;

    let mut report = Vec::new();
    for (i, &a) in analyses.iter().enumerate() {
        let mut rows = new_rows(a);
        for (_, tables) in &replayed.results {
            rows.append(tables[i].clone());
        }
        let (old, done) = kept.remove(&a).expect("filled above");
        let computed = todo.iter().filter(|e| !done.contains(&e.batch)).count();
        let mut df = rows.into_dataframe()?;
        if let Some(old) = old {
            df = old.vstack(&df)?;
        }
        df = df.sort(
            ["batch", "digit"],
            SortMultipleOptions::default().with_maintain_order(true),
        )?;
        let path = run.dir.analysis_path(a.file_name());
        write_parquet_atomic(&path, &mut df)?;
        report.push(format!(
            "{}: {} snapshots computed, {} kept from the existing file -> {}",
            a.file_name(),
            computed - replayed.skipped.len().min(computed),
            done.len(),
            path.display()
        ));
    }
    if let Some((mut df, _)) = key {
        let path = run.dir.analysis_path("key_frequencies");
        // Keep the key frequencies of digits not analysed now.
        if let Ok(old) = read_parquet(&path) {
            let others: BooleanChunked = old
                .column("digit")?
                .i64()?
                .iter()
                .map(|d| d.is_some_and(|d| !digits.contains(&(d as usize))))
                .collect();
            if let Ok(stacked) = old.filter(&others).and_then(|o| o.vstack(&df)) {
                df = stacked;
            }
        }
        write_parquet_atomic(&path, &mut df)?;
        report.push(format!("key_frequencies -> {}", path.display()));
    }
    if !replayed.skipped.is_empty() {
        report.push(format!(
            "skipped as damaged: {}",
            replayed.skipped.join(", ")
        ));
    }
    Ok(report)
}

/// Rows of an existing table computed with the same options, and the batches they cover for
/// every requested digit. A file with other options or another schema is recomputed.
fn existing_rows(
    run: &Run,
    analysis: SnapshotAnalysis,
    options: &EvalOptions,
    key_labels: &HashMap<i64, String>,
    digits: &[usize],
) -> Result<(Option<DataFrame>, BTreeSet<u64>)> {
    let path = run.dir.analysis_path(analysis.file_name());
    if !path.exists() {
        return Ok((None, BTreeSet::new()));
    }
    let Ok(df) = read_parquet(&path) else {
        return Ok((None, BTreeSet::new()));
    };
    let same = (|| -> polars::prelude::PolarsResult<DataFrame> {
        let mut mask = df.column("contexts")?.i64()?.equal(options.contexts as i64);
        mask = &mask
            & &df
                .column("eval_seed")?
                .i64()?
                .equal(options.eval_seed as i64);
        if analysis == SnapshotAnalysis::ExcludedLoss {
            // Rows of a requested digit count only if found with the same key set.
            let same_key: BooleanChunked = df
                .column("digit")?
                .i64()?
                .iter()
                .zip(df.column("key_set")?.str()?.iter())
                .map(|(d, k)| match (d.and_then(|d| key_labels.get(&d)), k) {
                    (Some(label), Some(k)) => label == k,
                    (None, _) => true,
                    _ => false,
                })
                .collect();
            mask = &mask & &same_key;
        }
        df.filter(&mask)
    })();
    let Ok(same) = same else {
        return Ok((None, BTreeSet::new()));
    };
    let batches = same.column("batch")?.i64()?;
    let row_digits = same.column("digit")?.i64()?;
    let mut per_digit: HashMap<i64, BTreeSet<u64>> = HashMap::new();
    for (b, d) in batches.iter().zip(row_digits.iter()) {
        if let (Some(b), Some(d)) = (b, d) {
            per_digit.entry(d).or_default().insert(b as u64);
        }
    }
    // A batch counts as done only if every requested digit has it (the final carry digit has
    // no excluded-loss rows, so it does not count there).
    let counted: Vec<i64> = digits
        .iter()
        .filter(|&&k| analysis != SnapshotAnalysis::ExcludedLoss || k < run.cfg.task.n_digits)
        .map(|&k| k as i64)
        .collect();
    let done = match counted.split_first() {
        None => BTreeSet::new(),
        Some((first, rest)) => {
            let mut done = per_digit.get(first).cloned().unwrap_or_default();
            for d in rest {
                let theirs = per_digit.get(d).cloned().unwrap_or_default();
                done = done.intersection(&theirs).copied().collect();
            }
            done
        }
    };
    // Keep the rows of done batches, and every row of a digit not requested now (nothing
    // recomputes those); drop the rest so a half-covered batch is not duplicated.
    let requested: BTreeSet<i64> = digits.iter().map(|&k| k as i64).collect();
    let keep = same
        .column("batch")?
        .i64()?
        .iter()
        .zip(same.column("digit")?.i64()?.iter())
        .map(|(b, d)| match (b, d) {
            (Some(b), Some(d)) => done.contains(&(b as u64)) || !requested.contains(&d),
            _ => false,
        })
        .collect();
    let same = same.filter(&keep)?;
    Ok((Some(same), done))
}

/// Finds the key frequencies of every grid digit at the chosen snapshot; returns the
/// `key_frequencies` table and the key set per eval set (empty for the final carry digit).
fn find_key_frequencies(
    run: &Run,
    sets: &[EvalSet],
    options: &EvalOptions,
) -> Result<(DataFrame, Vec<Vec<usize>>)> {
    let all = &run.dir.manifest().snapshots;
    // The snapshot asked for, by default the last; with --skip-damaged and no --key-snapshot,
    // the newest one that reads.
    let candidates: Vec<&FileEntry> = match options.key_snapshot {
        None if options.skip_damaged => all.iter().rev().collect(),
        None => all.last().into_iter().collect(),
        Some(b) => vec![run.snapshot_at(b).context("--key-snapshot")?],
    };
    let mut damaged = None;
    let mut found = None;
    for entry in candidates {
        match run.load_model(entry) {
            Ok(model) => {
                found = Some((entry, model));
                break;
            }
            Err(crate::run::ReplayError::Damaged(m)) => damaged = Some(m),
            Err(crate::run::ReplayError::Other(e)) => return Err(e),
        }
    }
    let Some((entry, model)) = found else {
        let message = damaged.unwrap_or_default();
        if options.skip_damaged {
            bail!("{message} (no undamaged snapshot to find the key frequencies at)");
        }
        bail!("{message} (pass --skip-damaged to analyse the other snapshots)");
    };
    // One row per (digit, neuron).
    let (mut digit, mut neurons) = (Vec::new(), Vec::new());
    let mut key_sets = Vec::new();
    for set in sets {
        if !set.is_grid {
            key_sets.push(Vec::new());
            continue;
        }
        let acts = mlp_post_at_prediction(&run.cfg, &model, set)?;
        let found: KeyFrequencies = key_frequencies(
            Grid::DIGITS,
            &acts,
            run.cfg.model.d_mlp,
            set.n_contexts,
            options.key_threshold,
        );
        digit.extend(found.neurons.iter().map(|_| set.digit as i64));
        neurons.extend(found.neurons);
        key_sets.push(found.key);
    }
    let n = neurons.len();
    let df = df!(
        "run" => vec![run.id.as_str(); n],
        "digit" => digit,
        "snapshot_batch" => vec![entry.batch as i64; n],
        "neuron" => neurons.iter().map(|x| x.neuron as i64).collect::<Vec<_>>(),
        "frequency" => neurons.iter().map(|x| x.frequency as i64).collect::<Vec<_>>(),
        "fraction" => neurons.iter().map(|x| x.fraction).collect::<Vec<_>>(),
        "above_threshold" => neurons.iter().map(|x| x.fraction >= options.key_threshold).collect::<Vec<_>>(),
        "threshold" => vec![options.key_threshold; n],
    )?;
    Ok((df, key_sets))
}
