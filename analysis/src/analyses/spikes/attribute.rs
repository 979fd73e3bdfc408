//! Replays one spike and attributes it to parameter groups, one step per function: replay from
//! the newest checkpoint before the spike with the bit-exact check against the log; loss change
//! allocation along the replayed path; revert-one and apply-one between the pre-onset and peak
//! weights; the report lines.

use anyhow::{bail, Context, Result};
use digitlab::config::TrainConfig;
use digitlab::fused::Kernel;
use digitlab::model::ParamGroup;
use digitlab::train::TrainState;
use digitlab_snapshots::{NamedTensor, TrainLog};

use super::diagnostics::{internals_rows, optimizer_rows};
use super::rows::{AttributionRow, StepRow};
use super::{Found, SpikeAnalysisOptions};
use crate::attribution::{allocate_step, loss_with_group_from, EvalLoss};
use crate::eval_set::EvalSet;
use crate::metrics::spike_detection::Spike;
use crate::run::Run;

/// The weights of every batch from the one before the onset (`pre`) to the end of the spike.
struct WeightPath {
    pre: u64,
    weights: Vec<Vec<NamedTensor>>,
}

impl WeightPath {
    fn at(&self, t: u64) -> &[NamedTensor] {
        &self.weights[(t - self.pre) as usize]
    }
}

/// LCA summed over the rise (onset to peak) and the fall (peak to end), per group.
struct Allocation {
    rise: Vec<f64>,
    fall: Vec<f64>,
    /// The most Simpson intervals any step needed.
    intervals_max: usize,
}

/// The eval loss at the three points of the spike.
struct EvalLosses {
    pre: f64,
    peak: f64,
    end: f64,
}

/// Replays spike `id`, appends its attribution and step rows; returns report lines.
pub(super) fn attribute(
    run: &Run,
    log: &TrainLog,
    id: usize,
    found: &Found,
    options: &SpikeAnalysisOptions,
    attribution: &mut Vec<AttributionRow>,
    steps: &mut Vec<StepRow>,
) -> Result<Vec<String>> {
    let cfg = &run.cfg;
    let digit = found.digit.expect("only per-digit spikes are attributed");
    let spike = &found.spike;
    let path = replay_spike(run, log, id, spike, steps)?;

    // The eval loss of the spiking digit alone, on a fixed balanced batch.
    let mut digit_cfg: TrainConfig = cfg.clone();
    digit_cfg.task.targets = vec![digit];
    let set = EvalSet::new(&cfg.task, digit, options.contexts, options.eval_seed);
    let eval = EvalLoss {
        cfg: digit_cfg.clone(),
        batch: &set.batch,
    };
    let groups = cfg.model.param_groups();

    let allocation = allocate_along_path(&eval, &groups, &path, spike, id, steps)?;
    let losses = EvalLosses {
        pre: eval.loss(path.at(path.pre))?,
        peak: eval.loss(path.at(spike.peak))?,
        end: eval.loss(path.at(spike.end))?,
    };
    allocation_rows(id, &groups, &allocation, &losses, attribution);
    let reverted = revert_and_apply(&eval, &groups, &path, spike.peak, id, attribution)?;
    for (label, t) in [
        ("onset", spike.onset),
        ("peak", spike.peak),
        ("end", spike.end),
    ] {
        internals_rows(&digit_cfg, steps, id, t, label, path.at(t), &set)?;
    }
    Ok(report(id, found, &groups, &allocation, &losses, &reverted))
}

/// Relative difference from the logged loss a replay may show when this machine's kernel differs
/// from the run's (docs/metrics.md, 'Spikes'): a different kernel sums in a different order, so
/// the bits differ, but the trajectory must stay within float rounding of the logged one.
pub const REPLAY_TOLERANCE: f64 = 1e-4;

