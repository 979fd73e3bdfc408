//! `analyze grokking` (what `analyze all` runs on a modular-addition run): the progress
//! measures of Nanda et al. (2023) for every snapshot, and the three phases named from them
//! (docs/metrics.md, 'Excluded and restricted loss', 'Key frequencies' and 'Phases and
//! plateaus', each under "Modular addition").
//!
//! Every snapshot's logits on the whole p×p grid (in grid order, one context of the shared
//! Fourier code with [`Grid`] side p) give the training and test loss, the excluded loss on
//! the training set and the restricted loss on all pairs at the key frequencies; its weights
//! give the Gini coefficient of the embedding's Fourier norms and the sum of squared weights.
//! The key frequencies come from the MLP neurons at one snapshot (default the last).

use anyhow::{Context, Result};
use digitlab::modp::ModpTask;
use digitlab::output_stats::output_stats;
use digitlab_snapshots::write_parquet_atomic;
use polars::df;

use crate::activations::{logits_at, mlp_post_at};
use crate::analyses::snapshot::rows::key_set_label;
use crate::analyses::snapshot::EvalOptions;
use crate::metrics::fourier::{
    embedding_fourier_norms, excluded_logits, gini, key_frequencies, restricted_logits, Grid,
    KeyFrequencies,
};
use crate::metrics::grokking::{grokking_phases, GrokkingPhases, DEFAULT_MAX_EXCURSION_BATCHES};
use crate::replay::replay;
use crate::report::grokking_page::grokking_figures;
use crate::report::png::figure_png;
use crate::run::Run;
use crate::table::{Key, KeyKind, MetricRows};

/// The metrics of `grokking.parquet`, one row each per snapshot.
pub const METRICS: [&str; 6] = [
    "train_loss",
    "test_loss",
    "excluded_loss",
    "restricted_loss",
    "embedding_gini",
    "sum_squared_weights",
];

/// The task of `run`, or an error saying which analyses it has.
pub fn modp_task(run: &Run) -> Result<&ModpTask> {
    run.cfg.task.modp.as_ref().with_context(|| {
        format!(
            "run {} trains digit addition: `analyze grokking` needs a --task modp run",
            run.id
        )
    })
}

