//! Attribution of a loss change to parameter groups, to say which weights made a spike: loss
//! change allocation along the optimizer's path (Lan et al. 2019), and revert-one / apply-one
//! between two points (docs/metrics.md, 'Spikes').
//!
//! The groups ([`ParamGroup`], from the model config) partition the trained parameters: every
//! tensor, with the attention matrices split per head (`blocks.0.attn.W_Q[2]`), so the
//! allocations of all groups add up to the whole change.

use anyhow::Result;
use candle_core::Device;
use digitlab::config::TrainConfig;
use digitlab::log_softmax::mean_cross_entropy;
use digitlab::model::{ParamGroup, Transformer};
use digitlab::step::{forward_logits, loss_and_grads};
use digitlab::task::Batch;
use digitlab_snapshots::NamedTensor;

/// The eval loss of a fixed batch, and its gradient, at any weights.
pub struct EvalLoss<'a> {
    /// The run's config restricted to the spiking digit.
    pub cfg: TrainConfig,
    pub batch: &'a Batch,
}

impl EvalLoss<'_> {
    /// The loss in f64 from the logits: the changes LCA explains are small next to the loss
    /// itself, below what a float32 mean resolves.
    pub fn loss(&self, params: &[NamedTensor]) -> Result<f64> {
        let device = Device::Cpu;
        let model = Transformer::from_params(&self.cfg.model, params, &device)?;
        let (logits, targets) = forward_logits(&self.cfg, &model, self.batch, &device)?;
        Ok(self.mean_loss(&logits.flatten_all()?.to_vec1::<f32>()?, &targets))
    }

    pub fn loss_and_grads(&self, params: &[NamedTensor]) -> Result<(f64, Vec<Vec<f32>>)> {
        let r = loss_and_grads(&self.cfg, params, self.batch)?;
        Ok((self.mean_loss(&r.logits, &r.targets), r.grads))
    }

    fn mean_loss(&self, logits: &[f32], targets: &[u32]) -> f64 {
        let targets: Vec<u8> = targets.iter().map(|&t| t as u8).collect();
        mean_cross_entropy(logits, self.cfg.model.d_vocab_out, &targets)
    }
}

/// `a + s (b - a)` for every tensor.
fn lerp(a: &[NamedTensor], b: &[NamedTensor], s: f32) -> Vec<NamedTensor> {
    a.iter()
        .zip(b)
        .map(|(x, y)| NamedTensor {
            data: x
                .data
                .iter()
                .zip(&y.data)
                .map(|(p, q)| p + s * (q - p))
                .collect(),
            ..x.clone()
        })
        .collect()
}

/// Loss change allocation of one optimizer step, and how well it adds up.
pub struct StepAllocation {
    /// One value per group: its share of `loss_after - loss_before`.
    pub per_group: Vec<f64>,
    pub loss_before: f64,
    pub loss_after: f64,
    /// Simpson intervals used (1 unless refined).
    pub intervals: usize,
}

/// Relative tolerance of the completeness check (allocations add up to the change within
/// 0.1%, so the attribution accounts for the whole spike), with an
/// absolute floor: the logits come from a float32 forward pass, which resolves loss changes
/// to about 1e-6 near ln 10 (measured: 7e-7 residual on steps whose change was 3e-4).
pub const LCA_TOLERANCE: f64 = 1e-3;
pub const LCA_FLOOR: f64 = 2e-6;
/// Interval doublings tried before accepting the remaining error.
const MAX_REFINEMENTS: u32 = 4;

/// Allocates the change of the eval loss from `a` to `b` to `groups`: for each group the
/// dot product of its step with the gradient integrated along the straight segment, by
/// Simpson's rule (points 0, 1/2, 1), on 2, 4, … intervals until the allocations add up to the
/// actual change within the tolerance. `start` is the loss and gradient at `a`, known already.
pub fn allocate_step(
    eval: &EvalLoss,
    groups: &[ParamGroup],
    a: &[NamedTensor],
    b: &[NamedTensor],
    start: &(f64, Vec<Vec<f32>>),
    end: &(f64, Vec<Vec<f32>>),
) -> Result<StepAllocation> {
    let change = end.0 - start.0;
    let mut intervals = 1usize;
    loop {
        let mut per_group = vec![0f64; groups.len()];
        let mut left: (f64, Vec<Vec<f32>>) = start.clone();
        for i in 0..intervals {
            let s0 = i as f32 / intervals as f32;
            let s1 = (i + 1) as f32 / intervals as f32;
            let right = if i + 1 == intervals {
                end.clone()
            } else {
                eval.loss_and_grads(&lerp(a, b, s1))?
            };
            let mid = eval.loss_and_grads(&lerp(a, b, (s0 + s1) / 2.0))?;
            for (g, group) in groups.iter().enumerate() {
                let (pa, pb) = (&a[group.param].data, &b[group.param].data);
                let (gl, gm, gr) = (
                    &left.1[group.trained],
                    &mid.1[group.trained],
                    &right.1[group.trained],
                );
                let mut sum = 0f64;
                for j in group.range.clone() {
                    let step = f64::from(pb[j] - pa[j]) / intervals as f64;
                    sum +=
                        step * (f64::from(gl[j]) + 4.0 * f64::from(gm[j]) + f64::from(gr[j])) / 6.0;
                }
                per_group[g] += sum;
            }
            left = right;
        }
        let total: f64 = per_group.iter().sum();
        let ok = (total - change).abs() <= LCA_TOLERANCE * change.abs() + LCA_FLOOR;
        if ok || intervals >= 1 << MAX_REFINEMENTS {
            return Ok(StepAllocation {
                per_group,
                loss_before: start.0,
                loss_after: end.0,
                intervals,
            });
        }
        intervals *= 2;
    }
}

/// The eval loss at `target` with only `group` set to its value in `source`.
pub fn loss_with_group_from(
    eval: &EvalLoss,
    target: &[NamedTensor],
    source: &[NamedTensor],
    group: &ParamGroup,
) -> Result<f64> {
    let mut params = target.to_vec();
    params[group.param].data[group.range.clone()]
        .copy_from_slice(&source[group.param].data[group.range.clone()]);
    eval.loss(&params)
}
