//! The transformer of docs/metrics.md, 'The model': one struct per module with `new(vb)` and `forward`, as in
//! candle-transformers, with TransformerLens parameter and hook names.
//!
//! [`Transformer::forward`] is the general path: every position, any number of layers, hooks
//! at every activation. [`Transformer::last_position_logits`] (in `last_position.rs`) is the fast
//! training path for one-layer prompt-layout models; a test holds the two to the same function.

mod config;
mod hook_point;
mod hooks;
mod last_position;

pub use config::{ModelConfig, ParamGroup, ParamSpec};
pub use hook_point::HookPoint;
pub use hooks::{Hooks, Intervention};

use std::collections::{HashMap, HashSet};

use candle_core::{DType, Device, Result, Tensor, D};
use candle_nn::VarBuilder;
use digitlab_snapshots::NamedTensor;

/// Multi-head causal self-attention, TransformerLens layout (`W_Q: [n_heads, d_model, d_head]`).
pub struct Attention {
    w_q: Tensor,
    w_k: Tensor,
    w_v: Tensor,
    w_o: Tensor,
    b_q: Tensor,
    b_k: Tensor,
    b_v: Tensor,
    b_o: Tensor,
    layer: usize,
}

impl Attention {
    pub fn new(cfg: &ModelConfig, vb: VarBuilder, layer: usize) -> Result<Self> {
        let (d, h, dh) = (cfg.d_model, cfg.n_heads, cfg.d_head());
        Ok(Self {
            w_q: vb.get((h, d, dh), "W_Q")?,
            w_k: vb.get((h, d, dh), "W_K")?,
            w_v: vb.get((h, d, dh), "W_V")?,
            w_o: vb.get((h, dh, d), "W_O")?,
            b_q: vb.get((h, dh), "b_Q")?,
            b_k: vb.get((h, dh), "b_K")?,
            b_v: vb.get((h, dh), "b_V")?,
            b_o: vb.get(d, "b_O")?,
            layer,
        })
    }

    /// `x: [batch, pos, d_model]` -> attention output `[batch, pos, d_model]`.
    ///
    /// Projections are single matrix products over all heads (`[d_model, head * d_head]`)
    /// rather than broadcast products per head: their gradients are then plain products too,
    /// not broadcast sums over the batch (measured: those sums were 40% of an answer-layout
    /// step).
    pub fn forward(&self, x: &Tensor, hooks: &mut Hooks) -> Result<Tensor> {
        let (batch, t, d) = x.dims3()?;
        let (h, dh) = (self.w_q.dim(0)?, self.w_q.dim(2)?);
        // [batch, pos, head, d_head], TransformerLens's layout for hook_q/k/v.
        let project = |w: &Tensor, b: &Tensor| {
            let w = w.transpose(0, 1)?.reshape((d, h * dh))?;
            rows_matmul(x, &w)?
                .broadcast_add(&b.flatten_all()?)?
                .reshape((batch, t, h, dh))
        };
        let q = hooks.apply(
            &HookPoint::Q(self.layer).name(),
            project(&self.w_q, &self.b_q)?,
        )?;
        let k = hooks.apply(
            &HookPoint::K(self.layer).name(),
            project(&self.w_k, &self.b_k)?,
        )?;
        let v = hooks.apply(
            &HookPoint::V(self.layer).name(),
            project(&self.w_v, &self.b_v)?,
        )?;
        let heads_first = |x: Tensor| x.transpose(1, 2)?.contiguous(); // [batch, head, pos, d_head]
        let (q, k, v) = (heads_first(q)?, heads_first(k)?, heads_first(v)?);
        let scores = (q.matmul(&k.t()?)? / (dh as f64).sqrt())?;
        let scores = scores.broadcast_add(&causal_mask(t, scores.device())?)?;
        let scores = hooks.apply(&HookPoint::AttnScores(self.layer).name(), scores)?;
        let pattern = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let pattern = hooks.apply(&HookPoint::Pattern(self.layer).name(), pattern)?;
        let z = pattern.matmul(&v)?.transpose(1, 2)?.contiguous()?; // [batch, pos, head, d_head]
        let z = hooks.apply(&HookPoint::Z(self.layer).name(), z)?;
        // Sum over heads of z_h W_O[h]: one product with W_O as [head * d_head, d_model].
        let out = rows_matmul(
            &z.reshape((batch, t, h * dh))?,
            &self.w_o.reshape((h * dh, d))?,
        )?;
        out.broadcast_add(&self.b_o)
    }
}

/// `x: [..., k] @ w: [k, n]` as one 2-D product over all leading dimensions.
fn rows_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let dims = x.dims();
    let k = dims[dims.len() - 1];
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().expect("rank >= 1") = w.dim(1)?;
    x.reshape(((), k))?.matmul(w)?.reshape(out_dims)
}

