//! The training story, top to bottom: make or load the state, then for every batch snapshot
//! the weights when due, take one AdamW step on a freshly generated batch, and log it.
//!
//! Batches are a pure function of `(seed, batch index)` and the state is plain data (weights,
//! AdamW moments, step count), so a run restarted from a checkpoint retraces the same bytes.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use digitlab_snapshots::{Checkpoint, LogRow, NamedTensor, NewFile, RunDir, TrainLog};
use indicatif::{ProgressBar, ProgressStyle};

use crate::batches::BatchesAhead;
use crate::config::{Perturbation, TrainConfig};
use crate::fused::CachedStep;
use crate::optim::{sum_of_squares, AdamW};
use crate::output_stats::output_stats;
use crate::resources::MemoryNeed;
use crate::step::{eval_loss, loss_and_grads, StepResult};
use crate::writer::{RunWriter, WriteJob};

/// Weights and optimizer state after `batch` steps.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainState {
    pub batch: u64,
    /// Every tensor of the state dict, in `param_specs` order.
    pub params: Vec<NamedTensor>,
    /// Moments of the trained tensors, in `param_specs` order.
    pub adam: AdamW,
    /// Which of `params` are trained, from `param_specs` once rather than at every step.
    trained: Vec<bool>,
    /// The training batches, made ahead on another thread.
    batches: BatchesAhead,
}

impl TrainState {
    /// Freshly initialised weights, zero moments.
    pub fn new(cfg: &TrainConfig) -> TrainState {
        let params = cfg.model.init_params(cfg.seed);
        let sizes: Vec<usize> = trained(cfg, &params).map(|p| p.data.len()).collect();
        TrainState {
            batch: 0,
            params,
            adam: AdamW::new(&sizes),
            trained: trained_mask(cfg),
            batches: BatchesAhead::default(),
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
            trained: trained_mask(cfg),
            batches: BatchesAhead::default(),
        })
    }

    /// Everything needed to continue from here.
    pub fn to_checkpoint(&self, cfg: &TrainConfig) -> Checkpoint {
        let moments = |list: &[Vec<f32>]| {
            trained(cfg, &self.params)
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
        if cfg.training_kernel().step.is_fused() {
            // The fused step's buffers are read in place: no gradient is copied or allocated.
            let batch = self.batches.take(cfg, self.batch);
            let mut fused = CachedStep::take(cfg, batch.examples)?;
            let result = fused.run(&self.params, &batch);
            return self.apply_step(cfg, result);
        }
        Ok(self.step_with_grads(cfg)?.0)
    }

    /// [`TrainState::step`], also returning the raw gradients of the trained tensors.
    pub fn step_with_grads(&mut self, cfg: &TrainConfig) -> Result<(LogRow, Vec<Vec<f32>>)> {
        let batch = self.batches.take(cfg, self.batch);
        let result = loss_and_grads(cfg, &self.params, &batch)?;
        let row = self.apply_step(cfg, &result)?;
        Ok((row, result.grads))
    }

    /// The log row of a forward and backward pass on batch `self.batch`, and the AdamW
    /// update with its gradients (none if the loss is not finite).
    fn apply_step(&mut self, cfg: &TrainConfig, result: &StepResult) -> Result<LogRow> {
        let n_out = cfg.model.d_vocab_out;
        // Modular addition's test loss, with the weights the training loss saw.
        let test_loss = match &cfg.task.modp {
            Some(modp) if self.batch.is_multiple_of(modp.eval_every) => {
                let test = modp.batch(&modp.split(cfg.seed).test);
                Some(eval_loss(cfg, &self.params, &test)?)
            }
            _ => None,
        };
        let stats = match &result.stats {
            Some(stats) => stats.clone(),
            None => output_stats(
                &result.logits,
                n_out,
                &result.targets,
                cfg.task.targets.len(),
            ),
        };
        // Clipping needs the global gradient norm before the update; without it the norm is
        // taken from the per-tensor norms the update measures anyway (one pass fewer over
        // every gradient, 5% of a d_model 512 step).
        let clip_norm = cfg.optimizer.grad_clip.map(|_| {
            let sums = result.grads.iter().map(|g| sum_of_squares(g));
            sums.sum::<f64>().sqrt()
        });
        let lr = cfg.optimizer.lr_at(self.batch);
        let mut row = LogRow {
            batch: self.batch,
            loss: result.loss,
            digit_loss: stats.digit_loss,
            grad_norm: 0.0,
            lr: lr as f32,
            tensors: Vec::new(),
            logsumexp_mean: stats.logsumexp_mean,
            logsumexp_max: stats.logsumexp_max,
            saturated_fraction: stats.saturated_fraction,
            test_loss,
        };
        if !result.loss.is_finite() {
            // No update; the row still needs one entry per trained tensor to be written.
            let norm = |x: &[f32]| sum_of_squares(x).sqrt() as f32;
            row.tensors = trained(cfg, &self.params)
                .zip(&result.grads)
                .map(|(p, g)| digitlab_snapshots::TensorStats {
                    grad_norm: norm(g),
                    weight_norm: norm(&p.data),
                    update_norm: 0.0,
                })
                .collect();
            row.grad_norm = global_grad_norm(&row.tensors);
            return Ok(row);
        }
        let mut weights: Vec<&mut [f32]> = self
            .params
            .iter_mut()
            .zip(&self.trained)
            .filter(|(_, &trained)| trained)
            .map(|(p, _)| p.data.as_mut_slice())
            .collect();
        let scale = clip_norm.map_or(1.0, |norm| cfg.optimizer.clip_scale(norm));
        row.tensors = self
            .adam
            .update(&cfg.optimizer, lr, &mut weights, &result.grads, scale);
        row.grad_norm = match clip_norm {
            Some(norm) => norm as f32,
            None => global_grad_norm(&row.tensors),
        };
        self.batch += 1;
        if let Some(p) = cfg.perturbation.as_ref().filter(|p| p.batch == self.batch) {
            self.perturb(cfg, p);
        }
        Ok(row)
    }

    /// Scales the perturbed group (a whole tensor, or one head of an attention matrix), so
    /// that the weights of batch `p.batch` (its snapshot and log row) carry the perturbation.
    fn perturb(&mut self, cfg: &TrainConfig, p: &Perturbation) {
        // `TrainConfig::validate` has checked the group's name.
        if let Ok(group) = cfg.model.param_group(&p.group) {
            self.params[group.param].data[group.range]
                .iter_mut()
                .for_each(|x| *x *= p.factor);
        }
    }
}

