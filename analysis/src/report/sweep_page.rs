//! The page of a folder of runs (a sweep): every loss curve overlaid, coloured and grouped by
//! options chosen in the page; when each run leaves ln 10 against d_model, one line per head
//! count; the final loss over two options; and the status of each point of a sweep. Built
//! from each run's config, `train_log.parquet` and `analysis/phases.parquet`, and the folder's
//! `sweep_status.parquet` if there is one.

use crate::metrics::median;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use digitlab::config::TrainConfig;
use polars::prelude::DataFrame;

use super::downsample::downsample;
use super::figure::{Axis, Figure, Style, Trace, Values};
use super::page::{Page, Section, StatusTable};
use super::tables::{floats, read_config, read_optional, texts};

/// Buckets per run's loss curve: 50 runs stay a few hundred kilobytes.
pub const SWEEP_LOSS_BUCKETS: usize = 300;

/// The run directories directly under `folder` (those with a config.json), sorted.
pub fn run_dirs(folder: &Path) -> Result<Vec<PathBuf>> {
    let mut runs: Vec<PathBuf> = std::fs::read_dir(folder)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", folder.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("config.json").is_file())
        .collect();
    runs.sort();
    Ok(runs)
}

/// One run of the sweep as the page needs it.
struct SweepRun {
    id: String,
    options: BTreeMap<String, String>,
    train_log: Option<DataFrame>,
    phases: Option<DataFrame>,
}

