//! The page of one run: its loss curves with plateaus and spikes, the carry kinds, the
//! naive-sum lens, the Fourier measures, each attributed spike, and the training log's norms;
//! for a modular-addition run, the progress measures of `analyze grokking` (`grokking_page`)
//! and the key frequencies instead of the digit figures.
//! Built from the run's Parquet tables only (`tables`), so anything shown here can be
//! recomputed from them by another tool.

use polars::prelude::DataFrame;

use super::downsample::downsample;
use super::figure::{Axis, Band, Figure, Level, Style, Trace, Values};
use super::grokking_page::{grokking_figures, grokking_findings};
use super::page::{Page, Section};
use super::tables::{distinct, floats, long_series, texts, RunTables};
use crate::metrics::phases::DEFAULT_ZERO_FLOOR;

/// Buckets for per-batch loss curves: up to about 5000 points per digit, enough to see every
/// spike of a 50k-batch run at full screen width.
pub const LOSS_BUCKETS: usize = 2500;
/// Buckets for the per-tensor norms: many series, so fewer points each.
pub const NORM_BUCKETS: usize = 400;
const LOSS_AXIS: &str = "loss (nats, log scale)";
const BATCH_AXIS: &str = "batch (optimizer step)";
const CARRY_KINDS: [&str; 3] = ["none", "direct", "cascade"];

/// Builds the run page. Fails only when there is nothing at all to show.
pub fn run_page(t: &RunTables) -> anyhow::Result<Page> {
    let modp = t.config.task.modp.as_ref();
    let analysed = match modp {
        Some(_) => t.grokking.is_some(),
        None => t.loss.is_some(),
    };
    if t.train_log.is_none() && !analysed {
        anyhow::bail!(
            "{} has neither a training log nor analyses: nothing to show (train it first, then `analyze report`)",
            t.root.display()
        );
    }
    let mut missing = t.missing.clone();
    if let Some(log) = &t.train_log {
        let last = floats(log, "batch").last().copied().unwrap_or(-1.0);
        if last + 1.0 < t.config.steps as f64 {
            missing.push(format!(
                "Training stopped at batch {} of {} (killed, failed or still running): the figures show what was written; `train --resume {}` continues it.",
                last as i64 + 1,
                t.config.steps,
                t.root.display()
            ));
        }
    }
    let (mut sections, findings) = match modp {
        Some(modp) => (
            grokking_sections(t, modp.p),
            grokking_findings(t.grokking.as_ref(), t.grokking_phases.as_ref()),
        ),
        None => (
            digit_sections(t, &mut missing),
            t.phases.as_ref().map(phase_sentences).unwrap_or_default(),
        ),
    };
    if let Some(log) = &t.train_log {
        sections.push(Section {
            heading: "Gradient, weight and update norms".into(),
            figures: norm_figures(log),
        });
    }
    sections.retain(|s| !s.figures.is_empty());
    Ok(Page {
        title: format!("digitlab run {}", t.id),
        facts: facts(t),
        findings,
        missing,
        sections,
        table: None,
        selectable: Vec::new(),
    })
}

/// The sections of a digit-addition run: loss, carry kinds, naive-sum lens, Fourier, spikes.
fn digit_sections(t: &RunTables, missing: &mut Vec<String>) -> Vec<Section> {
    let digits = &t.config.task.targets;
    let mut sections = vec![Section {
        heading: "Loss".into(),
        figures: vec![loss_figure(t, digits)],
    }];
    if let Some(loss) = &t.loss {
        sections.push(Section {
            heading: "Carry kinds".into(),
            figures: carry_kind_figures(loss, digits),
        });
    }
    if let Some(lens) = &t.naive_lens {
        sections.push(Section {
            heading: "Naive-sum lens".into(),
            figures: naive_lens_figures(lens, t.loss.as_ref(), digits),
        });
    }
    let mut fourier = Vec::new();
    if let Some(excluded) = &t.excluded_loss {
        fourier.extend(excluded_loss_figures(excluded, t.loss.as_ref(), digits));
    }
    if let Some(keys) = &t.key_frequencies {
        fourier.extend(key_frequency_figures(keys, digits, &|d| {
            format!("Digit {d}")
        }));
    }
    sections.push(Section {
        heading: "Fourier: excluded and restricted loss, key frequencies".into(),
        figures: fourier,
    });
    if let Some(spikes) = &t.spikes {
        let (figures, notes) = spike_figures(t, spikes);
        missing.extend(notes);
        sections.push(Section {
            heading: "Spikes".into(),
            figures,
        });
    }
    sections
}

