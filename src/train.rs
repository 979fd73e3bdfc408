//! The training story, top to bottom: make or load the state, then for every batch snapshot
//! the weights when due, take one AdamW step on a freshly generated batch, and log it.
//!
//! Batches are a pure function of `(seed, batch index)` and the state is plain data (weights,
//! AdamW moments, step count), so a run restarted from a checkpoint retraces the same bytes.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use digitlab_snapshots::{Checkpoint, LogRow, NamedTensor, RunDir, TrainLog};
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::{Perturbation, TrainConfig};
use crate::fused::{CachedStep, StepKind};
use crate::optim::{sum_of_squares, AdamW};
use crate::output_stats::{digit_losses, output_stats};
use crate::step::{loss_and_grads, StepResult};
use crate::task::training_batch;
use crate::writer::{RunWriter, WriteJob};

/// Weights and optimizer state after `batch` steps.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainState {
    pub batch: u64,
    /// Every tensor of the state dict, in `param_specs` order.
    pub params: Vec<NamedTensor>,
    /// Moments of the trained tensors, in `param_specs` order.
    pub adam: AdamW,
}

impl TrainState {
    /// Freshly initialised weights, zero moments.
    pub fn new(cfg: &TrainConfig) -> TrainState {
        let params = cfg.model.init_params(cfg.seed);
        let sizes: Vec<usize> = cfg
            .model
            .param_specs()
            .iter()
            .zip(&params)
            .filter(|(s, _)| s.trained)
            .map(|(_, p)| p.data.len())
            .collect();
        TrainState {
            batch: 0,
            params,
            adam: AdamW::new(&sizes),
        }
    }

