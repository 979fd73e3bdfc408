//! AdamW with decoupled weight decay, in the order PyTorch's single-tensor `torch.optim.AdamW`
//! computes it, fused with the norms the per-batch log records.
//!
//! Written by hand rather than using `candle_nn::AdamW` because that keeps its moments private
//! (checkpoints must save and restore them bit for bit) and because one pass over each tensor
//! can update the weights and measure the gradient, weight and update norms together, where
//! candle would need a dozen tensor ops per parameter per step.

use digitlab_snapshots::TensorStats;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Optimizer hyperparameters (defaults in docs/metrics.md, 'The model').
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
        let rule = UpdateRule {
            decay,
            beta1,
            beta2,
            step_size,
            bias_correction2_sqrt,
            eps,
            grad_scale,
        };
        let mut stats = Vec::with_capacity(params.len());
        for (i, theta) in params.iter_mut().enumerate() {
            let sums = rule.apply_in_blocks(theta, &grads[i], &mut self.m[i], &mut self.v[i]);
            stats.push(TensorStats {
                grad_norm: sums[0].sqrt() as f32,
                weight_norm: sums[1].sqrt() as f32,
                update_norm: sums[2].sqrt() as f32,
            });
        }
        stats
    }
}

/// The scalars of one AdamW step.
struct UpdateRule {
    decay: f32,
    beta1: f32,
    beta2: f32,
    step_size: f32,
    bias_correction2_sqrt: f32,
    eps: f32,
    grad_scale: f32,
}

/// Elements per group: the sums of squares are kept in this many f64 lanes so the loop
/// vectorises (a single accumulator would serialise it), then added up. The squares are taken
/// in f64: in f32 a gradient or weight above 1.8e19 would square to infinity (and f32 lanes
/// overflow long before that), giving an infinite norm for finite weights.
const LANES: usize = 16;

/// Elements per block of the parallel update. Blocks are fixed by position, not by thread
/// count, so the norms come out the same whatever the number of threads.
const BLOCK: usize = 1 << 16;

/// `UpdateRule::$name`: [`UpdateRule::apply_lanes`] compiled with the target feature
/// `$feature` (the caller checks that the CPU has it).
macro_rules! compiled_with {
    ($name:ident, $feature:literal) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feature)]
        unsafe fn $name(
            &self,
            theta: &mut [f32],
            grad: &[f32],
            m: &mut [f32],
            v: &mut [f32],
        ) -> [f64; 3] {
            self.apply_lanes(theta, grad, m, v)
        }
    };
}

impl UpdateRule {
    /// [`UpdateRule::apply`] over fixed blocks, in parallel on rayon's pool (a d_model 512
    /// model has 3 million parameters; one core streams them in several milliseconds).
    fn apply_in_blocks(
        &self,
        theta: &mut [f32],
        grad: &[f32],
        m: &mut [f32],
        v: &mut [f32],
    ) -> [f64; 3] {
        if theta.len() <= BLOCK {
            // Same sums as one block below, without a rayon job: handing one to the pool and
            // waiting for it costs more than updating a small tensor (most tensors at d_model 16).
            return self.apply(theta, grad, m, v);
        }
        let block_sums: Vec<[f64; 3]> = theta
            .par_chunks_mut(BLOCK)
            .zip(grad.par_chunks(BLOCK))
            .zip(m.par_chunks_mut(BLOCK))
            .zip(v.par_chunks_mut(BLOCK))
            .map(|(((t, g), m), v)| self.apply(t, g, m, v))
            .collect();
        block_sums.iter().fold([0.0; 3], |acc, s| {
            [acc[0] + s[0], acc[1] + s[1], acc[2] + s[2]]
        })
    }