/// The sections of a modular-addition run with `p` outputs: the progress measures of
/// `analyze grokking` with the phases shaded, and the neurons' key frequencies.
fn grokking_sections(t: &RunTables, p: usize) -> Vec<Section> {
    let (mut measures, mut fourier) = (Vec::new(), Vec::new());
    if let Some(grokking) = &t.grokking {
        measures = grokking_figures(p, grokking, t.grokking_phases.as_ref());
    }
    if let Some(keys) = &t.key_frequencies {
        fourier = key_frequency_figures(keys, &[0], &|_| format!("Addition mod {p}"));
    }
    vec![
        Section {
            heading: "Grokking: losses, Fourier sparsity and weight norm".into(),
            figures: measures,
        },
        Section {
            heading: "Fourier: key frequencies".into(),
            figures: fourier,
        },
    ]
}

/// Config values a reader needs to interpret the curves.
fn facts(t: &RunTables) -> Vec<(String, String)> {
    let c = &t.config;
    let m = &c.model;
    let o = &c.optimizer;
    vec![
        ("run".into(), t.root.display().to_string()),
        (
            "task".into(),
            match &c.task.modp {
                Some(modp) => format!(
                    "addition mod {}, {} of the pairs in the training set (full batch, {} pairs), test loss logged every {} epochs",
                    modp.p, modp.train_fraction, c.batch_size, modp.eval_every
                ),
                None => format!(
                    "{}-digit addition, {} layout, digit(s) {:?}",
                    c.task.n_digits,
                    format!("{:?}", c.task.layout).to_lowercase(),
                    c.task.targets
                ),
            },
        ),
        (
            "model".into(),
            format!(
                "{} layer, d_model {}, {} heads, d_mlp {}",
                m.n_layers, m.d_model, m.n_heads, m.d_mlp
            ),
        ),
        (
            "trained parameters".into(),
            m.n_trained_params().to_string(),
        ),
        (
            "optimizer".into(),
            format!(
                "AdamW lr {}, betas ({}, {}), weight decay {}, warm-up {} steps, gradient clipping {}",
                o.lr,
                o.beta1,
                o.beta2,
                o.weight_decay,
                o.warmup_steps,
                o.grad_clip.map_or("off".to_string(), |c| format!("at norm {c}"))
            ),
        ),
        (
            "training".into(),
            format!(
                "{} batches of {}, seed {}, snapshots every {}",
                c.steps, c.batch_size, c.seed, c.snapshot_every
            ),
        ),
        ("digitlab".into(), c.digitlab_version.clone()),
    ]
}

/// "digit 0 (eval loss): leaves ln 10 at batch 300, reaches zero at 600; final loss 3.1e-4 (zero)".
fn phase_sentences(phases: &DataFrame) -> Vec<String> {
    let digit = texts(phases, "digit");
    let source = texts(phases, "source");
    let leaves = floats(phases, "leaves_ln10_batch");
    let carry = floats(phases, "reaches_carry_entropy_batch");
    let zero = floats(phases, "reaches_zero_batch");
    let final_loss = floats(phases, "final_loss");
    let level = texts(phases, "final_level");
    let descending = texts(phases, "still_descending");
    (0..phases.height())
        .map(|i| {
            let mut parts = vec![if leaves[i].is_finite() {
                format!("leaves ln 10 at batch {}", leaves[i])
            } else {
                "is never seen leaving ln 10 (it starts below it or is still on it)".to_string()
            }];
            if carry[i].is_finite() {
                parts.push(format!("reaches the carry entropy at {}", carry[i]));
            }
            if zero[i].is_finite() {
                parts.push(format!("reaches zero at {}", zero[i]));
            }
            let source = match source[i].as_deref() {
                Some("eval") => "eval loss per snapshot",
                Some("train_log") => "training loss per batch",
                _ => "loss",
            };
            format!(
                "Digit {} ({source}) {}; final loss {:.2e} ({}){}.",
                digit[i].as_deref().unwrap_or("?"),
                parts.join(", "),
                final_loss[i],
                level[i].as_deref().unwrap_or("?"),
                if descending[i].as_deref() == Some("true") {
                    ", still descending"
                } else {
                    ""
                }
            )
        })
        .collect()
}