/// Replays training from the newest checkpoint at or before the batch before the onset through
/// the end of the spike, checking every loss against the log (bit for bit when this machine
/// runs the run's kernel, else to [`REPLAY_TOLERANCE`]), and keeps the weights from there on;
/// adds the optimizer rows of those batches.
fn replay_spike(
    run: &Run,
    log: &TrainLog,
    id: usize,
    spike: &Spike,
    steps: &mut Vec<StepRow>,
) -> Result<WeightPath> {
    let cfg = &run.cfg;
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
    let mut path = WeightPath {
        pre,
        weights: Vec::new(),
    };
    while state.batch <= spike.end {
        let t = state.batch;
        let v_before = (t >= pre).then(|| state.adam.v.clone());
        if t >= pre {
            path.weights.push(state.params.clone());
        }
        let (row, grads) = state.step_with_grads(cfg)?;
        let logged = log
            .rows
            .iter()
            .find(|r| r.batch == t)
            .with_context(|| format!("the training log has no row for batch {t}"))?;
        if !cfg.replays_exactly_here() {
            let kernels = (cfg.recorded_kernel(), cfg.training_kernel());
            check_within_tolerance(kernels, t, row.loss, logged.loss)?;
        } else if row.loss.to_bits() != logged.loss.to_bits() {
            bail!(
                "the replay from the checkpoint at batch {} does not reproduce the logged loss at batch {t} ({} vs {}); config.json, the checkpoint and train_log.parquet belong to this run (their config hashes agree), so either this build computes differently from the one that trained the run (analyse it with that build) or the log's values were changed after training",
                entry.batch,
                row.loss,
                logged.loss
            );
        }
        if let Some(v_before) = v_before {
            optimizer_rows(&log.tensor_names, steps, id, t, &row, &grads, &v_before);
        }
    }
    Ok(path)
}

/// A replayed loss on another kernel against the logged one, to [`REPLAY_TOLERANCE`] relative.
/// `kernels` are the run's and this machine's.
fn check_within_tolerance(
    (recorded, here): (Kernel, Kernel),
    batch: u64,
    replayed: f32,
    logged: f32,
) -> Result<()> {
    let (replayed, logged) = (f64::from(replayed), f64::from(logged));
    let relative = (replayed - logged).abs() / logged.abs();
    if relative.is_nan() || relative > REPLAY_TOLERANCE {
        bail!(
            "the replay with kernel {here} differs from the logged loss at batch {batch} by {relative:.1e} relative ({replayed} vs {logged}), more than the {REPLAY_TOLERANCE:e} allowed when the run's kernel ({recorded}) is not this machine's: analyse the run on a machine that runs {recorded}"
        );
    }
    Ok(())
}

/// Loss change allocation of every step from `pre` to the end, summed over the rise and the
/// fall; adds the per-step eval loss and LCA rows.
fn allocate_along_path(
    eval: &EvalLoss,
    groups: &[ParamGroup],
    path: &WeightPath,
    spike: &Spike,
    id: usize,
    steps: &mut Vec<StepRow>,
) -> Result<Allocation> {
    let mut allocation = Allocation {
        rise: vec![0f64; groups.len()],
        fall: vec![0f64; groups.len()],
        intervals_max: 1,
    };
    let mut point = eval.loss_and_grads(path.at(path.pre))?;
    for t in path.pre..spike.end {
        let next = eval.loss_and_grads(path.at(t + 1))?;
        let a = allocate_step(eval, groups, path.at(t), path.at(t + 1), &point, &next)?;
        allocation.intervals_max = allocation.intervals_max.max(a.intervals);
        let row = |metric: &str, group: Option<&str>, value: f64| StepRow {
            spike: id,
            batch: t,
            metric: metric.to_string(),
            group: group.map(str::to_string),
            value,
        };
        steps.push(row("eval_loss", None, a.loss_before));
        let phase = if t < spike.peak {
            &mut allocation.rise
        } else {
            &mut allocation.fall
        };
        for (g, value) in a.per_group.iter().enumerate() {
            phase[g] += value;
            steps.push(row("lca", Some(groups[g].name.as_str()), *value));
        }
        point = next;
    }
    Ok(allocation)
}

