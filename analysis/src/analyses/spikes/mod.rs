//! `analyze spikes`: find loss spikes in the per-batch training log, replay each from the
//! newest optimizer checkpoint before it (weights kept in memory, checked bit for bit against
//! the log), and attribute the rise and fall to parameter groups. Writes `spikes.parquet`,
//! `spike_attribution.parquet` and `spike_steps.parquet`; returns a short text report.

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use digitlab::config::TrainConfig;
use digitlab::model::{Hooks, Transformer};
use digitlab::output_stats::output_stats;
use digitlab::train::TrainState;
use digitlab_snapshots::{write_parquet_atomic, NamedTensor, TrainLog};
use polars::prelude::{Column, DataFrame};

use crate::attribution::{allocate_step, loss_with_group_from, parameter_groups, EvalLoss};
use crate::eval_set::EvalSet;
use crate::replay::Run;
use crate::spike_detection::{detect_spikes, Spike, SpikeOptions};

/// Options of the spike analysis.
pub struct SpikeAnalysisOptions {
    pub detection: SpikeOptions,
    /// Contexts of the fixed eval batch (x 100 examples) the attribution measures.
    pub contexts: usize,
    pub eval_seed: u64,
    /// Attribute at most this many spikes (the largest first); 0 = detection only.
    pub max_attributed: usize,
}

/// Long-format rows: (spike, batch, metric, group, value).
#[derive(Default)]
struct Rows {
    spike: Vec<i64>,
    batch: Vec<Option<i64>>,
    metric: Vec<String>,
    group: Vec<Option<String>>,
    phase: Vec<Option<String>>,
    value: Vec<f64>,
}

impl Rows {
    fn push(
        &mut self,
        spike: usize,
        batch: Option<u64>,
        metric: &str,
        group: Option<&str>,
        phase: Option<&str>,
        value: f64,
    ) {
        self.spike.push(spike as i64);
        self.batch.push(batch.map(|b| b as i64));
        self.metric.push(metric.to_string());
        self.group.push(group.map(str::to_string));
        self.phase.push(phase.map(str::to_string));
        self.value.push(value);
    }

    fn into_dataframe(self, run: &str, with_batch: bool, with_phase: bool) -> Result<DataFrame> {
        let n = self.spike.len();
        let mut columns = vec![
            Column::new("run".into(), vec![run.to_string(); n]),
            Column::new("spike".into(), self.spike),
        ];
        if with_batch {
            columns.push(Column::new("batch".into(), self.batch));
        }
        columns.push(Column::new("group".into(), self.group));
        columns.push(Column::new(
            if with_phase { "method" } else { "metric" }.into(),
            self.metric,
        ));
        if with_phase {
            columns.push(Column::new("phase".into(), self.phase));
        }
        columns.push(Column::new("value".into(), self.value));
        Ok(DataFrame::new(n, columns)?)
    }
}

/// A detected spike and the log series it was found in.
struct Found {
    series: String,
    digit: Option<usize>,
    spike: Spike,
}