    /// Updates one tensor in place; returns the sums of squares of the raw gradient, the new
    /// weights and the update.
    ///
    /// The same loop compiled for the widest vectors the CPU has: baseline x86-64 has 4-lane
    /// floats, and the update's square root and two divisions per weight made it 30% of a
    /// d_model 128 step. Every operation is the same IEEE operation at any width (Rust does
    /// not fuse multiply-adds on its own), so the weights and sums come out bit for bit the
    /// same on every path.
    fn apply(&self, theta: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32]) -> [f64; 3] {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F, checked just above.
                return unsafe { self.apply_avx512(theta, grad, m, v) };
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2, checked just above.
                return unsafe { self.apply_avx2(theta, grad, m, v) };
            }
        }
        self.apply_lanes(theta, grad, m, v)
    }

    compiled_with!(apply_avx512, "avx512f");
    compiled_with!(apply_avx2, "avx2");

    /// The update loop, in [`LANES`] lanes; inlined into each of [`UpdateRule::apply`]'s paths.
    #[inline(always)]
    fn apply_lanes(
        &self,
        theta: &mut [f32],
        grad: &[f32],
        m: &mut [f32],
        v: &mut [f32],
    ) -> [f64; 3] {
        let mut lanes = [[0f64; LANES]; 3];
        let n = theta.len() - theta.len() % LANES;
        for (((t, g), m), v) in theta[..n]
            .chunks_exact_mut(LANES)
            .zip(grad[..n].chunks_exact(LANES))
            .zip(m[..n].chunks_exact_mut(LANES))
            .zip(v[..n].chunks_exact_mut(LANES))
        {
            for l in 0..LANES {
                let [g2, w2, u2] = self.one(&mut t[l], g[l], &mut m[l], &mut v[l]);
                lanes[0][l] += g2;
                lanes[1][l] += w2;
                lanes[2][l] += u2;
            }
        }
        let mut sums = lanes.map(|lane| lane.iter().sum::<f64>());
        for j in n..theta.len() {
            let squares = self.one(&mut theta[j], grad[j], &mut m[j], &mut v[j]);
            for (sum, sq) in sums.iter_mut().zip(squares) {
                *sum += sq;
            }
        }
        sums
    }

    /// PyTorch's order: decay, lerp the first moment, the second moment, then the step.
    /// Returns the squares (in f64) of the raw gradient, the new weight and the update.
    #[inline(always)]
    fn one(&self, theta: &mut f32, raw_grad: f32, m: &mut f32, v: &mut f32) -> [f64; 3] {
        let grad = raw_grad * self.grad_scale;
        let old = *theta;
        *m += (1.0 - self.beta1) * (grad - *m);
        *v = *v * self.beta2 + (1.0 - self.beta2) * grad * grad;
        let denom = v.sqrt() / self.bias_correction2_sqrt + self.eps;
        let new = old * self.decay - self.step_size * (*m / denom);
        *theta = new;
        let square = |x: f32| f64::from(x) * f64::from(x);
        [square(raw_grad), square(new), square(new - old)]
    }
}

/// `sum x^2` in f64 (squares included, see [`LANES`]), in lanes so it vectorises (the
/// gradient norm of a d_model 512 model is 3 million squares a step).
pub fn sum_of_squares(x: &[f32]) -> f64 {
    let mut lanes = [0f64; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest: f64 = chunks
        .remainder()
        .iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum();
    for chunk in chunks {
        for l in 0..LANES {
            lanes[l] += f64::from(chunk[l]) * f64::from(chunk[l]);
        }
    }
    lanes.iter().sum::<f64>() + rest
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every compiled path of the update gives the portable loop's bits: weights, moments and
    /// sums, on a tensor with a remainder after the lanes.
    #[test]
    fn every_vector_width_updates_bit_for_bit_alike() {
        let rule = UpdateRule {
            decay: 1.0 - 1e-3,
            beta1: 0.9,
            beta2: 0.98,
            step_size: 1e-2,
            bias_correction2_sqrt: 0.3,
            eps: 1e-8,
            grad_scale: 0.7,
        };
        let n = 1000 * LANES + 7;
        let x = |i: usize, k: f32| ((i as f32 * k).sin() * 3.0).powi(3);
        let grad: Vec<f32> = (0..n).map(|i| x(i, 0.37)).collect();
        let start = || {
            let theta: Vec<f32> = (0..n).map(|i| x(i, 0.11)).collect();
            let m: Vec<f32> = (0..n).map(|i| 0.1 * x(i, 0.53)).collect();
            let v: Vec<f32> = (0..n).map(|i| x(i, 0.71).abs()).collect();
            (theta, m, v)
        };
        let bits = |s: &(Vec<f32>, Vec<f32>, Vec<f32>), sums: [f64; 3]| {
            let floats = s.0.iter().chain(&s.1).chain(&s.2).map(|x| x.to_bits());
            (floats.collect::<Vec<_>>(), sums.map(f64::to_bits))
        };
        let mut plain = start();
        let sums = rule.apply_lanes(&mut plain.0, &grad, &mut plain.1, &mut plain.2);
        let want = bits(&plain, sums);
        let mut widest = start();
        let sums = rule.apply(&mut widest.0, &grad, &mut widest.1, &mut widest.2);
        assert!(bits(&widest, sums) == want, "the dispatched path differs");
        #[cfg(target_arch = "x86_64")]
        for (name, available) in [
            ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
            ("avx2", std::arch::is_x86_feature_detected!("avx2")),
        ] {
            if !available {
                eprintln!("skipped: this CPU has no {name}");
                continue;
            }
            let mut s = start();
            // SAFETY: the feature was detected just above.
            let sums = unsafe {
                if name == "avx512f" {
                    rule.apply_avx512(&mut s.0, &grad, &mut s.1, &mut s.2)
                } else {
                    rule.apply_avx2(&mut s.0, &grad, &mut s.1, &mut s.2)
                }
            };
            assert!(bits(&s, sums) == want, "the {name} path differs");
        }
    }
}