/// The LCA of each group over the rise and the fall, the actual loss change of each, and how
/// far the allocations are from adding up to it.
fn allocation_rows(
    id: usize,
    groups: &[ParamGroup],
    allocation: &Allocation,
    losses: &EvalLosses,
    attribution: &mut Vec<AttributionRow>,
) {
    for (phase, values, change) in [
        ("rise", &allocation.rise, losses.peak - losses.pre),
        ("fall", &allocation.fall, losses.end - losses.peak),
    ] {
        let row = |method, group: &str, value| AttributionRow {
            spike: id,
            group: group.to_string(),
            method,
            phase,
            value,
        };
        for (group, v) in groups.iter().zip(values) {
            attribution.push(row("lca", &group.name, *v));
        }
        let total: f64 = values.iter().sum();
        attribution.push(row("loss_change", "all", change));
        attribution.push(row("lca_completeness_error", "all", total - change));
    }
}

/// The eval loss at the peak with one group reverted to its pre-onset value (revert-one), and
/// before the onset with one group set to its peak value (apply-one); returns the revert-one
/// losses by group.
fn revert_and_apply(
    eval: &EvalLoss,
    groups: &[ParamGroup],
    path: &WeightPath,
    peak: u64,
    id: usize,
    attribution: &mut Vec<AttributionRow>,
) -> Result<Vec<(String, f64)>> {
    let (pre, peak) = (path.at(path.pre), path.at(peak));
    let mut reverted = Vec::new();
    for group in groups {
        let revert = loss_with_group_from(eval, peak, pre, group)?;
        let apply = loss_with_group_from(eval, pre, peak, group)?;
        let row = |method, phase, value| AttributionRow {
            spike: id,
            group: group.name.clone(),
            method,
            phase,
            value,
        };
        attribution.push(row("revert_one", "peak", revert));
        attribution.push(row("apply_one", "pre", apply));
        reverted.push((group.name.clone(), revert));
    }
    Ok(reverted)
}

/// The lines `analyze spikes` prints for one spike: where it is, which groups LCA credits with
/// the rise, and which reverted groups lower the peak loss most.
fn report(
    id: usize,
    found: &Found,
    groups: &[ParamGroup],
    allocation: &Allocation,
    losses: &EvalLosses,
    reverted: &[(String, f64)],
) -> Vec<String> {
    let spike = &found.spike;
    let change = losses.peak - losses.pre;
    let rise = &allocation.rise;
    let total: f64 = rise.iter().sum();
    let mut ranked: Vec<usize> = (0..groups.len()).collect();
    ranked.sort_by(|&a, &b| rise[b].total_cmp(&rise[a]));
    let top: Vec<String> = ranked
        .iter()
        .take(3)
        .map(|&g| format!("{} {:.0}%", groups[g].name, 100.0 * rise[g] / change))
        .collect();
    let mut reverted = reverted.to_vec();
    reverted.sort_by(|a, b| a.1.total_cmp(&b.1));
    let best: Vec<String> = reverted
        .iter()
        .take(3)
        .map(|(n, l)| format!("{n} ({l:.2e})"))
        .collect();
    vec![
        format!(
            "spike {id} in {}: onset {} peak {} end {} ({:.2e} -> {:.2e}, x{:.1}); eval loss {:.2e} -> {:.2e} -> {:.2e}",
            found.series, spike.onset, spike.peak, spike.end, spike.loss_before, spike.loss_peak, spike.peak_ratio, losses.pre, losses.peak, losses.end
        ),
        format!(
            "  rise explained by (LCA): {}; completeness error {:.1e} of {:.2e} (up to {} Simpson intervals a step)",
            top.join(", "),
            total - change,
            change,
            allocation.intervals_max
        ),
        format!(
            "  reverting one group at the peak lowers the loss most for: {}",
            best.join(", ")
        ),
    ]
}