/// Keeps the points a log axis can draw.
pub(super) fn positive(x: Vec<f64>, y: Vec<f64>) -> (Vec<f64>, Vec<f64>) {
    x.into_iter()
        .zip(y)
        .filter(|(_, y)| *y > 0.0 && y.is_finite())
        .unzip()
}

/// Per-digit training loss (every batch, downsampled with extremes kept) and eval loss, with
/// the reference levels, the plateaus and the detected spikes.
fn loss_figure(t: &RunTables, digits: &[usize]) -> Figure {
    let mut fig = Figure::new(
        "loss",
        "When does each digit's loss leave ln 10, and where does it settle?",
        Axis::linear(BATCH_AXIS),
        Axis::log(LOSS_AXIS),
    );
    for (i, &d) in digits.iter().enumerate() {
        if let Some(log) = &t.train_log {
            let y = floats(log, &format!("loss_digit_{d}"));
            let (x, y) = positive(floats(log, "batch"), y);
            let (x, y) = downsample(&x, &y, LOSS_BUCKETS);
            fig.traces.push(
                Trace::series(
                    format!("digit {d} training loss (per batch)"),
                    Style::Line,
                    x,
                    y,
                )
                .in_group(format!("digit {d}"))
                .colored(2 * i),
            );
        }
        if let Some(loss) = &t.loss {
            let (x, y) = eval_loss(loss, d);
            fig.push_series(
                Trace::series(
                    format!("digit {d} eval loss (per snapshot)"),
                    Style::LinesMarkers,
                    x,
                    y,
                )
                .in_group(format!("digit {d}"))
                .colored(2 * i + 1),
            );
        }
    }
    fig.levels.push(Level {
        value: std::f64::consts::LN_10,
        label: "ln 10: knows nothing".into(),
    });
    if let Some(phases) = &t.phases {
        let mut entropies: Vec<f64> = floats(phases, "carry_entropy")
            .into_iter()
            .filter(|h| *h > 0.0)
            .collect();
        entropies.sort_by(f64::total_cmp);
        entropies.dedup();
        for h in entropies {
            fig.levels.push(Level {
                value: h,
                label: format!("carry entropy {h:.3}: naive sum known, carry not"),
            });
        }
    }
    fig.levels.push(Level {
        value: DEFAULT_ZERO_FLOOR,
        label: format!("zero (below {DEFAULT_ZERO_FLOOR:e})"),
    });
    if let Some(plateaus) = &t.plateaus {
        fig.bands = plateau_bands(plateaus);
    }
    if let Some(spikes) = &t.spikes {
        let peak = floats(spikes, "peak");
        let loss_peak = floats(spikes, "loss_peak");
        let (x, y) = positive(peak, loss_peak);
        fig.push_series(Trace::series("detected spikes (peak)", Style::Markers, x, y).colored(3));
    }
    fig.note = Some(
        "Shaded: plateaus found by `analyze phases` (from the training log where it exists). \
         Click a legend entry to hide a curve; drag to zoom, double-click to reset."
            .into(),
    );
    fig
}