/// Runs the whole analysis on `run`.
pub fn analyze_spikes(run: &Run, options: &SpikeAnalysisOptions) -> Result<Vec<String>> {
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
    let (mut attribution, mut steps) = (Rows::default(), Rows::default());
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
    write_parquet_atomic(
        &run.dir.analysis_path("spikes"),
        &mut spikes_table(&run.id, &found, &order)?,
    )?;
    write_parquet_atomic(
        &run.dir.analysis_path("spike_attribution"),
        &mut attribution.into_dataframe(&run.id, false, true)?,
    )?;
    write_parquet_atomic(
        &run.dir.analysis_path("spike_steps"),
        &mut steps.into_dataframe(&run.id, true, false)?,
    )?;
    report.push(format!(
        "spikes -> {}",
        run.dir.analysis_path("spikes").display()
    ));
    Ok(report)
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

/// Replays one spike and writes its attribution rows; returns report lines.
fn attribute(
    run: &Run,
    log: &TrainLog,
    id: usize,
    found: &Found,
    options: &SpikeAnalysisOptions,
    attribution: &mut Rows,
    steps: &mut Rows,
) -> Result<Vec<String>> {
    let cfg = &run.cfg;
    let digit = found.digit.expect("only per-digit spikes are attributed");
    let spike = &found.spike;
    let pre = spike.onset.saturating_sub(1);
    let Some(entry) = run
        .dir
        .manifest()
        .checkpoints
        .iter()
        .rfind(|c| c.batch <= pre)
        .cloned()
    else {
        bail!(
            "no optimizer checkpoint at or before batch {pre}, where the spike at {} starts: retrain with a smaller --checkpoint-every (e.g. {})",
            spike.onset,
            (pre / 2).max(1)
        );
    };
    let mut state = TrainState::from_checkpoint(cfg, run.dir.read_checkpoint(&entry)?)?;

    // Replay from the checkpoint through the end of the spike, keeping the weights from `pre`.
    let mut weights: Vec<NamedTensor> = Vec::new();
    let mut path: Vec<Vec<NamedTensor>> = Vec::new();
    while state.batch <= spike.end {
        let t = state.batch;
        let v_before = (t >= pre).then(|| state.adam.v.clone());
        if t >= pre {
            path.push(state.params.clone());
        }
        let (row, grads) = state.step_with_grads(cfg)?;
        let logged = log
            .rows
            .iter()
            .find(|r| r.batch == t)
            .context("log row missing")?;
        if row.loss.to_bits() != logged.loss.to_bits() {
            bail!(
                "the replay from the checkpoint at batch {} does not reproduce the logged loss at batch {t} ({} vs {}); the run was not trained deterministically by this build",
                entry.batch,
                row.loss,
                logged.loss
            );
        }
        if let Some(v_before) = v_before {
            optimizer_rows(cfg, steps, id, t, &row, &grads, &v_before);
        }
        weights = state.params.clone();
    }
    drop(weights);

    let mut digit_cfg: TrainConfig = cfg.clone();
    digit_cfg.task.targets = vec![digit];
    let set = EvalSet::new(&cfg.task, digit, options.contexts, options.eval_seed);
    let eval = EvalLoss {
        cfg: digit_cfg.clone(),
        batch: &set.batch,
    };
    let groups = parameter_groups(cfg);
    let at = |t: u64| &path[(t - pre) as usize];

    // Loss change allocation along the replayed path.
    let mut point = eval.loss_and_grads(at(pre))?;
    let (mut rise, mut fall) = (vec![0f64; groups.len()], vec![0f64; groups.len()]);
    let mut intervals_max = 1;
    for t in pre..spike.end {
        let next = eval.loss_and_grads(at(t + 1))?;
        let a = allocate_step(&eval, &groups, at(t), at(t + 1), &point, &next)?;
        intervals_max = intervals_max.max(a.intervals);
        steps.push(id, Some(t), "eval_loss", None, None, a.loss_before);
        let target = if t < spike.peak { &mut rise } else { &mut fall };
        for (g, value) in a.per_group.iter().enumerate() {
            target[g] += value;
            steps.push(id, Some(t), "lca", Some(&groups[g].name), None, *value);
        }
        point = next;
    }
    let loss_pre = eval.loss(at(pre))?;
    let loss_peak = eval.loss(at(spike.peak))?;
    let loss_end = eval.loss(at(spike.end))?;
    let mut lines = vec![format!(
        "spike {id} in {}: onset {} peak {} end {} ({:.2e} -> {:.2e}, x{:.1}); eval loss {:.2e} -> {:.2e} -> {:.2e}",
        found.series, spike.onset, spike.peak, spike.end, spike.loss_before, spike.loss_peak, spike.peak_ratio, loss_pre, loss_peak, loss_end
    )];
    for (phase, values, change) in [
        ("rise", &rise, loss_peak - loss_pre),
        ("fall", &fall, loss_end - loss_peak),
    ] {
        let total: f64 = values.iter().sum();
        for (g, v) in values.iter().enumerate() {
            attribution.push(id, None, "lca", Some(&groups[g].name), Some(phase), *v);
        }
        attribution.push(id, None, "loss_change", Some("all"), Some(phase), change);
        attribution.push(
            id,
            None,
            "lca_completeness_error",
            Some("all"),
            Some(phase),
            total - change,
        );
        if phase == "rise" {
            let mut ranked: Vec<usize> = (0..groups.len()).collect();
            ranked.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
            let top: Vec<String> = ranked
                .iter()
                .take(3)
                .map(|&g| format!("{} {:.0}%", groups[g].name, 100.0 * values[g] / change))
                .collect();
            lines.push(format!(
                "  rise explained by (LCA): {}; completeness error {:.1e} of {:.2e} (up to {intervals_max} Simpson intervals a step)",
                top.join(", "),
                total - change,
                change
            ));
        }
    }

    // Revert-one and apply-one between the pre-onset and the peak weights.
    let mut reverted = Vec::new();
    for group in &groups {
        let revert = loss_with_group_from(&eval, at(spike.peak), at(pre), group)?;
        let apply = loss_with_group_from(&eval, at(pre), at(spike.peak), group)?;
        attribution.push(
            id,
            None,
            "revert_one",
            Some(&group.name),
            Some("peak"),
            revert,
        );
        attribution.push(id, None, "apply_one", Some(&group.name), Some("pre"), apply);
        reverted.push((group.name.clone(), revert));
    }
    reverted.sort_by(|a, b| a.1.total_cmp(&b.1));
    let best: Vec<String> = reverted
        .iter()
        .take(3)
        .map(|(n, l)| format!("{n} ({l:.2e})"))
        .collect();
    lines.push(format!(
        "  reverting one group at the peak lowers the loss most for: {}",
        best.join(", ")
    ));

    // Model internals at onset, peak and end.
    for (label, t) in [
        ("onset", spike.onset),
        ("peak", spike.peak),
        ("end", spike.end),
    ] {
        internals_rows(&digit_cfg, steps, id, t, label, at(t), &set)?;
    }
    Ok(lines)
}

/// Per tensor at step `t`: gradient norm, update over weight norm, and how the squared gradient
/// compares with AdamW's second moment before the update (Bai et al. 2025).
fn optimizer_rows(
    cfg: &TrainConfig,
    steps: &mut Rows,
    id: usize,
    t: u64,
    row: &digitlab_snapshots::LogRow,
    grads: &[Vec<f32>],
    v_before: &[Vec<f32>],
) {
    steps.push(id, Some(t), "train_loss", None, None, f64::from(row.loss));
    steps.push(
        id,
        Some(t),
        "grad_norm",
        Some("all"),
        None,
        f64::from(row.grad_norm),
    );
    let names = cfg
        .model
        .param_specs()
        .into_iter()
        .filter(|s| s.trained)
        .map(|s| s.name);
    for (i, name) in names.enumerate() {
        let s = row
            .tensors
            .get(i)
            .copied()
            .unwrap_or(digitlab_snapshots::TensorStats {
                grad_norm: f32::NAN,
                weight_norm: f32::NAN,
                update_norm: f32::NAN,
            });
        steps.push(
            id,
            Some(t),
            "grad_norm",
            Some(&name),
            None,
            f64::from(s.grad_norm),
        );
        steps.push(
            id,
            Some(t),
            "update_over_weight",
            Some(&name),
            None,
            f64::from(s.update_norm / s.weight_norm),
        );
        let mut ratios: Vec<f32> = grads[i]
            .iter()
            .zip(&v_before[i])
            .filter(|(_, &v)| v > 0.0)
            .map(|(&g, &v)| g * g / v)
            .collect();
        if ratios.is_empty() {
            continue;
        }
        let small = ratios.iter().filter(|&&r| r < 0.01).count() as f64 / ratios.len() as f64;
        let mid = ratios.len() / 2;
        let median = *ratios.select_nth_unstable_by(mid, f32::total_cmp).1;
        steps.push(
            id,
            Some(t),
            "grad_sq_below_1pct_of_v",
            Some(&name),
            None,
            small,
        );
        steps.push(
            id,
            Some(t),
            "median_grad_sq_over_v",
            Some(&name),
            None,
            f64::from(median),
        );
    }
}

/// Attention entropy and largest attention score per head at the predicting position, the
/// logsumexp of the output logits and the saturated fraction, on the eval batch.
fn internals_rows(
    cfg: &TrainConfig,
    steps: &mut Rows,
    id: usize,
    t: u64,
    label: &str,
    params: &[NamedTensor],
    set: &EvalSet,
) -> Result<()> {
    let device = Device::Cpu;
    let model = Transformer::from_params(&cfg.model, params, &device)?;
    let n_ctx = cfg.task.n_ctx();
    let position = cfg.task.predicting_position(set.digit);
    let tokens = Tensor::from_slice(&set.batch.tokens, (set.len(), n_ctx), &device)?;
    let last = cfg.model.n_layers - 1;
    let (pattern_hook, scores_hook) = (
        format!("blocks.{last}.attn.hook_pattern"),
        format!("blocks.{last}.attn.hook_attn_scores"),
    );
    let mut hooks = Hooks::none().cache(&pattern_hook).cache(&scores_hook);
    let logits = model
        .logits_at(&tokens, &[position], &mut hooks)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let targets: Vec<u32> = set.labels.iter().map(|l| u32::from(l.true_digit)).collect();
    let stats = output_stats(&logits, cfg.model.d_vocab_out, &targets);
    steps.push(
        id,
        Some(t),
        &format!("logsumexp_mean_at_{label}"),
        None,
        None,
        f64::from(stats.logsumexp_mean),
    );
    steps.push(
        id,
        Some(t),
        &format!("saturated_fraction_at_{label}"),
        None,
        None,
        f64::from(stats.saturated_fraction),
    );
    let pattern = hooks.cache[&pattern_hook]
        .narrow(2, position, 1)?
        .squeeze(2)?; // [batch, head, key]
    let scores = hooks.cache[&scores_hook]
        .narrow(2, position, 1)?
        .squeeze(2)?;
    let entropy = (pattern.clone() * (pattern.clamp(1e-30, 1.0)?.log()?))?
        .sum(2)?
        .neg()?
        .mean(0)?
        .to_vec1::<f32>()?;
    let max_score = scores.max(2)?.max(0)?.to_vec1::<f32>()?;
    for (h, (e, m)) in entropy.iter().zip(&max_score).enumerate() {
        let head = format!("head {h}");
        steps.push(
            id,
            Some(t),
            &format!("attention_entropy_at_{label}"),
            Some(&head),
            None,
            f64::from(*e),
        );
        steps.push(
            id,
            Some(t),
            &format!("max_attention_score_at_{label}"),
            Some(&head),
            None,
            f64::from(*m),
        );
    }
    Ok(())
}

fn spikes_table(run: &str, found: &[Found], attributed: &[usize]) -> Result<DataFrame> {
    let n = found.len();
    let col_u = |name: &str, f: &dyn Fn(&Found) -> u64| {
        Column::new(
            name.into(),
            found.iter().map(|x| f(x) as i64).collect::<Vec<_>>(),
        )
    };
    let col_f = |name: &str, f: &dyn Fn(&Found) -> f64| {
        Column::new(name.into(), found.iter().map(f).collect::<Vec<_>>())
    };
    Ok(DataFrame::new(
        n,
        vec![
            Column::new("run".into(), vec![run.to_string(); n]),
            Column::new("spike".into(), (0..n as i64).collect::<Vec<_>>()),
            Column::new(
                "series".into(),
                found.iter().map(|f| f.series.clone()).collect::<Vec<_>>(),
            ),
            Column::new(
                "digit".into(),
                found
                    .iter()
                    .map(|f| f.digit.map(|d| d as i64))
                    .collect::<Vec<_>>(),
            ),
            col_u("onset", &|f| f.spike.onset),
            col_u("peak", &|f| f.spike.peak),
            col_u("end", &|f| f.spike.end),
            Column::new(
                "outcome".into(),
                found
                    .iter()
                    .map(|f| f.spike.outcome.name())
                    .collect::<Vec<_>>(),
            ),
            col_f("loss_before", &|f| f.spike.loss_before),
            col_f("loss_peak", &|f| f.spike.loss_peak),
            col_f("loss_after", &|f| f.spike.loss_after),
            col_f("peak_ratio", &|f| f.spike.peak_ratio),
            Column::new(
                "attributed".into(),
                (0..n).map(|i| attributed.contains(&i)).collect::<Vec<_>>(),
            ),
        ],
    )?)
}
