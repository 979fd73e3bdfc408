//! Everything that defines a training run, stored as the run's `config.json`.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::model::ModelConfig;
use crate::optim::OptimizerConfig;
use crate::task::{Layout, TaskConfig};

/// A training run: task, model, optimizer, schedule and seed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// The digitlab version that wrote the run.
    pub digitlab_version: String,
    pub task: TaskConfig,
    pub model: ModelConfig,
    pub optimizer: OptimizerConfig,
    pub batch_size: usize,
    /// Total optimizer steps (batches); `--resume --steps N` extends it.
    pub steps: u64,
    /// Seeds the initial weights and every training batch.
    pub seed: u64,
    /// Weights are snapshotted at batch 0, every `snapshot_every` batches and at the end.
    pub snapshot_every: u64,
    /// Optimizer checkpoints (weights and AdamW moments) at batch 0, every `checkpoint_every`
    /// batches and at the end.
    pub checkpoint_every: u64,
    /// Test-only: scale one parameter group at one batch, to make a spike of known cause.
    /// Part of the config so that replays reproduce it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perturbation: Option<Perturbation>,
    /// The kernel the run trains with (`fused-avx512`, `candle-fma`, …), recorded by `new_run`;
    /// absent in runs older than the record. A recorded `candle-*` keeps a run on candle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<crate::fused::Kernel>,
}

/// Multiply a tensor (or one head of an attention matrix) by `factor` in the weights of batch
/// `batch` (right after the optimizer step that produced them; `batch >= 1`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Perturbation {
    pub batch: u64,
    /// A TransformerLens parameter name, optionally with a head: `blocks.0.attn.W_Q[2]`.
    pub group: String,
    pub factor: f32,
}

impl Perturbation {
    /// Parses `GROUP@BATCH*FACTOR`, e.g. `blocks.0.attn.W_Q[1]@500*3`.
    pub fn parse(text: &str) -> Result<Perturbation> {
        let parsed = (|| {
            let (group, rest) = text.split_once('@')?;
            let (batch, factor) = rest.split_once('*')?;
            Some(Perturbation {
                batch: batch.parse().ok()?,
                group: group.to_string(),
                factor: factor.parse().ok()?,
            })
        })();
        parsed.ok_or_else(|| {
            anyhow::anyhow!(
                "--perturb takes GROUP@BATCH*FACTOR, e.g. blocks.0.attn.W_Q[1]@500*3; got `{text}`"
            )
        })
    }

    /// The tensor name and the head, if any.
    pub fn tensor_and_head(&self) -> (&str, Option<usize>) {
        match self.group.split_once('[') {
            Some((name, head)) => (name, head.trim_end_matches(']').parse().ok()),
            None => (&self.group, None),
        }
    }
}

impl TrainConfig {
    /// The defaults of spec section 2 and the training issue: 5-digit prompt layout, units
    /// digit, d_model 128, 4 heads, AdamW lr 1e-3, betas (0.9, 0.98), weight decay 1.0,
    /// batch 128, 3000 steps, seed 0.
    pub fn default_for(task: TaskConfig, d_model: usize, n_heads: usize) -> TrainConfig {
        let n_ctx = task.n_ctx();
        TrainConfig {
            digitlab_version: env!("CARGO_PKG_VERSION").to_string(),
            task,
            model: ModelConfig {
                n_layers: 1,
                d_model,
                n_heads,
                d_mlp: 4 * d_model,
                d_vocab: crate::task::D_VOCAB,
                d_vocab_out: crate::task::D_VOCAB,
                n_ctx,
            },
            optimizer: OptimizerConfig {
                lr: 1e-3,
                beta1: 0.9,
                beta2: 0.98,
                eps: 1e-8,
                weight_decay: 1.0,
                warmup_steps: 0,
                grad_clip: None,
            },
            batch_size: 128,
            steps: 3000,
            seed: 0,
            snapshot_every: 50,
            checkpoint_every: 500,
            perturbation: None,
            kernel: None,
        }
    }

    /// Checks every field; the message names the option to change.
    pub fn validate(&self) -> Result<()> {
        self.task.validate()?;
        self.model.validate()?;
        if self.model.n_ctx != self.task.n_ctx() {
            bail!(
                "model n_ctx {} does not match the task's {}",
                self.model.n_ctx,
                self.task.n_ctx()
            );
        }
        let o = &self.optimizer;
        if !(o.lr.is_finite() && o.lr > 0.0) {
            bail!("--lr must be a positive number, got {}", o.lr);
        }
        if !(o.weight_decay.is_finite() && o.weight_decay >= 0.0) {
            bail!(
                "--weight-decay must be zero or positive, got {}",
                o.weight_decay
            );
        }
        if !(0.0..1.0).contains(&o.beta1) || !(0.0..1.0).contains(&o.beta2) {
            bail!("--beta1 and --beta2 must be in [0, 1)");
        }
        if !(o.eps.is_finite() && o.eps > 0.0) {
            bail!("--eps must be positive, got {}", o.eps);
        }
        if let Some(clip) = o.grad_clip {
            if !(clip.is_finite() && clip > 0.0) {
                bail!("--grad-clip must be positive, got {clip}");
            }
        }
        if self.batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        if self.steps == 0 {
            bail!("--steps must be at least 1");
        }
        if self.snapshot_every == 0 {
            bail!("--snapshot-every must be at least 1");
        }
        if self.checkpoint_every == 0 {
            bail!("--checkpoint-every must be at least 1");
        }
        self.check_kernel()?;
        if let Some(p) = &self.perturbation {
            let (name, head) = p.tensor_and_head();
            if p.batch == 0 || p.batch > self.steps {
                bail!("--perturb: the batch must be between 1 and --steps");
            }
            let Some(spec) = self
                .model
                .param_specs()
                .into_iter()
                .find(|s| s.name == name)
            else {
                bail!("--perturb: no parameter named {name}");
            };
            if head.is_some_and(|h| !name.contains(".attn.W_") || h >= self.model.n_heads) {
                bail!("--perturb: {} has no head {:?}", spec.name, head);
            }
        }
        Ok(())
    }

    /// Whether training can use the last-position fast path (same function, fewer operations).
    pub fn uses_last_position_path(&self) -> bool {
        self.task.layout == Layout::Prompt && self.model.n_layers == 1
    }

    /// Identifies the trajectory: the hash of the config without the step count (which
    /// `--resume --steps` may change without changing any snapshot) and without the kernel
    /// (a record of how, which `new_run` writes into `config.json` only).
    pub fn trajectory_hash(&self) -> String {
        let mut value = serde_json::to_value(self).expect("config serialises");
        if let Some(map) = value.as_object_mut() {
            map.remove("steps");
            map.remove("kernel");
        }
        digitlab_snapshots::config_hash(&value)
    }
}