/// Digit `d`'s loss on the whole eval set per snapshot (`loss.parquet`), positive values only
/// (the loss axes are logarithmic).
fn eval_loss(loss: &DataFrame, d: usize) -> (Vec<f64>, Vec<f64>) {
    let digit = d.to_string();
    let (x, y) = long_series(
        loss,
        &[
            ("digit", digit.as_str()),
            ("carry_kind", "all"),
            ("metric", "loss"),
        ],
    );
    positive(x, y)
}

/// The plateaus of the per-batch series where a digit has them, else of the eval loss.
fn plateau_bands(plateaus: &DataFrame) -> Vec<Band> {
    let digit = texts(plateaus, "digit");
    let source = texts(plateaus, "source");
    let start = floats(plateaus, "start_batch");
    let end = floats(plateaus, "end_batch");
    let level = texts(plateaus, "level");
    let has_log = |d: &Option<String>| {
        (0..plateaus.height()).any(|j| &digit[j] == d && source[j].as_deref() == Some("train_log"))
    };
    (0..plateaus.height())
        .filter(|&i| {
            let wanted = if has_log(&digit[i]) {
                "train_log"
            } else {
                "eval"
            };
            source[i].as_deref() == Some(wanted)
        })
        .map(|i| Band {
            from: start[i],
            to: end[i],
            label: format!(
                "digit {} {}",
                digit[i].as_deref().unwrap_or("?"),
                level[i].as_deref().unwrap_or("plateau")
            ),
        })
        .collect()
}

/// Loss and accuracy per carry kind; a kind with no examples for a digit (any carry into the
/// units digit) has no trace.
fn carry_kind_figures(loss: &DataFrame, digits: &[usize]) -> Vec<Figure> {
    let mut out = Vec::new();
    for (metric, title, axis) in [
        (
            "loss",
            "Which carries does the model get wrong? Loss by carry kind",
            Axis::log(LOSS_AXIS),
        ),
        (
            "accuracy",
            "Which carries has the model learned? Accuracy by carry kind",
            Axis::linear("accuracy (fraction correct)"),
        ),
    ] {
        let mut fig = Figure::new(
            format!("carry_kind_{metric}"),
            title,
            Axis::linear(BATCH_AXIS),
            axis,
        );
        for &d in digits {
            for (k, kind) in CARRY_KINDS.iter().enumerate() {
                let (x, y) = long_series(
                    loss,
                    &[
                        ("digit", d.to_string().as_str()),
                        ("carry_kind", kind),
                        ("metric", metric),
                    ],
                );
                let (x, y) = if metric == "loss" {
                    positive(x, y)
                } else {
                    x.into_iter().zip(y).filter(|(_, y)| y.is_finite()).unzip()
                };
                fig.push_series(
                    Trace::series(
                        format!("digit {d}, carry {kind}"),
                        Style::LinesMarkers,
                        x,
                        y,
                    )
                    .in_group(format!("digit {d}"))
                    .colored(k),
                );
            }
        }
        fig.note = Some(
            "none: no carry into the digit; direct: the digit to the right carries; cascade: \
             a carry passed on through a 9."
                .into(),
        );
        out.push(fig);
    }
    out
}