/// The options a sweep varies, as text, by the names `train` gives them.
fn options(cfg: &TrainConfig) -> BTreeMap<String, String> {
    let m = &cfg.model;
    let o = &cfg.optimizer;
    [
        ("n_digits", cfg.task.n_digits.to_string()),
        ("layout", format!("{:?}", cfg.task.layout).to_lowercase()),
        (
            "digits",
            cfg.task
                .targets
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(","),
        ),
        ("n_layers", m.n_layers.to_string()),
        ("d_model", m.d_model.to_string()),
        ("n_heads", m.n_heads.to_string()),
        ("d_mlp", m.d_mlp.to_string()),
        ("lr", o.lr.to_string()),
        ("weight_decay", o.weight_decay.to_string()),
        ("warmup", o.warmup_steps.to_string()),
        ("batch_size", cfg.batch_size.to_string()),
        ("steps", cfg.steps.to_string()),
        ("seed", cfg.seed.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Builds the sweep page of `folder`. Fails when the folder holds no run at all.
pub fn sweep_page(folder: &Path) -> Result<Page> {
    let dirs = run_dirs(folder)?;
    let status = read_status(folder);
    if dirs.is_empty() && status.is_none() {
        bail!(
            "{} holds no runs (folders with a config.json) and no sweep_status.parquet: nothing to report",
            folder.display()
        );
    }
    let mut missing = Vec::new();
    let mut runs = Vec::new();
    for dir in &dirs {
        match read_config(dir) {
            Ok((id, cfg)) => {
                let mut notes = Vec::new();
                let train_log = read_optional(
                    &dir.join("train_log.parquet"),
                    "train_log.parquet",
                    "`train` writes it",
                    &mut notes,
                );
                let phases = read_optional(
                    &dir.join("analysis").join("phases.parquet"),
                    "analysis/phases.parquet",
                    "`analyze phases` writes it",
                    &mut notes,
                );
                missing.extend(notes.into_iter().map(|n| format!("{id}: {n}")));
                let mut options = options(&cfg);
                options.insert("run".into(), id.clone());
                runs.push(SweepRun {
                    id,
                    options,
                    train_log,
                    phases,
                });
            }
            Err(e) => missing.push(format!("{}: {e:#}", dir.display())),
        }
    }
    let varying: Vec<String> = runs
        .first()
        .map(|r| {
            r.options
                .keys()
                .filter(|k| *k != "run")
                .filter(|k| runs.iter().any(|o| o.options[*k] != r.options[*k]))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    // The width-and-heads question first: colour by d_model, group by n_heads.
    let mut selectable: Vec<String> = vec!["d_model".into(), "n_heads".into()];
    for option in varying.iter().map(String::as_str).chain(["seed", "run"]) {
        if !selectable.iter().any(|s| s == option) {
            selectable.push(option.into());
        }
    }

    let mut figures = vec![loss_overlay(&runs)];
    let (leaves, leaves_note) = leaves_ln10(&runs);
    figures.push(leaves);
    missing.extend(leaves_note);
    match final_loss_heatmap(&runs, &varying) {
        Ok(fig) => figures.push(fig),
        Err(note) => missing.push(note),
    }
    figures.retain(|f| !f.traces.is_empty());
    let table = status.as_ref().map(status_table);
    if let Some(t) = &table {
        let failed = t.failed.iter().filter(|f| **f).count();
        if failed > 0 {
            missing.push(format!(
                "{failed} of {} sweep points failed or did not finish (marked red in the table); their curves are missing or end early.",
                t.rows.len()
            ));
        }
    }
    let mut facts = vec![
        ("folder".to_string(), folder.display().to_string()),
        ("runs".to_string(), runs.len().to_string()),
    ];
    if !varying.is_empty() {
        facts.push(("options that vary".into(), varying.join(", ")));
    }
    Ok(Page {
        title: format!(
            "digitlab sweep {}",
            folder
                .canonicalize()
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| folder.display().to_string())
        ),
        facts,
        findings: Vec::new(),
        missing,
        sections: vec![Section {
            heading: "Runs compared".into(),
            figures,
        }],
        table,
        selectable,
    })
}

/// Every run's per-batch training loss, one trace per run, carrying its options as `meta`.
fn loss_overlay(runs: &[SweepRun]) -> Figure {
    let mut fig = Figure::new(
        "sweep_loss",
        "How does the training loss fall in each run of the sweep?",
        Axis::linear("batch (optimizer step)"),
        Axis::log("training loss (nats, log scale)"),
    );
    for run in runs {
        let Some(log) = &run.train_log else { continue };
        let (x, y): (Vec<f64>, Vec<f64>) = floats(log, "batch")
            .into_iter()
            .zip(floats(log, "loss"))
            .filter(|(_, y)| *y > 0.0 && y.is_finite())
            .unzip();
        let (x, y) = downsample(&x, &y, SWEEP_LOSS_BUCKETS);
        let mut trace = Trace::series(run.id.clone(), Style::Line, x, y);
        trace.meta = run.options.clone();
        fig.traces.push(trace);
    }
    fig.note = Some(
        "Choose above which option colours the curves and which groups them in the legend; \
         clicking a legend entry hides its group."
            .into(),
    );
    fig
}

/// The eval-loss phase rows of a run (or the training-log ones when there are no eval rows).
fn phase_rows(phases: &DataFrame) -> Vec<usize> {
    let source = texts(phases, "source");
    let eval: Vec<usize> = (0..phases.height())
        .filter(|&i| source[i].as_deref() == Some("eval"))
        .collect();
    if eval.is_empty() {
        (0..phases.height()).collect()
    } else {
        eval
    }
}

/// "Leaves ln 10 at batch" against d_model, per head count (and digit, when runs train
/// different ones): every run as a point, the median over seeds as the line.
fn leaves_ln10(runs: &[SweepRun]) -> (Figure, Option<String>) {
    let mut fig = Figure::new(
        "leaves_ln10",
        "How long does each width and head count sit on ln 10? Batch where the loss leaves it",
        Axis::log("d_model (log scale)"),
        Axis::log("leaves ln 10 at batch (log scale)"),
    );
    // (n_heads, digit) -> points (d_model, batch)
    let mut points: BTreeMap<(u64, String), Vec<(f64, f64)>> = BTreeMap::new();
    let mut never = Vec::new();
    for run in runs {
        let Some(phases) = &run.phases else { continue };
        let digit = texts(phases, "digit");
        let leaves = floats(phases, "leaves_ln10_batch");
        let heads: u64 = run.options["n_heads"].parse().unwrap_or(0);
        let d_model: f64 = run.options["d_model"].parse().unwrap_or(f64::NAN);
        for i in phase_rows(phases) {
            let d = digit[i].clone().unwrap_or_default();
            if leaves[i].is_finite() && leaves[i] > 0.0 {
                points
                    .entry((heads, d))
                    .or_default()
                    .push((d_model, leaves[i]));
            } else {
                never.push(format!("{} (digit {d})", run.id));
            }
        }
    }
    let several_digits = points
        .keys()
        .any(|(_, d)| *d != points.keys().next().unwrap().1);
    for (k, ((heads, digit), pts)) in points.iter().enumerate() {
        let label = if several_digits {
            format!("{heads} heads, digit {digit}")
        } else {
            format!("{heads} heads")
        };
        let (x, y): (Vec<f64>, Vec<f64>) = pts.iter().copied().unzip();
        fig.traces.push(
            Trace::series(format!("{label}: each run"), Style::Markers, x, y)
                .in_group(label.clone())
                .colored(k),
        );
        let mut widths: Vec<f64> = pts.iter().map(|p| p.0).collect();
        widths.sort_by(f64::total_cmp);
        widths.dedup();
        let medians: Vec<f64> = widths
            .iter()
            .map(|w| {
                let mut at: Vec<f64> = pts.iter().filter(|p| p.0 == *w).map(|p| p.1).collect();
                median(&mut at)
            })
            .collect();
        fig.traces.push(
            Trace::series(
                format!("{label}: median over seeds"),
                Style::LinesMarkers,
                widths,
                medians,
            )
            .in_group(label)
            .colored(k),
        );
    }
    const NAMED: usize = 12;
    let note = (!never.is_empty()).then(|| {
        let more = never.len().saturating_sub(NAMED);
        format!(
            "{} run(s) not on the ln 10 figure (never seen leaving ln 10: started below it or still on it): {}{}.",
            never.len(),
            never[..never.len().min(NAMED)].join(", "),
            if more > 0 { format!(" and {more} more") } else { String::new() }
        )
    });
    (fig, note)
}

/// Final eval loss (median over the runs that share the two options, e.g. seeds) as a
/// heatmap over the two varying options with the most values; d_model x n_heads when both vary.
fn final_loss_heatmap(runs: &[SweepRun], varying: &[String]) -> Result<Figure, String> {
    let count = |o: &str| {
        let mut v: Vec<&String> = runs.iter().map(|r| &r.options[o]).collect();
        v.sort();
        v.dedup();
        v.len()
    };
    let mut axes: Vec<&String> = varying.iter().filter(|o| *o != "seed").collect();
    axes.sort_by_key(|o| {
        let preferred = o.as_str() == "d_model" || o.as_str() == "n_heads";
        (!preferred, usize::MAX - count(o.as_str()))
    });
    if axes.len() < 2 {
        return Err(
            "No final-loss heatmap: it needs two options (besides the seed) that vary across the runs."
                .into(),
        );
    }
    let (ox, oy) = (axes[0].clone(), axes[1].clone());
    let sorted = |o: &str| {
        let mut v: Vec<String> = runs.iter().map(|r| r.options[o].clone()).collect();
        v.sort_by(|a, b| match (a.parse::<f64>(), b.parse::<f64>()) {
            (Ok(x), Ok(y)) => x.total_cmp(&y),
            _ => a.cmp(b),
        });
        v.dedup();
        v
    };
    let (xs, ys) = (sorted(ox.as_str()), sorted(oy.as_str()));
    let mut cells: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); xs.len()]; ys.len()];
    for run in runs {
        let Some(phases) = &run.phases else { continue };
        let final_loss = floats(phases, "final_loss");
        let rows = phase_rows(phases);
        let values: Vec<f64> = rows
            .iter()
            .map(|&i| final_loss[i])
            .filter(|v| v.is_finite())
            .collect();
        if values.is_empty() {
            continue;
        }
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        let c = xs.iter().position(|v| *v == run.options[&ox]).unwrap_or(0);
        let r = ys.iter().position(|v| *v == run.options[&oy]).unwrap_or(0);
        cells[r][c].push(mean);
    }
    let z: Vec<Vec<Option<f64>>> = cells
        .into_iter()
        .map(|row| {
            row.into_iter()
                .map(|mut c| (!c.is_empty()).then(|| median(&mut c).max(1e-12).log10()))
                .collect()
        })
        .collect();
    let mut fig = Figure::new(
        "final_loss",
        format!(
            "Which {ox} and {oy} learn the task? Final eval loss (median over the other options)"
        ),
        Axis::linear(&ox),
        Axis::linear(&oy),
    );
    fig.traces.push(Trace::new(
        "final loss",
        Style::Heatmap {
            z,
            colorbar: "log10 final loss".into(),
        },
        Values::Categories(xs),
        Values::Categories(ys),
    ));
    fig.note = Some("Final loss: the smoothed eval loss at the end of each run (analysis/phases.parquet), averaged over its digits; empty cells have no analysed run.".into());
    Ok(fig)
}

/// `sweep_status.parquet` if the folder is a sweep.
fn read_status(folder: &Path) -> Option<DataFrame> {
    let path = folder.join("sweep_status.parquet");
    let mut notes = Vec::new();
    path.is_file()
        .then(|| {
            read_optional(
                &path,
                "sweep_status.parquet",
                "the sweep writes it",
                &mut notes,
            )
        })
        .flatten()
}

/// Every column of the status table as text; a point failed when its state says so, its exit
/// status is not 0, or it has an error message.
fn status_table(status: &DataFrame) -> StatusTable {
    let header: Vec<String> = status
        .get_column_names()
        .iter()
        .map(|n| n.to_string())
        .collect();
    let columns: Vec<Vec<Option<String>>> = header.iter().map(|h| texts(status, h)).collect();
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for i in 0..status.height() {
        let mut bad = false;
        let row: Vec<String> = header
            .iter()
            .zip(&columns)
            .map(|(h, c)| {
                let v = c[i].clone().unwrap_or_default();
                let h = h.to_lowercase();
                let lower = v.to_lowercase();
                if (h == "state" || h == "status")
                    && ["fail", "error", "kill", "crash", "timeout"]
                        .iter()
                        .any(|w| lower.contains(w))
                {
                    bad = true;
                }
                if h.starts_with("exit") && !v.is_empty() && v != "0" {
                    bad = true;
                }
                if h == "error" && !v.is_empty() {
                    bad = true;
                }
                v
            })
            .collect();
        rows.push(row);
        failed.push(bad);
    }
    StatusTable {
        header,
        rows,
        failed,
    }
}