/// `[pos, pos]` additive mask: 0 where a query may attend (key position <= query), -inf above.
fn causal_mask(t: usize, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j <= i { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    Tensor::from_vec(mask, (t, t), device)
}

/// The ReLU MLP.
pub struct Mlp {
    w_in: Tensor,
    b_in: Tensor,
    w_out: Tensor,
    b_out: Tensor,
    layer: usize,
}

impl Mlp {
    pub fn new(cfg: &ModelConfig, vb: VarBuilder, layer: usize) -> Result<Self> {
        let (d, m) = (cfg.d_model, cfg.d_mlp);
        Ok(Self {
            w_in: vb.get((d, m), "W_in")?,
            b_in: vb.get(m, "b_in")?,
            w_out: vb.get((m, d), "W_out")?,
            b_out: vb.get(d, "b_out")?,
            layer,
        })
    }

    /// `x: [..., d_model]` -> `[..., d_model]`.
    pub fn forward(&self, x: &Tensor, hooks: &mut Hooks) -> Result<Tensor> {
        let pre = rows_matmul(x, &self.w_in)?.broadcast_add(&self.b_in)?;
        let pre = hooks.apply(&HookPoint::MlpPre(self.layer).name(), pre)?;
        let post = hooks.apply(&HookPoint::MlpPost(self.layer).name(), pre.relu()?)?;
        rows_matmul(&post, &self.w_out)?.broadcast_add(&self.b_out)
    }
}

/// Attention then MLP, each added to the residual stream (no LayerNorm).
pub struct Block {
    attn: Attention,
    mlp: Mlp,
    layer: usize,
}

impl Block {
    pub fn new(cfg: &ModelConfig, vb: VarBuilder, layer: usize) -> Result<Self> {
        Ok(Self {
            attn: Attention::new(cfg, vb.pp("attn"), layer)?,
            mlp: Mlp::new(cfg, vb.pp("mlp"), layer)?,
            layer,
        })
    }

    pub fn forward(&self, resid_pre: &Tensor, hooks: &mut Hooks) -> Result<Tensor> {
        let l = self.layer;
        let resid_pre = hooks.apply(&HookPoint::ResidPre(l).name(), resid_pre.clone())?;
        let attn_out = self.attn.forward(&resid_pre, hooks)?;
        let attn_out = hooks.apply(&HookPoint::AttnOut(l).name(), attn_out)?;
        let resid_mid = hooks.apply(&HookPoint::ResidMid(l).name(), (resid_pre + attn_out)?)?;
        let mlp_out = self.mlp.forward(&resid_mid, hooks)?;
        let mlp_out = hooks.apply(&HookPoint::MlpOut(l).name(), mlp_out)?;
        hooks.apply(&HookPoint::ResidPost(l).name(), (resid_mid + mlp_out)?)
    }
}

/// The whole model.
pub struct Transformer {
    cfg: ModelConfig,
    w_e: Tensor,
    w_pos: Tensor,
    blocks: Vec<Block>,
    w_u: Tensor,
    b_u: Tensor,
    /// The names [`Hooks`] may use with this model.
    hook_names: HashSet<String>,
}

impl Transformer {
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let blocks = (0..cfg.n_layers)
            .map(|l| Block::new(cfg, vb.pp("blocks").pp(l), l))
            .collect::<Result<_>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            w_e: vb.get((cfg.d_vocab, cfg.d_model), "embed.W_E")?,
            w_pos: vb.get((cfg.n_ctx, cfg.d_model), "pos_embed.W_pos")?,
            blocks,
            w_u: vb.get((cfg.d_model, cfg.d_vocab_out), "unembed.W_U")?,
            b_u: vb.get(cfg.d_vocab_out, "unembed.b_U")?,
            hook_names: cfg.hook_points().into_iter().map(HookPoint::name).collect(),
        })
    }

    /// A model over the given state dict (snapshot tensors), on `device`.
    pub fn from_params(cfg: &ModelConfig, params: &[NamedTensor], device: &Device) -> Result<Self> {
        let tensors = params
            .iter()
            .map(|p| {
                Ok((
                    p.name.clone(),
                    Tensor::from_slice(&p.data, p.shape.as_slice(), device)?,
                ))
            })
            .collect::<Result<HashMap<_, _>>>()?;
        Self::new(cfg, VarBuilder::from_tensors(tensors, DType::F32, device))
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The general forward pass: `tokens: [batch, pos]` (u32) -> logits `[batch, pos, d_vocab_out]`.
    pub fn forward(&self, tokens: &Tensor, hooks: &mut Hooks) -> Result<Tensor> {
        let resid = self.residual_stream(tokens, hooks)?;
        self.unembed(&resid)
    }

    /// Logits at the given positions only: `[batch, positions.len(), d_vocab_out]`.
    pub fn logits_at(
        &self,
        tokens: &Tensor,
        positions: &[usize],
        hooks: &mut Hooks,
    ) -> Result<Tensor> {
        let resid = self.residual_stream(tokens, hooks)?;
        let index = Tensor::from_vec(
            positions.iter().map(|&p| p as u32).collect::<Vec<_>>(),
            positions.len(),
            tokens.device(),
        )?;
        self.unembed(&resid.index_select(&index, 1)?)
    }

    /// The final residual stream `[batch, pos, d_model]`; an error if `hooks` names a hook
    /// point the model does not have.
    fn residual_stream(&self, tokens: &Tensor, hooks: &mut Hooks) -> Result<Tensor> {
        hooks.check(&self.hook_names)?;
        let (batch, t) = tokens.dims2()?;
        let embed = self
            .w_e
            .index_select(&tokens.flatten_all()?, 0)?
            .reshape((batch, t, ()))?;
        let embed = hooks.apply(&HookPoint::Embed.name(), embed)?;
        let pos_embed = hooks.apply(
            &HookPoint::PosEmbed.name(),
            self.w_pos.narrow(0, 0, t)?.unsqueeze(0)?,
        )?;
        let mut resid = embed.broadcast_add(&pos_embed)?;
        for block in &self.blocks {
            resid = block.forward(&resid, hooks)?;
        }
        Ok(resid)
    }

    fn unembed(&self, resid: &Tensor) -> Result<Tensor> {
        rows_matmul(resid, &self.w_u)?.broadcast_add(&self.b_u)
    }
}