/// Per digit and carry-in: the probability by offset from the naive digit over training, and
/// the split of the loss into pair mass and pair loss.
fn naive_lens_figures(lens: &DataFrame, loss: Option<&DataFrame>, digits: &[usize]) -> Vec<Figure> {
    let mut out = Vec::new();
    let digit_col = texts(lens, "digit");
    let carry_col = texts(lens, "carry_in");
    let offset_col = floats(lens, "offset");
    let metric_col = texts(lens, "metric");
    let batch_col = floats(lens, "batch");
    let value_col = floats(lens, "value");
    for &d in digits {
        let ds = d.to_string();
        for carry in ["0", "1"] {
            let rows: Vec<usize> = (0..lens.height())
                .filter(|&i| {
                    digit_col[i].as_deref() == Some(&ds)
                        && carry_col[i].as_deref() == Some(carry)
                        && metric_col[i].as_deref() == Some("p_delta")
                })
                .collect();
            if rows.is_empty() {
                continue;
            }
            let mut batches: Vec<f64> = rows.iter().map(|&i| batch_col[i]).collect();
            batches.sort_by(f64::total_cmp);
            batches.dedup();
            let mut z = vec![vec![None; batches.len()]; 10];
            for &i in &rows {
                let o = offset_col[i];
                if (0.0..10.0).contains(&o) {
                    let col = batches.partition_point(|&b| b < batch_col[i]);
                    z[o as usize][col] = Some(value_col[i]);
                }
            }
            let mut fig = Figure::new(
                format!("naive_lens_d{d}_carry{carry}"),
                format!(
                    "Digit {d}, carry-in {carry}: where is the probability, relative to the naive sum v = (a + b) mod 10?"
                ),
                Axis::linear(BATCH_AXIS),
                Axis::linear("offset from the naive digit v"),
            );
            fig.traces.push(Trace::new(
                format!("p(v + offset), carry-in {carry}"),
                Style::Heatmap {
                    z,
                    colorbar: "probability".into(),
                },
                Values::Numbers(batches),
                Values::Numbers((0..10).map(f64::from).collect()),
            ));
            fig.note = Some(format!(
                "With carry-in {carry} the right answer is at offset {carry}: mass at offset 0 and 1 means the naive sum is known, mass at offset {carry} alone that the carry is too."
            ));
            out.push(fig);
        }
        let mut fig = Figure::new(
            format!("pair_split_d{d}"),
            format!("Digit {d}: is the loss the naive sum or the carry? loss = pair_mass_loss + pair_loss"),
            Axis::linear(BATCH_AXIS),
            Axis::log(LOSS_AXIS),
        );
        let mut series = vec![
            ("pair_mass_loss", "pair_mass_loss: mass outside v, v+1"),
            ("pair_loss", "pair_loss: choosing between v and v+1"),
        ]
        .into_iter()
        .map(|(metric, name)| {
            let (x, y) = long_series(
                lens,
                &[
                    ("digit", ds.as_str()),
                    ("carry_in", "all"),
                    ("metric", metric),
                ],
            );
            (name.to_string(), positive(x, y))
        })
        .collect::<Vec<_>>();
        if let Some(loss) = loss {
            series.push(("loss (eval)".into(), eval_loss(loss, d)));
        }
        for (k, (name, (x, y))) in series.into_iter().enumerate() {
            fig.push_series(Trace::series(name, Style::LinesMarkers, x, y).colored(k));
        }
        fig.levels.push(Level {
            value: std::f64::consts::LN_2,
            label: "ln 2: a coin flip between v and v+1".into(),
        });
        if !fig.traces.is_empty() {
            out.push(fig);
        }
    }
    out
}

/// Per digit: the eval loss beside the loss with each frequency set removed (excluded) or
/// kept alone (restricted).
fn excluded_loss_figures(
    excluded: &DataFrame,
    loss: Option<&DataFrame>,
    digits: &[usize],
) -> Vec<Figure> {
    let mut out = Vec::new();
    let sets = distinct(excluded, "frequencies");
    for &d in digits {
        let ds = d.to_string();
        let key_set = {
            let digit = texts(excluded, "digit");
            let key = texts(excluded, "key_set");
            (0..excluded.height())
                .find(|&i| digit[i].as_deref() == Some(&ds))
                .and_then(|i| key[i].clone())
        };
        let Some(key_set) = key_set else { continue };
        let mut fig = Figure::new(
            format!("excluded_loss_d{d}"),
            format!("Digit {d}: does the loss depend on the key frequencies {{{key_set}}}?"),
            Axis::linear(BATCH_AXIS),
            Axis::log(LOSS_AXIS),
        );
        if let Some(loss) = loss {
            let (x, y) = eval_loss(loss, d);
            fig.push_series(Trace::series("loss (eval)", Style::LinesMarkers, x, y).colored(7));
        }
        for (k, set) in sets.iter().enumerate() {
            for (metric, style) in [
                ("excluded_loss", Style::Line),
                ("restricted_loss", Style::DashedLine),
            ] {
                let (x, y) = long_series(
                    excluded,
                    &[
                        ("digit", ds.as_str()),
                        ("frequencies", set.as_str()),
                        ("metric", metric),
                    ],
                );
                let (x, y) = positive(x, y);
                let mut trace = Trace::series(
                    format!("{} {set}", metric.replace('_', " ")),
                    style.clone(),
                    x,
                    y,
                )
                .in_group(format!("frequencies {set}"))
                .colored(k);
                // The key set and all frequencies tell the story; single frequencies on demand.
                trace.legend_only = !(set == "key" || set == "all");
                fig.push_series(trace);
            }
        }
        fig.note = Some(
            "Excluded: loss with the frequencies removed from the logits' dependence on (a_k, b_k); \
             restricted: with only them kept. Excluded loss rising while the loss falls means the \
             model relies on those frequencies. Single frequencies are hidden: click them in the legend."
                .into(),
        );
        out.push(fig);
    }
    out
}

