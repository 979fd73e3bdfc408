//! The fused training step: forward and hand-derived backward of a one-layer model over
//! preallocated buffers, with matrix products through the `gemm` crate.
//!
//! Same function and gradients as candle's autograd over [`crate::model::Transformer`] (a
//! test holds them to 1e-5), with the algebra of the last-position path: in a one-layer model
//! the residual stream before attention is `W_E[token] + W_pos[pos]`, so keys and values come
//! from per-token and per-position tables (`d_vocab + n_ctx` rows a step, not `batch *
//! n_ctx`), and the query, attention output, MLP and unembedding are computed only at the
//! positions that feed the loss: the `=` position in the prompt layout, the predicting
//! position of every trained digit in the answer layout, each attending causally to its own
//! prefix. The prompt layout is the case of one query position. Attention is a few dense
//! products against every table row, or, when the table has many more rows than a prefix has
//! positions (modular addition), loops over each query's prefix
//! ([`buffers::Shapes::attention_per_row`]). Where a head is much wider than the table is long,
//! the attention output is taken through the table too: each value-table row times `W_O`, once
//! a step, then the attention weights times those OV rows (the kernel `fusedov`,
//! [`buffers::Shapes::output_tables`]). Written by hand rather than through candle
//! because at these sizes a step is dominated by what a general graph costs around the
//! arithmetic (building the graph, allocating and zeroing every intermediate, copying
//! gradients out), not by the arithmetic itself.
//!
//! Buffers live in a thread-local [`FusedStep`], built on the first step of a config and
//! reused by every later one.

mod aligned;
mod backward;
mod buffers;
mod denormals;
mod forward;
mod gemm;
pub mod kernel;

use std::cell::RefCell;

use anyhow::{bail, Result};
use digitlab_snapshots::NamedTensor;

use crate::config::TrainConfig;
use crate::step::StepResult;
use crate::task::Batch;
use buffers::{Buffers, Shapes};

pub use kernel::{Kernel, Simd, StepKind};

/// The state-dict order of a one-layer model (`ModelConfig::param_specs`), without the
/// `blocks.0.` of the block tensors.
const STATE_DICT: [&str; 16] = [
    "embed.W_E",
    "pos_embed.W_pos",
    "attn.W_Q",
    "attn.W_K",
    "attn.W_V",
    "attn.W_O",
    "attn.b_Q",
    "attn.b_K",
    "attn.b_V",
    "attn.b_O",
    "mlp.W_in",
    "mlp.b_in",
    "mlp.W_out",
    "mlp.b_out",
    "unembed.W_U",
    "unembed.b_U",
];

/// Trained tensors, in the order the gradients are returned.
const TRAINED: [&str; 11] = [
    "embed.W_E",
    "pos_embed.W_pos",
    "attn.W_Q",
    "attn.W_K",
    "attn.W_V",
    "attn.W_O",
    "mlp.W_in",
    "mlp.b_in",
    "mlp.W_out",
    "mlp.b_out",
    "unembed.W_U",
];

/// The weights a step reads, each a flat slice in its TransformerLens layout.
pub struct Weights<'a> {
    pub w_e: &'a [f32],
    pub w_pos: &'a [f32],
    pub w_q: &'a [f32],
    pub w_k: &'a [f32],
    pub w_v: &'a [f32],
    pub w_o: &'a [f32],
    pub b_q: &'a [f32],
    pub b_k: &'a [f32],
    pub b_v: &'a [f32],
    pub b_o: &'a [f32],
    pub w_in: &'a [f32],
    pub b_in: &'a [f32],
    pub w_out: &'a [f32],
    pub b_out: &'a [f32],
    pub w_u: &'a [f32],
    pub b_u: &'a [f32],
}

