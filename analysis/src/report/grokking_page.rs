//! The figures and findings of a modular-addition run (`train --task modp`), from the tables
//! of `analyze grokking`: the losses of Nanda et al. (2023) per snapshot on a log axis, the
//! embedding's Fourier Gini coefficient and the sum of squared weights, each with the three
//! phases shaded, and the phases and key frequencies in words. `analyze grokking` draws its
//! `figures/grokking.png` with the same code, so the PNG and the report agree.

use polars::prelude::DataFrame;

use super::figure::{Axis, Band, Figure, Level, Style, Trace};
use super::run_page::positive;
use super::tables::{floats, long_series, texts};

/// One full-batch step is one pass over the training set.
pub const EPOCH_AXIS: &str = "epoch (full-batch step)";

/// The loss curves of `grokking.parquet`, with their legend names.
pub const LOSS_METRICS: [(&str, &str); 4] = [
    ("train_loss", "train loss"),
    ("test_loss", "test loss"),
    ("excluded_loss", "excluded loss (train set)"),
    ("restricted_loss", "restricted loss (all pairs)"),
];

/// The other curves of `grokking.parquet` (metric and figure id, question), on linear axes:
/// the Gini coefficient lies in [0, 1] and the sum of squared weights changes by a factor of
/// about three.
const WEIGHT_FIGURES: [(&str, &str); 2] = [
    (
        "embedding_gini",
        "Does the embedding become sparse in the Fourier basis? Gini coefficient of its norms",
    ),
    (
        "sum_squared_weights",
        "Does weight decay clean up? Sum of squared weights",
    ),
];

/// The figures of a run with `p` outputs: the losses (id `grokking`), then the Gini
/// coefficient and the sum of squared weights, each with the phases of `phases` (a
/// `grokking_phases` table) shaded. A figure with no drawable point is left out.
pub fn grokking_figures(p: usize, grokking: &DataFrame, phases: Option<&DataFrame>) -> Vec<Figure> {
    let bands = phases.map(phase_bands).unwrap_or_default();
    let series = |metric: &str| long_series(grokking, &[("metric", metric)]);
    let mut losses = Figure::new(
        "grokking",
        format!("Addition mod {p}: when does it memorise, form the circuit, clean up?"),
        Axis::linear(EPOCH_AXIS),
        Axis::log("loss (nats, log scale)"),
    );
    for (k, (metric, name)) in LOSS_METRICS.iter().enumerate() {
        let (x, y) = series(metric);
        let (x, y) = positive(x, y);
        losses.push_series(Trace::series(*name, Style::LinesMarkers, x, y).colored(k));
    }
    let chance = (p as f64).ln();
    losses.levels = vec![
        Level {
            value: chance,
            label: format!("ln {p}: a uniform guess"),
        },
        Level {
            value: chance / 100.0,
            label: format!("ln {p} / 100: fitted (the phase threshold)"),
        },
    ];
    losses.note = Some(
        "Shaded: memorisation, circuit formation and cleanup from `analyze grokking` \
         (docs/metrics.md, 'Phases and plateaus'). Excluded loss: the key frequencies' \
         directions removed from the logits; restricted loss: only they kept."
            .into(),
    );
    let mut out = vec![losses];
    for (k, (metric, title)) in WEIGHT_FIGURES.iter().enumerate() {
        let axis_title = metric.replace('_', " ");
        let mut fig = Figure::new(
            *metric,
            *title,
            Axis::linear(EPOCH_AXIS),
            Axis::linear(&axis_title),
        );
        let (x, y) = series(metric);
        let (x, y) = x.into_iter().zip(y).filter(|(_, y)| y.is_finite()).unzip();
        fig.push_series(
            Trace::series(axis_title.clone(), Style::LinesMarkers, x, y).colored(k + 4),
        );
        out.push(fig);
    }
    for fig in &mut out {
        fig.bands = bands.clone();
    }
    out.retain(|f| !f.traces.is_empty());
    out
}

/// The phases of a `grokking_phases` table as shaded stretches; a phase not ended runs to the
/// last snapshot, one not started is left out.
pub fn phase_bands(phases: &DataFrame) -> Vec<Band> {
    let name = texts(phases, "phase");
    let start = floats(phases, "start_batch");
    let end = floats(phases, "end_batch");
    let last = floats(phases, "last_batch");
    (0..phases.height())
        .filter(|&i| start[i].is_finite())
        .map(|i| Band {
            from: start[i],
            to: if end[i].is_finite() { end[i] } else { last[i] },
            label: name[i].as_deref().unwrap_or("phase").replace('_', " "),
        })
        .collect()
}

/// The phases, where the restricted loss falls and the excluded loss peaks, and the key
/// frequencies, in words.
pub fn grokking_findings(grokking: Option<&DataFrame>, phases: Option<&DataFrame>) -> Vec<String> {
    let mut out = Vec::new();
    let epoch = |v: f64| {
        if v.is_finite() {
            format!("epoch {v}")
        } else {
            "not reached".to_string()
        }
    };
    if let Some(phases) = phases {
        let name = texts(phases, "phase");
        let end = floats(phases, "end_batch");
        let ends: Vec<String> = (0..phases.height())
            .map(|i| {
                format!(
                    "{} ends at {}",
                    name[i].as_deref().unwrap_or("?").replace('_', " "),
                    epoch(end[i])
                )
            })
            .collect();
        if !ends.is_empty() {
            out.push(format!("Phases: {}.", ends.join("; ")));
            let restricted = floats(phases, "restricted_loss_falls_batch")[0];
            let peak = floats(phases, "excluded_loss_peak_batch")[0];
            out.push(format!(
                "The restricted loss falls below ln p / 100 at {}; the excluded loss peaks at {}.",
                epoch(restricted),
                epoch(peak)
            ));
        }
    }
    if let Some(grokking) = grokking {
        let metric = texts(grokking, "metric");
        let key = texts(grokking, "key_set");
        let set = (0..grokking.height())
            .find(|&i| metric[i].as_deref() == Some("excluded_loss"))
            .and_then(|i| key[i].clone());
        out.push(match set {
            Some(set) if !set.is_empty() => format!("Key frequencies: {}.", set.replace(',', ", ")),
            _ => "No key frequencies were found (no neuron is dominated by one frequency yet)."
                .to_string(),
        });
    }
    out
}