/// Per digit: each MLP neuron's dominant frequency and the fraction of its variance there;
/// `subject` names what digit `d`'s figure is about in its title.
fn key_frequency_figures(
    keys: &DataFrame,
    digits: &[usize],
    subject: &dyn Fn(usize) -> String,
) -> Vec<Figure> {
    let mut out = Vec::new();
    let digit = texts(keys, "digit");
    let neuron = floats(keys, "neuron");
    let freq = texts(keys, "frequency");
    let fraction = floats(keys, "fraction");
    let threshold = floats(keys, "threshold");
    let snapshot = floats(keys, "snapshot_batch");
    for &d in digits {
        let ds = d.to_string();
        let rows: Vec<usize> = (0..keys.height())
            .filter(|&i| digit[i].as_deref() == Some(&ds))
            .collect();
        let Some(&first) = rows.first() else { continue };
        let mut fig = Figure::new(
            format!("key_frequencies_d{d}"),
            format!(
                "{}: which frequency does each MLP neuron use (batch {})?",
                subject(d),
                snapshot[first]
            ),
            Axis::linear("neuron"),
            Axis::linear("fraction of the neuron's variance at its frequency"),
        );
        let mut freqs: Vec<String> = rows.iter().filter_map(|&i| freq[i].clone()).collect();
        freqs.sort();
        freqs.dedup();
        for f in freqs {
            let (x, y): (Vec<f64>, Vec<f64>) = rows
                .iter()
                .filter(|&&i| freq[i].as_deref() == Some(&f))
                .map(|&i| (neuron[i], fraction[i]))
                .unzip();
            let color = f.parse::<usize>().unwrap_or(0);
            fig.traces
                .push(Trace::series(format!("frequency {f}"), Style::Markers, x, y).colored(color));
        }
        fig.levels.push(Level {
            value: threshold[first],
            label: format!("key threshold {}", threshold[first]),
        });
        out.push(fig);
    }
    out
}