/// The trained tensors among `items`, which follow the state dict (`param_specs` order): the
/// tensors AdamW updates, in the order of their gradients and moments.
fn trained<T>(cfg: &TrainConfig, items: impl IntoIterator<Item = T>) -> impl Iterator<Item = T> {
    cfg.model
        .param_specs()
        .into_iter()
        .zip(items)
        .filter(|(s, _)| s.trained)
        .map(|(_, item)| item)
}

/// For each tensor of the state dict, whether it is trained.
fn trained_mask(cfg: &TrainConfig) -> Vec<bool> {
    cfg.model.param_specs().iter().map(|s| s.trained).collect()
}

/// A new run directory at `dir` for `cfg`, holding the run's lock, with the initial state and
/// an empty log: the arguments [`train`] starts from. The config is validated and its memory
/// estimate checked against the machine first, so nothing is written for a run that cannot
/// start.
pub fn new_run(cfg: &TrainConfig, dir: &std::path::Path) -> Result<(RunDir, TrainState, TrainLog)> {
    check_config(cfg)?;
    let mut recorded = cfg.clone();
    recorded.kernel = Some(cfg.training_kernel());
    let run = RunDir::create(dir, &serde_json::to_value(&recorded)?)?;
    Ok((run, TrainState::new(cfg), empty_log(cfg)))
}

/// The norm of all gradients together, from each tensor's gradient norm.
fn global_grad_norm(tensors: &[digitlab_snapshots::TensorStats]) -> f32 {
    let squares = tensors.iter().map(|t| f64::from(t.grad_norm).powi(2));
    squares.sum::<f64>().sqrt() as f32
}

/// The log of a run before its first batch: the trained digits and tensors, no rows.
fn empty_log(cfg: &TrainConfig) -> TrainLog {
    TrainLog {
        digits: cfg.task.targets.clone(),
        tensor_names: trained(cfg, cfg.model.param_specs())
            .map(|s| s.name)
            .collect(),
        rows: Vec::new(),
        test_loss: cfg.task.modp.is_some(),
    }
}