    /// The state saved in a checkpoint, checked against the model's parameter list.
    pub fn from_checkpoint(cfg: &TrainConfig, checkpoint: Checkpoint) -> Result<TrainState> {
        let specs = cfg.model.param_specs();
        let find = |list: &[NamedTensor], name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            let t = list.iter().find(|t| t.name == name).with_context(|| {
                format!(
                    "checkpoint at batch {} has no tensor {name}",
                    checkpoint.batch
                )
            })?;
            if t.shape != shape {
                bail!(
                    "checkpoint tensor {name} has shape {:?}, the config says {shape:?}",
                    t.shape
                );
            }
            Ok(t.data.clone())
        };
        let mut params = Vec::new();
        let (mut m, mut v) = (Vec::new(), Vec::new());
        for s in &specs {
            params.push(NamedTensor {
                name: s.name.clone(),
                shape: s.shape.clone(),
                data: find(&checkpoint.params, &s.name, &s.shape)?,
            });
            if s.trained {
                m.push(find(&checkpoint.adam_m, &s.name, &s.shape)?);
                v.push(find(&checkpoint.adam_v, &s.name, &s.shape)?);
            }
        }
        Ok(TrainState {
            batch: checkpoint.batch,
            params,
            adam: AdamW {
                m,
                v,
                step: checkpoint.batch,
            },
        })
    }

    /// Everything needed to continue from here.
    pub fn to_checkpoint(&self, cfg: &TrainConfig) -> Checkpoint {
        let trained: Vec<&NamedTensor> = cfg
            .model
            .param_specs()
            .iter()
            .zip(&self.params)
            .filter(|(s, _)| s.trained)
            .map(|(_, p)| p)
            .collect();
        let moments = |list: &[Vec<f32>]| {
            trained
                .iter()
                .zip(list)
                .map(|(p, data)| NamedTensor {
                    name: p.name.clone(),
                    shape: p.shape.clone(),
                    data: data.clone(),
                })
                .collect()
        };
        Checkpoint {
            batch: self.batch,
            params: self.params.clone(),
            adam_m: moments(&self.adam.m),
            adam_v: moments(&self.adam.v),
        }
    }

    /// Trains on batch `self.batch` and returns its log row. A non-finite loss leaves the
    /// weights untouched (the caller stops the run).
    pub fn step(&mut self, cfg: &TrainConfig) -> Result<LogRow> {
        if cfg.training_kernel().step == StepKind::Fused {
            // The fused step's buffers are read in place: no gradient is copied or allocated.
            let batch = training_batch(&cfg.task, cfg.seed, self.batch, cfg.batch_size);
            let mut fused = CachedStep::take(cfg, batch.pairs.len())?;
            let result = fused.run(cfg, &self.params, &batch);
            return self.apply_step(cfg, result);
        }
        Ok(self.step_with_grads(cfg)?.0)
    }

    /// [`TrainState::step`], also returning the raw gradients of the trained tensors.
    pub fn step_with_grads(&mut self, cfg: &TrainConfig) -> Result<(LogRow, Vec<Vec<f32>>)> {
        let batch = training_batch(&cfg.task, cfg.seed, self.batch, cfg.batch_size);
        let result = loss_and_grads(cfg, &self.params, &batch)?;
        let row = self.apply_step(cfg, &result)?;
        Ok((row, result.grads))
    }

    /// The log row of a forward and backward pass on batch `self.batch`, and the AdamW
    /// update with its gradients (none if the loss is not finite).
    fn apply_step(&mut self, cfg: &TrainConfig, result: &StepResult) -> Result<LogRow> {
        let n_out = cfg.model.d_vocab_out;
        let stats = output_stats(&result.logits, n_out, &result.targets);
        let grad_norm = result
            .grads
            .iter()
            .map(|g| sum_of_squares(g))
            .sum::<f64>()
            .sqrt();
        let lr = cfg.optimizer.lr_at(self.batch);
        let mut row = LogRow {
            batch: self.batch,
            loss: result.loss,
            digit_loss: digit_losses(
                &result.logits,
                n_out,
                &result.targets,
                cfg.task.targets.len(),
            ),
            grad_norm: grad_norm as f32,
            lr: lr as f32,
            tensors: Vec::new(),
            logsumexp_mean: stats.logsumexp_mean,
            logsumexp_max: stats.logsumexp_max,
            saturated_fraction: stats.saturated_fraction,
        };
        if !result.loss.is_finite() {
            // No update; the row still needs one entry per trained tensor to be written.
            let norm = |x: &[f32]| sum_of_squares(x).sqrt() as f32;
            let specs = cfg.model.param_specs();
            let trained = specs.iter().zip(&self.params).filter(|(s, _)| s.trained);
            row.tensors = trained
                .zip(&result.grads)
                .map(|((_, p), g)| digitlab_snapshots::TensorStats {
                    grad_norm: norm(g),
                    weight_norm: norm(&p.data),
                    update_norm: 0.0,
                })
                .collect();
            return Ok(row);
        }
        let specs = cfg.model.param_specs();
        let mut trained: Vec<&mut [f32]> = specs
            .iter()
            .zip(self.params.iter_mut())
            .filter(|(s, _)| s.trained)
            .map(|(_, p)| p.data.as_mut_slice())
            .collect();
        let scale = cfg.optimizer.clip_scale(grad_norm);
        row.tensors = self
            .adam
            .update(&cfg.optimizer, lr, &mut trained, &result.grads, scale);
        self.batch += 1;
        if let Some(p) = cfg.perturbation.as_ref().filter(|p| p.batch == self.batch) {
            self.perturb(cfg, p);
        }
        Ok(row)
    }

    /// Scales the perturbed group (a whole tensor, or head `h` of a `[head, …]` tensor), so
    /// that the weights of batch `p.batch` (its snapshot and log row) carry the perturbation.
    fn perturb(&mut self, cfg: &TrainConfig, p: &Perturbation) {
        let (name, head) = p.tensor_and_head();
        let n_heads = cfg.model.n_heads;
        if let Some(t) = self.params.iter_mut().find(|t| t.name == name) {
            let per_head = t.data.len() / n_heads;
            let range = head.map_or(0..t.data.len(), |h| h * per_head..(h + 1) * per_head);
            t.data[range].iter_mut().for_each(|x| *x *= p.factor);
        }
    }
}

/// A new run directory at `dir` for `cfg` (validated first, so nothing is written for a bad
/// config), with the initial state and an empty log: the arguments [`train`] starts from.
pub fn new_run(cfg: &TrainConfig, dir: &std::path::Path) -> Result<(RunDir, TrainState, TrainLog)> {
    cfg.validate()?;
    let mut recorded = cfg.clone();
    recorded.kernel = Some(cfg.training_kernel());
    let run = RunDir::create(dir, &serde_json::to_value(&recorded)?)?;
    let log = TrainLog {
        digits: cfg.task.targets.clone(),
        tensor_names: cfg
            .model
            .param_specs()
            .into_iter()
            .filter(|s| s.trained)
            .map(|s| s.name)
            .collect(),
        rows: Vec::new(),
    };
    Ok((run, TrainState::new(cfg), log))
}

