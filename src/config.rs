//! Everything that defines a training run, stored as the run's `config.json`.

use anyhow::{bail, Context, Result};
use digitlab_snapshots::RunDir;
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
}

impl TrainConfig {
    /// The config a run directory was trained with (its `config.json`), as `train --resume`,
    /// the analyses and the examples read it: parsed, then checked by
    /// [`TrainConfig::validate`] exactly as one from the command line (same messages), so a
    /// config edited on disk can never reach code that assumes a valid one.
    pub fn from_run(run: &RunDir) -> Result<TrainConfig> {
        let path = run.root().join("config.json");
        let cfg: TrainConfig = serde_json::from_value(run.config().clone())
            .with_context(|| format!("{} is not a digitlab training config", path.display()))?;
        cfg.validate()
            .with_context(|| format!("{} holds a config that cannot be trained", path.display()))?;
        Ok(cfg)
    }

    /// The defaults of docs/metrics.md, 'The model', and of `train`: 5-digit prompt layout, units
    /// digit, d_model 128, 4 heads, AdamW lr 1e-3, betas (0.9, 0.98), weight decay 1.0,
    /// batch 128, 3000 steps, seed 0.
    ///
    /// Modular addition instead trains full-batch (the batch is the training set) on
    /// `d_vocab_out` p outputs, as Nanda et al. do.
    pub fn default_for(task: TaskConfig, d_model: usize, n_heads: usize) -> TrainConfig {
        let n_ctx = task.n_ctx();
        let d_vocab = task.d_vocab();
        let (d_vocab_out, batch_size) = match &task.modp {
            Some(modp) => (modp.p, modp.n_train()),
            None => (crate::task::D_VOCAB, 128),
        };
        TrainConfig {
            digitlab_version: env!("CARGO_PKG_VERSION").to_string(),
            task,
            model: ModelConfig {
                n_layers: 1,
                d_model,
                n_heads,
                d_mlp: d_model.saturating_mul(4),
                d_vocab,
                d_vocab_out,
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
            batch_size,
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
        if self.model.d_vocab != self.task.d_vocab() {
            bail!(
                "model d_vocab {} does not match the task's {} tokens",
                self.model.d_vocab,
                self.task.d_vocab()
            );
        }
        match &self.task.modp {
            Some(modp) => {
                if self.model.d_vocab_out != modp.p {
                    bail!(
                        "model d_vocab_out {} does not match the {} answers of modular addition",
                        self.model.d_vocab_out,
                        modp.p
                    );
                }
                if self.batch_size != modp.n_train() {
                    bail!(
                        "modular addition trains full-batch: batch_size must be the {} training \
                         pairs, got {}",
                        modp.n_train(),
                        self.batch_size
                    );
                }
            }
            None if self.model.d_vocab_out < 10 => {
                bail!("--d-vocab-out must be at least 10 (the ten digits)")
            }
            None => {}
        }
        let o = &self.optimizer;
        if !(o.lr.is_finite() && o.lr > 0.0) {
            bail!("--lr must be a positive number, got {}", o.lr);
        }
        // The update runs in f32: its first step size lr / (1 - beta1) and the decay
        // lr * weight_decay must be f32 numbers, or the first step turns every weight into
        // inf or NaN.
        let f32_max = f64::from(f32::MAX);
        if o.lr / (1.0 - o.beta1.clamp(0.0, 0.999_999)) > f32_max || o.lr * o.weight_decay > f32_max
        {
            bail!(
                "--lr {:e} is too large: the optimizer computes in f32, where lr / (1 - beta1) \
                 and lr * weight_decay must stay below {f32_max:.3e}",
                o.lr
            );
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
        if !(o.eps.is_finite() && o.eps as f32 > 0.0) {
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
            if !p.factor.is_finite() {
                bail!(
                    "--perturb: the factor must be a finite number, got {}",
                    p.factor
                );
            }
            if p.batch == 0 || p.batch > self.steps {
                bail!("--perturb: the batch must be between 1 and --steps");
            }
            if let Err(e) = self.model.param_group(&p.group) {
                bail!("--perturb: {e}");
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
        digitlab_snapshots::run_config_hash(&serde_json::to_value(self).expect("config serialises"))
    }
}