/// Per attributed spike: the loss around it, LCA shares of the rise, revert-one losses and the
/// optimizer diagnostics; sentences for spikes found but not attributed.
fn spike_figures(t: &RunTables, spikes: &DataFrame) -> (Vec<Figure>, Vec<String>) {
    let mut figures = Vec::new();
    let mut notes = Vec::new();
    if spikes.height() == 0 {
        notes.push(
            "No loss spikes were detected in the training log (spikes.parquet is empty)."
                .to_string(),
        );
        return (figures, notes);
    }
    let id = texts(spikes, "spike");
    let series = texts(spikes, "series");
    let onset = floats(spikes, "onset");
    let peak = floats(spikes, "peak");
    let end = floats(spikes, "end");
    let ratio = floats(spikes, "peak_ratio");
    let outcome = texts(spikes, "outcome");
    let attributed = texts(spikes, "attributed");
    let mut unattributed = Vec::new();
    for i in 0..spikes.height() {
        let s = id[i].clone().unwrap_or_else(|| i.to_string());
        let name = format!(
            "spike {s} in {} (batches {}..{}, peak {} at x{:.1}, {})",
            series[i].as_deref().unwrap_or("?"),
            onset[i],
            end[i],
            peak[i],
            ratio[i],
            outcome[i].as_deref().unwrap_or("?")
        );
        if attributed[i].as_deref() != Some("true") {
            unattributed.push(name);
            continue;
        }
        let mut fig = Figure::new(
            format!("spike{s}_loss"),
            format!("How high does the loss jump in {name}?"),
            Axis::linear(BATCH_AXIS),
            Axis::log(LOSS_AXIS),
        );
        let width = (end[i] - onset[i]).max(10.0);
        let (from, to) = (onset[i] - 2.0 * width, end[i] + 2.0 * width);
        if let (Some(log), Some(col)) = (&t.train_log, &series[i]) {
            let batch = floats(log, "batch");
            let loss = floats(log, col);
            let (x, y): (Vec<f64>, Vec<f64>) = batch
                .into_iter()
                .zip(loss)
                .filter(|(b, _)| (from..=to).contains(b))
                .unzip();
            let (x, y) = positive(x, y);
            fig.traces.push(Trace::series(
                format!("{col} (training batches)"),
                Style::Line,
                x,
                y,
            ));
        }
        if let Some(steps) = &t.spike_steps {
            let (x, y) = long_series(steps, &[("spike", s.as_str()), ("metric", "eval_loss")]);
            let (x, y) = positive(x, y);
            fig.push_series(
                Trace::series(
                    "eval loss (fixed eval batch, replayed)",
                    Style::LinesMarkers,
                    x,
                    y,
                )
                .colored(1),
            );
        }
        fig.bands.push(Band {
            from: onset[i],
            to: end[i],
            label: format!("spike {s}"),
        });
        figures.push(fig);
        if let Some(attr) = &t.spike_attribution {
            figures.extend(attribution_figures(attr, &s));
        }
        if let Some(steps) = &t.spike_steps {
            figures.extend(optimizer_figures(steps, &s));
        }
    }
    if !unattributed.is_empty() {
        notes.push(format!(
            "Spikes found but not attributed (raise `analyze spikes --max-attributed` to replay them): {}.",
            unattributed.join("; ")
        ));
    }
    (figures, notes)
}

/// LCA shares of the rise and revert-one losses, per parameter group, as bars.
fn attribution_figures(attr: &DataFrame, s: &str) -> Vec<Figure> {
    let spike = texts(attr, "spike");
    let group = texts(attr, "group");
    let method = texts(attr, "method");
    let phase = texts(attr, "phase");
    let value = floats(attr, "value");
    let pick = |m: &str, p: &str| -> Vec<(String, f64)> {
        (0..attr.height())
            .filter(|&i| {
                spike[i].as_deref() == Some(s)
                    && method[i].as_deref() == Some(m)
                    && phase[i].as_deref() == Some(p)
            })
            .filter_map(|i| group[i].clone().map(|g| (g, value[i])))
            .collect()
    };
    let change = pick("loss_change", "rise")
        .first()
        .map_or(f64::NAN, |(_, v)| *v);
    let mut out = Vec::new();
    let mut lca: Vec<(String, f64)> = pick("lca", "rise")
        .into_iter()
        .map(|(g, v)| (g, 100.0 * v / change))
        .collect();
    let mut revert = pick("revert_one", "peak");
    for (rows, id, title, axis, descending) in [
        (
            &mut lca,
            "lca",
            "Which parameter groups made the loss rise? LCA share of the rise",
            "share of the rise (%, loss change allocation)",
            true,
        ),
        (
            &mut revert,
            "revert",
            "Which group, set back to its pre-onset value, undoes the spike? Loss at the peak with one group reverted",
            "eval loss at the peak with the group reverted (nats)",
            false,
        ),
    ] {
        if rows.is_empty() {
            continue;
        }
        rows.sort_by(|a, b| a.1.total_cmp(&b.1));
        if descending {
            rows.reverse();
        }
        // The bars read top to bottom, largest effect first.
        rows.reverse();
        let mut fig = Figure::new(
            format!("spike{s}_{id}"),
            format!("Spike {s}: {title}"),
            Axis::linear(axis),
            Axis::linear("parameter group"),
        );
        let (names, values): (Vec<String>, Vec<f64>) = rows.iter().cloned().unzip();
        fig.traces.push(Trace::new(
            id,
            Style::HorizontalBars,
            Values::Numbers(values),
            Values::Categories(names),
        ));
        out.push(fig);
    }
    out
}

