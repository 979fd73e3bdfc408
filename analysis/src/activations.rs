//! What the analyses read from a model on an eval set (or any tokens): the logits at a
//! predicting position, and the MLP activations there, computed in chunks to bound memory.

use anyhow::Result;
use candle_core::{Device, Tensor};
use digitlab::config::TrainConfig;
use digitlab::model::{HookPoint, Hooks, Transformer};

use crate::eval_set::EvalSet;

/// Examples per forward pass: the general path holds `[chunk, pos, d_mlp]` activations.
const CHUNK: usize = 2000;

/// Logits of `set.digit` for every example, `[example][output]` row-major. Uses the
/// last-position path where training did (the same function, tested to 1e-5).
pub fn digit_logits(cfg: &TrainConfig, model: &Transformer, set: &EvalSet) -> Result<Vec<f32>> {
    let position = cfg.task.predicting_position(set.digit);
    logits_at(cfg, model, &set.batch.tokens, position)
}

/// Logits at `position` of every example of `tokens` (`[example][pos]`), `[example][output]`.
pub fn logits_at(
    cfg: &TrainConfig,
    model: &Transformer,
    tokens: &[u32],
    position: usize,
) -> Result<Vec<f32>> {
    let fast = cfg.uses_last_position_path() && position + 1 == cfg.task.n_ctx();
    chunked(cfg, tokens, |tokens| {
        let logits = if fast {
            model.last_position_logits(tokens)?
        } else {
            model.logits_at(tokens, &[position], &mut Hooks::none())?
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
        model.logits_at(tokens, &[position], &mut hooks)?;
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