/// Writes `grokking.parquet`, `key_frequencies.parquet` and `grokking_phases.parquet`;
/// returns one line per table, and the phase figures.
pub fn run_grokking(run: &Run, options: &EvalOptions) -> Result<(Vec<String>, GrokkingPhases)> {
    let modp = modp_task(run)?;
    options.validate(run)?;
    let entries = run.select(&options.selection)?;
    let p = modp.p;
    let grid = Grid { n: p };
    let split = modp.split(run.cfg.seed);
    let pairs: Vec<(u32, u32)> = (0..p as u32)
        .flat_map(|x| (0..p as u32).map(move |y| (x, y)))
        .collect();
    let all = modp.batch(&pairs);
    let index = |&(x, y): &(u32, u32)| x as usize * p + y as usize;
    let train: Vec<usize> = split.train.iter().map(index).collect();
    let test: Vec<usize> = split.test.iter().map(index).collect();
    let position = run.cfg.task.predicting_position(0);

    let key_entry = match options.key_snapshot {
        Some(b) => run.snapshot_at(b).context("--key-snapshot")?,
        None => entries.last().expect("select returns at least one"),
    };
    let key_model = run.load_model(key_entry).map_err(|e| match e {
        crate::run::ReplayError::Damaged(m) => anyhow::anyhow!(m),
        crate::run::ReplayError::Other(e) => e,
    })?;
    let acts = mlp_post_at(&run.cfg, &key_model, &all.tokens, position)?;
    let found: KeyFrequencies =
        key_frequencies(grid, &acts, run.cfg.model.d_mlp, 1, options.key_threshold);
    let key = found.key.clone();
    let key_label = key_set_label(&key);

    let loss_on = |logits: &[f32], rows: &[usize]| -> f64 {
        let mut picked = Vec::with_capacity(rows.len() * p);
        let mut targets = Vec::with_capacity(rows.len());
        for &g in rows {
            picked.extend_from_slice(&logits[g * p..(g + 1) * p]);
            targets.push(all.targets[g]);
        }
        f64::from(output_stats(&picked, p, &targets, 1).digit_loss[0])
    };
    let every: Vec<usize> = (0..p * p).collect();
    let replayed = replay(
        run,
        &entries,
        options.skip_damaged,
        options.progress,
        |batch, model| {
            let logits = logits_at(&run.cfg, model, &all.tokens, position)?;
            let excluded = excluded_logits(grid, &logits, p, 1, &key);
            let restricted = restricted_logits(grid, &logits, p, 1, &key);
            // The weights themselves, which the model does not hand out: read the snapshot
            // again (already checked by the replay; a few hundred kB).
            let snapshot = run.dir.read_snapshot(run.snapshot_at(batch)?)?;
            let w_e = snapshot
                .tensors
                .iter()
                .find(|t| t.name == "embed.W_E")
                .context("the snapshot has no embed.W_E")?;
            let d_model = run.cfg.model.d_model;
            let norms: Vec<f64> = embedding_fourier_norms(grid, &w_e.data, d_model)
                .into_iter()
                .map(|(_, n)| n)
                .collect();
            let squares: f64 = snapshot
                .tensors
                .iter()
                .flat_map(|t| &t.data)
                .map(|&w| f64::from(w).powi(2))
                .sum();
            Ok([
                loss_on(&logits, &train),
                loss_on(&logits, &test),
                loss_on(&excluded, &train),
                loss_on(&restricted, &every),
                gini(&norms),
                squares,
            ])
        },
    )?;

    // `contexts` 1 (the one p×p grid), `eval_seed` the run's seed (which drew the split).
    let mut rows = MetricRows::new(&[("key_set", KeyKind::Text)], 1, run.cfg.seed);
    for (batch, values) in &replayed.results {
        for (metric, &value) in METRICS.iter().zip(values) {
            let keys = [if matches!(*metric, "excluded_loss" | "restricted_loss") {
                Key::Text(key_label.clone())
            } else {
                Key::Null
            }];
            rows.push(&run.id, *batch, 0, &keys, metric, value);
        }
    }
    let mut lines = Vec::new();
    let path = run.dir.analysis_path("grokking");
    let mut grokking = rows.into_dataframe()?;
    write_parquet_atomic(&path, &mut grokking)?;
    lines.push(format!(
        "grokking -> {} ({} snapshots, key frequencies {})",
        path.display(),
        replayed.results.len(),
        if key.is_empty() {
            "none".into()
        } else {
            key_label.clone()
        }
    ));
    for s in &replayed.skipped {
        lines.push(format!("skipped damaged {s}"));
    }

    let n = found.neurons.len();
    let mut neurons = df!(
        "run" => vec![run.id.as_str(); n],
        "digit" => vec![0i64; n],
        "snapshot_batch" => vec![key_entry.batch as i64; n],
        "neuron" => found.neurons.iter().map(|x| x.neuron as i64).collect::<Vec<_>>(),
        "frequency" => found.neurons.iter().map(|x| x.frequency as i64).collect::<Vec<_>>(),
        "fraction" => found.neurons.iter().map(|x| x.fraction).collect::<Vec<_>>(),
        "above_threshold" => found.neurons.iter().map(|x| x.fraction >= options.key_threshold).collect::<Vec<_>>(),
        "threshold" => vec![options.key_threshold; n],
    )?;
    let path = run.dir.analysis_path("key_frequencies");
    write_parquet_atomic(&path, &mut neurons)?;
    lines.push(format!("key frequencies -> {}", path.display()));

    let curve = |i: usize| -> Vec<(u64, f64)> {
        replayed.results.iter().map(|(b, v)| (*b, v[i])).collect()
    };
    let phases = grokking_phases(
        p,
        &curve(0),
        &curve(1),
        &curve(3),
        &curve(2),
        DEFAULT_MAX_EXCURSION_BATCHES,
    );
    let last = replayed.results.last().map_or(0, |(b, _)| *b);
    let first = replayed.results.first().map_or(0, |(b, _)| *b);
    let named = [
        ("memorisation", Some(first), phases.memorised),
        ("circuit_formation", phases.memorised, phases.cleanup_start),
        ("cleanup", phases.cleanup_start, phases.grokked),
    ];
    let opt = |b: Option<u64>| b.map(|b| b as i64);
    let mut table = df!(
        "run" => vec![run.id.as_str(); 3],
        "phase" => named.iter().map(|n| n.0).collect::<Vec<_>>(),
        "start_batch" => named.iter().map(|n| opt(n.1)).collect::<Vec<_>>(),
        "end_batch" => named.iter().map(|n| opt(n.2)).collect::<Vec<_>>(),
        "restricted_loss_falls_batch" => vec![opt(phases.restricted_falls); 3],
        "excluded_loss_peak_batch" => vec![opt(phases.excluded_peak); 3],
        "last_batch" => vec![last as i64; 3],
        "max_excursion_batches" => vec![DEFAULT_MAX_EXCURSION_BATCHES as i64; 3],
    )?;
    let path = run.dir.analysis_path("grokking_phases");
    write_parquet_atomic(&path, &mut table)?;
    lines.push(format!("grokking phases -> {}", path.display()));

    // The report's figure of these tables, so that the PNG and the page agree.
    let figures = grokking_figures(p, &grokking, Some(&table));
    if let Some(figure) = figures.iter().find(|f| f.id == "grokking") {
        let png = run
            .dir
            .root()
            .join(crate::report::FIGURES_DIR)
            .join("grokking.png");
        std::fs::create_dir_all(png.parent().expect("has a folder"))?;
        digitlab_snapshots::write_atomic(&png, &figure_png(figure)?)?;
        lines.push(format!("figure -> {}", png.display()));
    }
    Ok((lines, phases))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::Selection;
    use digitlab::config::TrainConfig;
    use digitlab::task::TaskConfig;
    use digitlab::train::{new_run, train};

    /// The driver on a real run (p = 11, 120 epochs): every table is written, and the train
    /// and test loss of snapshot 100, replayed through candle on the whole grid, equal the
    /// training log's at epoch 100, computed by the fused step and the trainer's evaluation.
    #[test]
    fn grokking_losses_match_the_training_log() {
        let dir = std::env::temp_dir().join(format!("digitlab-grokking-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut cfg = TrainConfig::default_for(TaskConfig::modp(11, 0.5, 50), 16, 2);
        (cfg.steps, cfg.snapshot_every, cfg.checkpoint_every) = (120, 50, 100);
        let (run_dir, state, log) = new_run(&cfg, &dir).unwrap();
        train(&cfg, run_dir, state, log, false).unwrap();

        let run = Run::open(&dir).unwrap();
        let options = EvalOptions {
            contexts: 1,
            eval_seed: 0,
            digits: Vec::new(),
            selection: Selection {
                every: 1,
                from: None,
                to: None,
            },
            skip_damaged: false,
            key_threshold: 0.85,
            key_snapshot: None,
            progress: false,
        };
        let (lines, _) = run_grokking(&run, &options).unwrap();
        assert_eq!(lines.len(), 4, "{lines:?}");
        let table = digitlab_snapshots::read_parquet(&run.dir.analysis_path("grokking")).unwrap();
        assert_eq!(
            table.height(),
            4 * METRICS.len(),
            "snapshots 0, 50, 100, 120"
        );
        let value = |batch: i64, metric: &str| -> f64 {
            let batches = table.column("batch").unwrap().i64().unwrap();
            let metrics = table.column("metric").unwrap().str().unwrap();
            let values = table.column("value").unwrap().f64().unwrap();
            (0..table.height())
                .find(|&i| batches.get(i) == Some(batch) && metrics.get(i) == Some(metric))
                .and_then(|i| values.get(i))
                .unwrap()
        };
        let row = &run.dir.read_train_log().unwrap().unwrap().rows[100];
        let (train_loss, test_loss) = (f64::from(row.loss), f64::from(row.test_loss.unwrap()));
        assert!((value(100, "train_loss") - train_loss).abs() < 1e-4 * train_loss.max(1.0));
        assert!((value(100, "test_loss") - test_loss).abs() < 1e-4 * test_loss.max(1.0));
        assert!(run.dir.root().join("figures/grokking.png").is_file());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