/// An existing run directory made ready to continue from its newest checkpoint (from batch 0
/// if it was stopped before its first), with the step count changed to `steps` if given: what
/// `train --resume` and [`train`] start from. The run is locked for this process; its config
/// is validated like one from the command line and checked against the checkpoint and the
/// log (the config hash each carries). The log is cut at the checkpoint and later snapshots
/// dropped; they are rewritten identically.
pub fn resume_run(
    dir: &std::path::Path,
    steps: Option<u64>,
) -> Result<(TrainConfig, RunDir, TrainState, TrainLog)> {
    let mut run = RunDir::open_locked(dir)?;
    let mut cfg = TrainConfig::from_run(&run)?;
    if let Some(steps) = steps {
        cfg.steps = steps;
    }
    check_config(&cfg)?;
    let (state, log) = match run.manifest().checkpoints.last().cloned() {
        Some(entry) => {
            if entry.batch > cfg.steps {
                bail!(
                    "the run already has a checkpoint at batch {}, beyond --steps {}: pass a \
                     larger --steps",
                    entry.batch,
                    cfg.steps
                );
            }
            let state = TrainState::from_checkpoint(&cfg, run.read_checkpoint(&entry)?)?;
            let mut log = run.read_train_log()?.with_context(|| {
                format!(
                    "{} is missing; cannot resume its log",
                    run.train_log_path().display()
                )
            })?;
            log.truncate(state.batch);
            if log.rows.len() as u64 != state.batch {
                bail!(
                    "{} has {} rows before batch {}, the newest checkpoint; it should have one \
                     per batch",
                    run.train_log_path().display(),
                    log.rows.len(),
                    state.batch
                );
            }
            (state, log)
        }
        // Stopped before its first checkpoint: batch 0 is a function of the config alone.
        None => (TrainState::new(&cfg), empty_log(&cfg)),
    };
    run.truncate_after(state.batch)?;
    run.set_config(&serde_json::to_value(&cfg)?)?;
    Ok((cfg, run, state, log))
}

/// The checks a new run passes before anything is written: the config is valid and its memory
/// estimate fits the machine (`train --check` runs exactly these).
pub fn check_config(cfg: &TrainConfig) -> Result<()> {
    cfg.validate()?;
    MemoryNeed::of_training(cfg)
        .check_machine("use a smaller --batch-size, --d-model, --d-mlp, --n-layers or --steps")
}

/// Trains from `state` to `cfg.steps`, writing snapshots, checkpoints and the log into `run`.
/// `log` holds the rows before `state.batch` (empty for a new run); the writer keeps it, and
/// each step's row goes to it with the next snapshot or checkpoint.
pub fn train(
    cfg: &TrainConfig,
    run: RunDir,
    mut state: TrainState,
    log: TrainLog,
    progress: bool,
) -> Result<()> {
    // Every snapshot's metadata, with its batch; the run directory adds the config hash.
    let snapshot_metadata = |batch: u64| {
        BTreeMap::from([
            ("format".to_string(), "digitlab-snapshot-v1".to_string()),
            ("digitlab_version".to_string(), cfg.digitlab_version.clone()),
            ("batch".to_string(), batch.to_string()),
        ])
    };
    // Weights and both moments, as if every tensor were trained.
    let checkpoint_bytes = 3 * 4 * state.params.iter().map(|p| p.data.len()).sum::<usize>();
    let mut writer = RunWriter::spawn(run, log, checkpoint_bytes);
    let mut rows = Vec::new();
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
        let snapshot = b.is_multiple_of(cfg.snapshot_every) || last;
        let checkpoint = b.is_multiple_of(cfg.checkpoint_every) || last;
        if snapshot || checkpoint {
            writer.send(WriteJob::LogRows(std::mem::take(&mut rows)))?;
        }
        if snapshot {
            writer.send(WriteJob::File(NewFile::Snapshot {
                batch: b,
                tensors: state.params.clone(),
                metadata: snapshot_metadata(b),
            }))?;
        }
        if checkpoint {
            writer.send(WriteJob::File(NewFile::Checkpoint(
                state.to_checkpoint(cfg),
            )))?;
        }
        if last {
            break;
        }
        let row = state.step(cfg)?;
        let loss = row.loss;
        rows.push(row);
        if !loss.is_finite() {
            writer.send(WriteJob::LogRows(rows))?;
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
