//! AdamW with decoupled weight decay, in the order PyTorch's single-tensor `torch.optim.AdamW`
//! computes it, fused with the norms the per-batch log records.
//!
//! Written by hand rather than using `candle_nn::AdamW` because that keeps its moments private
//! (checkpoints must save and restore them bit for bit) and because one pass over each tensor
//! can update the weights and measure the gradient, weight and update norms together, where
//! candle would need a dozen tensor ops per parameter per step.

use digitlab_snapshots::TensorStats;
use serde::{Deserialize, Serialize};

/// Optimizer hyperparameters (spec section 2 defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimizerConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Linear warm-up: step `t` (0-based) uses `lr * min(1, (t + 1) / warmup_steps)`.
    pub warmup_steps: u64,
    /// Clip the global gradient norm to this value (PyTorch's `clip_grad_norm_`); off if None.
    pub grad_clip: Option<f64>,
}

impl OptimizerConfig {
    /// The learning rate of step `t` (0-based), warm-up included.
    pub fn lr_at(&self, t: u64) -> f64 {
        if self.warmup_steps == 0 {
            self.lr
        } else {
            self.lr * ((t + 1) as f64 / self.warmup_steps as f64).min(1.0)
        }
    }

    /// The factor gradients are multiplied by before the update, given their global norm.
    pub fn clip_scale(&self, grad_norm: f64) -> f32 {
        match self.grad_clip {
            Some(max) if grad_norm > max => (max / (grad_norm + 1e-6)) as f32,
            _ => 1.0,
        }
    }
}

/// AdamW state for the trained tensors: first and second moments and the step count.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamW {
    pub m: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
    /// Steps taken so far (PyTorch's `state["step"]`).
    pub step: u64,
}

impl AdamW {
    /// Zero moments for tensors of the given sizes.
    pub fn new(sizes: &[usize]) -> AdamW {
        AdamW {
            m: sizes.iter().map(|&n| vec![0.0; n]).collect(),
            v: sizes.iter().map(|&n| vec![0.0; n]).collect(),
            step: 0,
        }
    }

    /// One update of every trained tensor. `grads` are the raw gradients (their norm is what is
    /// logged); they are multiplied by `grad_scale` (clipping) before use. Returns, per tensor,
    /// the raw gradient norm, the weight norm after the update and the norm of the update.
    pub fn update(
        &mut self,
        cfg: &OptimizerConfig,
        lr: f64,
        params: &mut [&mut [f32]],
        grads: &[Vec<f32>],
        grad_scale: f32,
    ) -> Vec<TensorStats> {
        self.step += 1;
        let t = self.step as i32;
        let decay = (1.0 - lr * cfg.weight_decay) as f32;
        let (beta1, beta2) = (cfg.beta1 as f32, cfg.beta2 as f32);
        let step_size = (lr / (1.0 - cfg.beta1.powi(t))) as f32;
        let bias_correction2_sqrt = (1.0 - cfg.beta2.powi(t)).sqrt() as f32;
        let eps = cfg.eps as f32;
        let mut stats = Vec::with_capacity(params.len());
        for (i, theta) in params.iter_mut().enumerate() {
            let (m, v, g) = (&mut self.m[i], &mut self.v[i], &grads[i]);
            let (mut grad_sq, mut weight_sq, mut update_sq) = (0f64, 0f64, 0f64);
            for j in 0..theta.len() {
                let raw = g[j];
                let grad = raw * grad_scale;
                let old = theta[j];
                let mut new = old * decay;
                m[j] += (1.0 - beta1) * (grad - m[j]);
                v[j] = v[j] * beta2 + (1.0 - beta2) * grad * grad;
                let denom = v[j].sqrt() / bias_correction2_sqrt + eps;
                new -= step_size * (m[j] / denom);
                theta[j] = new;
                grad_sq += f64::from(raw) * f64::from(raw);
                weight_sq += f64::from(new) * f64::from(new);
                update_sq += f64::from(new - old) * f64::from(new - old);
            }
            stats.push(TensorStats {
                grad_norm: grad_sq.sqrt() as f32,
                weight_norm: weight_sq.sqrt() as f32,
                update_norm: update_sq.sqrt() as f32,
            });
        }
        stats
    }
}
