//! One forward and backward pass on a training batch: the loss, the logits at the predicting
//! positions and the gradient of every trained tensor, as plain vectors for the optimizer.

use std::collections::HashMap;

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use digitlab_snapshots::NamedTensor;

use crate::config::TrainConfig;
use crate::model::{Hooks, Transformer};
use crate::output_stats::OutputStats;
use crate::task::Batch;

/// What one pass gives the training loop.
pub struct StepResult {
    /// Mean cross-entropy over examples and trained digits, as candle computed it.
    pub loss: f32,
    /// Logits at the predicting positions, `[example][trained digit][output]` row-major.
    pub logits: Vec<f32>,
    /// Targets in the same `[example][trained digit]` order.
    pub targets: Vec<u32>,
    /// One gradient per trained tensor, in `param_specs` order.
    pub grads: Vec<Vec<f32>>,
    /// The logits' [`OutputStats`] when the step computed them on the way (the fused step
    /// does, from its softmax); `None` and the caller computes them otherwise.
    pub stats: Option<OutputStats>,
}

/// Forward and backward on `batch` with the weights `params` (all tensors, state-dict order),
/// through the step implementation of [`TrainConfig::training_kernel`].
pub fn loss_and_grads(
    cfg: &TrainConfig,
    params: &[NamedTensor],
    batch: &Batch,
) -> Result<StepResult> {
    if cfg.training_kernel().step.is_fused() {
        return crate::fused::loss_and_grads(cfg, params, batch);
    }
    candle_loss_and_grads(cfg, params, batch)
}

/// The mean cross-entropy of `batch` without gradients (modular addition's test loss),
/// summed in f64 so that the small losses of a model that has generalised keep their digits.
pub fn eval_loss(cfg: &TrainConfig, params: &[NamedTensor], batch: &Batch) -> Result<f32> {
    let device = Device::Cpu;
    let tensors = params
        .iter()
        .map(|p| {
            Ok((
                p.name.clone(),
                Tensor::from_slice(&p.data, p.shape.as_slice(), &device)?,
            ))
        })
        .collect::<Result<HashMap<_, _>>>()?;
    let model = Transformer::new(
        &cfg.model,
        VarBuilder::from_tensors(tensors, DType::F32, &device),
    )?;
    let (logits, targets) = forward_logits(cfg, &model, batch, &device)?;
    let logits = logits.flatten_all()?.to_vec1::<f32>()?;
    Ok(
        crate::output_stats::output_stats(&logits, cfg.model.d_vocab_out, &targets, 1).digit_loss
            [0],
    )
}

/// [`loss_and_grads`] through candle's autograd (any layout and depth).
pub fn candle_loss_and_grads(
    cfg: &TrainConfig,
    params: &[NamedTensor],
    batch: &Batch,
) -> Result<StepResult> {
    let device = Device::Cpu;
    let specs = cfg.model.param_specs();
    let mut tensors = HashMap::with_capacity(params.len());
    let mut trained = Vec::new();
    for (spec, p) in specs.iter().zip(params) {
        let tensor = if spec.trained {
            let var = Var::from_slice(&p.data, p.shape.as_slice(), &device)?;
            let t = var.as_tensor().clone();
            trained.push(var);
            t
        } else {
            Tensor::from_slice(&p.data, p.shape.as_slice(), &device)?
        };
        tensors.insert(p.name.clone(), tensor);
    }
    let model = Transformer::new(
        &cfg.model,
        VarBuilder::from_tensors(tensors, DType::F32, &device),
    )?;
    let (logits, targets) = forward_logits(cfg, &model, batch, &device)?;
    let target_tensor = Tensor::from_slice(&targets, targets.len(), &device)?;
    let loss = candle_nn::loss::cross_entropy(&logits, &target_tensor)?;
    let grads = loss.backward()?;
    let grads = trained
        .iter()
        .map(|var| match grads.get(var.as_tensor()) {
            Some(g) => Ok(g.flatten_all()?.to_vec1::<f32>()?),
            None => Ok(vec![0.0; var.elem_count()]),
        })
        .collect::<Result<_>>()?;
    Ok(StepResult {
        loss: loss.to_scalar::<f32>()?,
        logits: logits.flatten_all()?.to_vec1::<f32>()?,
        targets,
        grads,
        stats: None,
    })
}

/// Logits `[examples * trained digits, d_vocab_out]` and their targets, through the fast path
/// when the model and layout allow it.
pub fn forward_logits(
    cfg: &TrainConfig,
    model: &Transformer,
    batch: &Batch,
    device: &Device,
) -> Result<(Tensor, Vec<u32>)> {
    let n_ctx = cfg.task.n_ctx();
    let tokens = Tensor::from_slice(&batch.tokens, (batch.examples, n_ctx), device)?;
    let logits = if cfg.uses_last_position_path() {
        model.last_position_logits(&tokens)?
    } else {
        let positions: Vec<usize> = cfg
            .task
            .targets
            .iter()
            .map(|&k| cfg.task.predicting_position(k))
            .collect();
        model
            .logits_at(&tokens, &positions, &mut Hooks::none())?
            .reshape(((), cfg.model.d_vocab_out))?
    };
    Ok((logits, batch.targets.clone()))
}