impl<'a> Weights<'a> {
    /// The state dict `params` (checked against the one-layer order when the step was built).
    fn of(params: &'a [NamedTensor]) -> Weights<'a> {
        let [w_e, w_pos, w_q, w_k, w_v, w_o, b_q, b_k, b_v, b_o, w_in, b_in, w_out, b_out, w_u, b_u] =
            std::array::from_fn(|i| params[i].data.as_slice());
        Weights {
            w_e,
            w_pos,
            w_q,
            w_k,
            w_v,
            w_o,
            b_q,
            b_k,
            b_v,
            b_o,
            w_in,
            b_in,
            w_out,
            b_out,
            w_u,
            b_u,
        }
    }
}

/// The buffers of one config's fused step.
pub struct FusedStep {
    shapes: Shapes,
    buffers: Buffers,
}

impl FusedStep {
    /// Buffers for `cfg` and batches of `batch_size` examples, with flush-to-zero set on this
    /// thread's pool (see [`denormals`]); fails if the fused step does not apply to `cfg`.
    pub fn new(cfg: &TrainConfig, batch_size: usize) -> Result<FusedStep> {
        if !cfg.fused_step_applies() {
            bail!("the fused step needs a one-layer model");
        }
        let specs = cfg.model.param_specs();
        let short = |name: &str| name.strip_prefix("blocks.0.").unwrap_or(name).to_string();
        let names: Vec<String> = specs.iter().map(|s| short(&s.name)).collect();
        let trained: Vec<String> = specs
            .iter()
            .filter(|s| s.trained)
            .map(|s| short(&s.name))
            .collect();
        assert!(
            names == STATE_DICT && trained == TRAINED,
            "the fused step's tensor order no longer matches ModelConfig::param_specs"
        );
        let grad_sizes: Vec<usize> = specs
            .iter()
            .filter(|s| s.trained)
            .map(|s| s.shape.iter().product())
            .collect();
        let shapes = Shapes::of(cfg, batch_size);
        denormals::flush_to_zero_on_this_pool();
        Ok(FusedStep {
            buffers: Buffers::new(&shapes, &grad_sizes),
            shapes,
        })
    }

    /// Bytes of the buffers of `cfg`'s step on batches of `batch_size`: one batch's
    /// activations, their gradients and the gradients of the `trained` trained floats.
    /// Counted from the shapes (in f64), so a run's memory can be estimated before anything
    /// is allocated.
    pub fn buffer_bytes(cfg: &TrainConfig, batch_size: usize, trained: f64) -> f64 {
        Shapes::of(cfg, batch_size).buffer_bytes(trained)
    }

    /// Forward and backward on `batch` with the weights `params` (all tensors, state-dict
    /// order): loss, logits, targets and gradients of the trained tensors. The batch carries
    /// its targets (for either task), and the shapes were fixed by the config at `new`.
    pub fn run(&mut self, params: &[NamedTensor], batch: &Batch) -> &StepResult {
        let buf = &mut self.buffers;
        buf.result.targets.clone_from(&batch.targets);
        let weights = Weights::of(params);
        forward::forward(&self.shapes, &weights, &batch.tokens, buf);
        backward::backward(&self.shapes, &weights, &batch.tokens, buf);
        &buf.result
    }
}

/// Whether a new run of `cfg` takes the attention output through the table rows' OV products
/// ([`buffers::Shapes::output_tables_are_cheaper`], at the config's batch size).
pub fn output_tables_are_cheaper(cfg: &TrainConfig) -> bool {
    Shapes::sizes(cfg, cfg.batch_size).output_tables_are_cheaper()
}

thread_local! {
    /// The step of the config trained last on this thread (a training loop trains one).
    static CACHE: RefCell<Option<(TrainConfig, FusedStep)>> = const { RefCell::new(None) };
}

/// This thread's [`FusedStep`] for a config, taken out of the cache and put back when dropped,
/// so that its buffers serve every step of a training loop.
pub struct CachedStep {
    entry: Option<(TrainConfig, FusedStep)>,
}

impl CachedStep {
    /// The cached step if it was built for `cfg` and batches of `batch_size`, else a new one.
    pub fn take(cfg: &TrainConfig, batch_size: usize) -> Result<CachedStep> {
        let cached = CACHE.take().filter(|(c, step)| {
            // The fields the step's shapes and kernel are chosen from, compared in place
            // (choosing the kernel of an unrecorded config counts its products).
            c.model == cfg.model
                && c.task == cfg.task
                && c.kernel == cfg.kernel
                && c.batch_size == cfg.batch_size
                && step.shapes.batch == batch_size
        });
        let entry = match cached {
            Some(entry) => entry,
            None => (cfg.clone(), FusedStep::new(cfg, batch_size)?),
        };
        Ok(CachedStep { entry: Some(entry) })
    }

    /// [`FusedStep::run`].
    pub fn run(&mut self, params: &[NamedTensor], batch: &Batch) -> &StepResult {
        let (_, step) = self.entry.as_mut().expect("present until dropped");
        step.run(params, batch)
    }
}

impl Drop for CachedStep {
    fn drop(&mut self) {
        CACHE.set(self.entry.take());
    }
}

/// One fused step on this thread's cached buffers, returning an owned copy of the result (for
/// callers that keep the gradients).
pub fn loss_and_grads(
    cfg: &TrainConfig,
    params: &[NamedTensor],
    batch: &Batch,
) -> Result<StepResult> {
    let mut step = CachedStep::take(cfg, batch.examples)?;
    let r = step.run(params, batch);
    Ok(StepResult {
        loss: r.loss,
        logits: r.logits.clone(),
        targets: r.targets.clone(),
        grads: r.grads.clone(),
        stats: r.stats.clone(),
    })
}