/// An existing run directory made ready to continue from its newest checkpoint, with the step
/// count changed to `steps` if given: what `train --resume` and [`train`] start from. The log
/// is cut at the checkpoint and later snapshots dropped; they are rewritten identically.
pub fn resume_run(
    dir: &std::path::Path,
    steps: Option<u64>,
) -> Result<(TrainConfig, RunDir, TrainState, TrainLog)> {
    let mut run = RunDir::open(dir)?;
    let config_path = dir.join("config.json");
    let mut cfg: TrainConfig = serde_json::from_value(run.config().clone()).with_context(|| {
        format!(
            "{} is not a digitlab training config",
            config_path.display()
        )
    })?;
    if let Some(steps) = steps {
        cfg.steps = steps;
    }
    cfg.validate()?;
    let manifest_path = dir.join("manifest.json");
    let entry = run
        .manifest()
        .checkpoints
        .last()
        .cloned()
        .with_context(|| {
            format!(
                "{} lists no checkpoint to resume from",
                manifest_path.display()
            )
        })?;
    if entry.batch > cfg.steps {
        bail!(
            "the run already has a checkpoint at batch {}, beyond --steps {}: pass a larger --steps",
            entry.batch,
            cfg.steps
        );
    }
    let checkpoint = run.read_checkpoint(&entry)?;
    let state = TrainState::from_checkpoint(&cfg, checkpoint)?;
    let mut log = run.read_train_log()?.with_context(|| {
        format!(
            "{} is missing; cannot resume its log",
            run.train_log_path().display()
        )
    })?;
    log.truncate(state.batch);
    if log.rows.len() as u64 != state.batch {
        bail!(
            "{} has {} rows before batch {}, the newest checkpoint; it should have one per batch",
            run.train_log_path().display(),
            log.rows.len(),
            state.batch
        );
    }
    run.truncate_after(state.batch)?;
    run.set_config(&serde_json::to_value(&cfg)?)?;
    Ok((cfg, run, state, log))
}

/// Trains from `state` to `cfg.steps`, writing snapshots, checkpoints and the log into `run`.
/// `log` holds the rows before `state.batch` (empty for a new run).
pub fn train(
    cfg: &TrainConfig,
    run: RunDir,
    mut state: TrainState,
    mut log: TrainLog,
    progress: bool,
) -> Result<()> {
    let metadata = BTreeMap::from([
        ("format".to_string(), "digitlab-snapshot-v1".to_string()),
        ("config_hash".to_string(), cfg.trajectory_hash()),
        ("digitlab_version".to_string(), cfg.digitlab_version.clone()),
    ]);
    let mut writer = RunWriter::spawn(run, metadata);
    let bar = if progress {
        ProgressBar::new(cfg.steps)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40} {pos}/{len} batches  {per_sec}  eta {eta}  loss {msg}",
        )
        .expect("valid template"),
    );
    bar.set_position(state.batch);
    loop {
        let b = state.batch;
        let last = b == cfg.steps;
        if b.is_multiple_of(cfg.snapshot_every) || last {
            writer.send(WriteJob::Log(log.clone()))?;
            writer.send(WriteJob::Snapshot {
                batch: b,
                tensors: state.params.clone(),
            })?;
        }
        if b.is_multiple_of(cfg.checkpoint_every) || last {
            writer.send(WriteJob::Checkpoint(state.to_checkpoint(cfg)))?;
        }
        if last {
            break;
        }
        let row = state.step(cfg)?;
        let loss = row.loss;
        log.rows.push(row);
        if !loss.is_finite() {
            writer.send(WriteJob::Log(log))?;
            writer.finish()?;
            bar.abandon();
            bail!(
                "the training loss became {loss} at batch {b}; stopped. The run directory keeps \
                 the snapshots and checkpoints written so far and the log up to batch {b}. Try a \
                 smaller --lr, --warmup or --grad-clip."
            );
        }
        if b.is_multiple_of(10) {
            bar.set_message(format!("{loss:.4}"));
        }
        bar.inc(1);
    }
    writer.finish()?;
    bar.finish();
    Ok(())
}
