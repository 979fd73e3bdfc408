//! What the spike analysis records beside the attribution, per replayed batch: the optimizer's
//! view of each tensor (gradient norm, relative update, squared gradient against AdamW's second
//! moment) and the model's internals at onset, peak and end (attention entropy and largest
//! score per head, logsumexp of the output logits, saturated fraction).

use anyhow::Result;
use candle_core::{Device, Tensor};
use digitlab::config::TrainConfig;
use digitlab::model::{HookPoint, Hooks, Transformer};
use digitlab::output_stats::output_stats;
use digitlab_snapshots::{LogRow, NamedTensor, TensorStats};

use super::rows::StepRow;
use crate::eval_set::EvalSet;

/// Per tensor at step `t`: gradient norm, update over weight norm, and how the squared gradient
/// compares with AdamW's second moment before the update (Bai et al. 2025).
/// `tensor_names` are the training log's, in the order of `row.tensors` and `grads`.
pub(super) fn optimizer_rows(
    tensor_names: &[String],
    steps: &mut Vec<StepRow>,
    id: usize,
    t: u64,
    row: &LogRow,
    grads: &[Vec<f32>],
    v_before: &[Vec<f32>],
) {
    let mut push = |metric: &str, group: Option<&str>, value: f64| {
        steps.push(StepRow {
            spike: id,
            batch: t,
            metric: metric.to_string(),
            group: group.map(str::to_string),
            value,
        })
    };
    push("train_loss", None, f64::from(row.loss));
    push("grad_norm", Some("all"), f64::from(row.grad_norm));
    for (i, name) in tensor_names.iter().enumerate() {
        let s = row.tensors.get(i).copied().unwrap_or(TensorStats {
            grad_norm: f32::NAN,
            weight_norm: f32::NAN,
            update_norm: f32::NAN,
        });
        push("grad_norm", Some(name.as_str()), f64::from(s.grad_norm));
        push(
            "update_over_weight",
            Some(name.as_str()),
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
        push("grad_sq_below_1pct_of_v", Some(name.as_str()), small);
        push(
            "median_grad_sq_over_v",
            Some(name.as_str()),
            f64::from(median),
        );
    }
}

/// Attention entropy and largest attention score per head at the predicting position, the
/// logsumexp of the output logits and the saturated fraction, on the eval batch.
pub(super) fn internals_rows(
    cfg: &TrainConfig,
    steps: &mut Vec<StepRow>,
    id: usize,
    t: u64,
    label: &str,
    params: &[NamedTensor],
    set: &EvalSet,
) -> Result<()> {
    let mut push = |metric: &str, group: Option<String>, value: f32| {
        steps.push(StepRow {
            spike: id,
            batch: t,
            metric: format!("{metric}_at_{label}"),
            group,
            value: f64::from(value),
        })
    };
    let device = Device::Cpu;
    let model = Transformer::from_params(&cfg.model, params, &device)?;
    let n_ctx = cfg.task.n_ctx();
    let position = cfg.task.predicting_position(set.digit);
    let tokens = Tensor::from_slice(&set.batch.tokens, (set.len(), n_ctx), &device)?;
    let last = cfg.model.n_layers - 1;
    let (pattern_hook, scores_hook) = (HookPoint::Pattern(last), HookPoint::AttnScores(last));
    let mut hooks = Hooks::none().cache(pattern_hook).cache(scores_hook);
    let logits = model
        .logits_at(&tokens, &[position], &mut hooks)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let targets: Vec<u32> = set.labels.iter().map(|l| u32::from(l.true_digit)).collect();
    let stats = output_stats(&logits, cfg.model.d_vocab_out, &targets, 1);
    push("logsumexp_mean", None, stats.logsumexp_mean);
    push("saturated_fraction", None, stats.saturated_fraction);
    let at_position = |hook| -> Result<Tensor> {
        let cached = hooks.cached(hook).expect("asked for");
        Ok(cached.narrow(2, position, 1)?.squeeze(2)?) // [batch, head, key]
    };
    let (pattern, scores) = (at_position(pattern_hook)?, at_position(scores_hook)?);
    let entropy = (pattern.clone() * (pattern.clamp(1e-30, 1.0)?.log()?))?
        .sum(2)?
        .neg()?
        .mean(0)?
        .to_vec1::<f32>()?;
    let max_score = scores.max(2)?.max(0)?.to_vec1::<f32>()?;
    for (h, (e, m)) in entropy.iter().zip(&max_score).enumerate() {
        push("attention_entropy", Some(format!("head {h}")), *e);
        push("max_attention_score", Some(format!("head {h}")), *m);
    }
    Ok(())
}