/// update/weight and the fraction of g² below 1% of AdamW's v, per tensor over the spike.
fn optimizer_figures(steps: &DataFrame, s: &str) -> Vec<Figure> {
    let mut out = Vec::new();
    let spike = texts(steps, "spike");
    let group = texts(steps, "group");
    let metric = texts(steps, "metric");
    let batch = floats(steps, "batch");
    let value = floats(steps, "value");
    for (m, title, axis) in [
        (
            "update_over_weight",
            "Do the optimizer's steps grow before the peak? Update norm over weight norm",
            Axis::log("|update| / |weight| (log scale)"),
        ),
        (
            "grad_sq_below_1pct_of_v",
            "Has AdamW's second moment outlived the gradients? Fraction of entries with g² < 1% of v",
            Axis::linear("fraction of entries"),
        ),
    ] {
        let rows: Vec<usize> = (0..steps.height())
            .filter(|&i| spike[i].as_deref() == Some(s) && metric[i].as_deref() == Some(m))
            .collect();
        let mut groups: Vec<String> = Vec::new();
        for &i in &rows {
            if let Some(g) = &group[i] {
                if !groups.contains(g) {
                    groups.push(g.clone());
                }
            }
        }
        let mut fig = Figure::new(
            format!("spike{s}_{m}"),
            format!("Spike {s}: {title}"),
            Axis::linear(BATCH_AXIS),
            axis,
        );
        for g in groups {
            let mut points: Vec<(f64, f64)> = rows
                .iter()
                .filter(|&&i| group[i].as_deref() == Some(&g))
                .map(|&i| (batch[i], value[i]))
                .filter(|(_, v)| v.is_finite() && (*v > 0.0 || m != "update_over_weight"))
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (x, y) = points.into_iter().unzip();
            fig.traces
                .push(Trace::series(g, Style::LinesMarkers, x, y));
        }
        if !fig.traces.is_empty() {
            out.push(fig);
        }
    }
    out
}

/// Per trained tensor: gradient, weight and update norms from the training log.
fn norm_figures(log: &DataFrame) -> Vec<Figure> {
    let names: Vec<String> = log
        .get_column_names()
        .iter()
        .map(|n| n.to_string())
        .collect();
    let batch = floats(log, "batch");
    let mut out = Vec::new();
    for (prefix, title) in [
        ("grad_norm", "How large are the gradients, per tensor?"),
        (
            "weight_norm",
            "How do the weights grow or decay, per tensor?",
        ),
        (
            "update_norm",
            "How large is each optimizer step, per tensor?",
        ),
    ] {
        let mut fig = Figure::new(
            format!("{prefix}s"),
            title,
            Axis::linear(BATCH_AXIS),
            Axis::log(&format!("{} (L2, log scale)", prefix.replace('_', " "))),
        );
        let columns = names.iter().filter(|n| {
            n.starts_with(&format!("{prefix}/")) || (prefix == "grad_norm" && *n == "grad_norm")
        });
        for name in columns {
            let (x, y) = positive(batch.clone(), floats(log, name));
            let (x, y) = downsample(&x, &y, NORM_BUCKETS);
            let label = if name == prefix {
                "all parameters"
            } else {
                &name[prefix.len() + 1..]
            };
            fig.traces.push(Trace::series(label, Style::Line, x, y));
        }
        if !fig.traces.is_empty() {
            out.push(fig);
        }
    }
    out
}
