//! What the analyses read from a model on an eval set (or any tokens): the logits at a
//! predicting position, and the MLP activations there, computed in chunks to bound memory.
//!
//! Attention is causal, so what a position computes depends only on the tokens up to it: both
//! read the prefix that ends at the predicting position, never the answer tokens after it.

use anyhow::Result;
use candle_core::{Device, Tensor};
use digitlab::config::TrainConfig;
use digitlab::model::{HookPoint, Hooks, Transformer};

use crate::eval_set::EvalSet;

/// Examples per forward pass: the general path holds `[chunk, pos, d_mlp]` activations.
const CHUNK: usize = 2000;

/// Logits of `set.digit` for every example, `[example][output]` row-major.
pub fn digit_logits(cfg: &TrainConfig, model: &Transformer, set: &EvalSet) -> Result<Vec<f32>> {
    let position = cfg.task.predicting_position(set.digit);
    logits_at(cfg, model, &set.batch.tokens, position)
}

/// Logits at `position` of every example of `tokens` (`[example][pos]`), `[example][output]`.
/// A one-layer model takes the last-position path on the prefix (the same function, tested to
/// 1e-5), in either layout: the position is the last of its prefix.
pub fn logits_at(
    cfg: &TrainConfig,
    model: &Transformer,
    tokens: &[u32],
    position: usize,
) -> Result<Vec<f32>> {
    chunked(cfg, tokens, |tokens| {
        let prefix = tokens.narrow(1, 0, position + 1)?;
        let logits = if cfg.model.n_layers == 1 {
            model.last_position_logits(&prefix)?
        } else {
            model.logits_at(&prefix, &[position], &mut Hooks::none())?
        };
        Ok(logits.flatten_all()?.to_vec1::<f32>()?)
    })
}

/// MLP post-ReLU activations of the last block at the predicting position of `set.digit`,
/// `[example][neuron]` row-major.
pub fn mlp_post_at_prediction(
    cfg: &TrainConfig,
    model: &Transformer,
    set: &EvalSet,
) -> Result<Vec<f32>> {
    let position = cfg.task.predicting_position(set.digit);
    mlp_post_at(cfg, model, &set.batch.tokens, position)
}

/// MLP post-ReLU activations of the last block at `position` of every example of `tokens`,
/// `[example][neuron]` row-major.
pub fn mlp_post_at(
    cfg: &TrainConfig,
    model: &Transformer,
    tokens: &[u32],
    position: usize,
) -> Result<Vec<f32>> {
    let hook = HookPoint::MlpPost(cfg.model.n_layers - 1);
    chunked(cfg, tokens, |tokens| {
        let mut hooks = Hooks::none().cache(hook);
        model.logits_at(&tokens.narrow(1, 0, position + 1)?, &[position], &mut hooks)?;
        let post = hooks.cached(hook).expect("asked for"); // [batch, pos, d_mlp]
        Ok(post
            .narrow(1, position, 1)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    })
}

fn chunked(
    cfg: &TrainConfig,
    tokens: &[u32],
    mut f: impl FnMut(&Tensor) -> Result<Vec<f32>>,
) -> Result<Vec<f32>> {
    let n_ctx = cfg.task.n_ctx();
    let mut out = Vec::new();
    for rows in tokens.chunks(CHUNK * n_ctx) {
        let tokens = Tensor::from_slice(rows, (rows.len() / n_ctx, n_ctx), &Device::Cpu)?;
        out.extend(f(&tokens)?);
    }
    Ok(out)
}
