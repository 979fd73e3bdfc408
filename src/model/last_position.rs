//! The fast path: logits at the last position of a one-layer model, computed from per-token
//! and per-position tables instead of per-example activations.
//!
//! In the prompt layout only the `=` position feeds the loss, so queries, the attention output,
//! the MLP and the unembedding are needed there alone. In a one-layer model the residual stream
//! before attention is `W_E[token] + W_pos[pos]`, so every key, value and attention score is a
//! sum of a token table and a position table computed once per step (12 rows each), not once per
//! example and position. The value path folds W_V and W_O into `[head, token | position,
//! d_model]` tables, so the whole attention output is one matrix product of the attention
//! weights (per token and per position) with those tables. Same function as
//! [`Transformer::forward`] at the last position; a test holds them to 1e-5 (logits and
//! gradients).

use candle_core::{bail, Result, Tensor, D};

use super::Transformer;

impl Transformer {
    /// Logits at the last position: `tokens: [batch, pos]` (u32) -> `[batch, d_vocab_out]`.
    /// One-layer models only (the tables are exact only when attention reads the embeddings).
    pub fn last_position_logits(&self, tokens: &Tensor) -> Result<Tensor> {
        let [block] = self.blocks.as_slice() else {
            bail!("the last-position path needs a one-layer model")
        };
        let attn = &block.attn;
        let (batch, t) = tokens.dims2()?;
        let (h, dh) = (self.cfg.n_heads, self.cfg.d_head());
        let d = self.cfg.d_model;
        let v = self.cfg.d_vocab;
        let w_pos = self.w_pos.narrow(0, 0, t)?;
        // [d_model, head * d_head], so one product serves every head.
        let flat = |w: &Tensor| w.transpose(0, 1)?.reshape((d, h * dh));
        let (w_q, w_k, w_v) = (flat(&attn.w_q)?, flat(&attn.w_k)?, flat(&attn.w_v)?);

        // Query at the last position, scaled: [head, batch, d_head].
        let last_token = tokens.narrow(1, t - 1, 1)?.squeeze(1)?.contiguous()?;
        let x_last = self
            .w_e
            .index_select(&last_token, 0)?
            .broadcast_add(&w_pos.get(t - 1)?)?;
        let q = x_last
            .matmul(&w_q)?
            .broadcast_add(&attn.b_q.flatten_all()?)?;
        let q = (q.reshape((batch, h, dh))?.transpose(0, 1)? / (dh as f64).sqrt())?;

        // Scores = q . (token key + position key); b_K rides on the token table.
        let heads_last = |x: Tensor, rows: usize| x.reshape((rows, h, dh))?.permute((1, 2, 0));
        let key_token = heads_last(
            self.w_e
                .matmul(&w_k)?
                .broadcast_add(&attn.b_k.flatten_all()?)?,
            v,
        )?;
        let key_pos = heads_last(w_pos.matmul(&w_k)?, t)?;
        let score_token = q
            .matmul(&key_token.contiguous()?)?
            .transpose(0, 1)?
            .contiguous()?; // [batch, head, vocab]
        let score_pos = q.matmul(&key_pos.contiguous()?)?.transpose(0, 1)?; // [batch, head, pos]
        let token_index = tokens
            .unsqueeze(1)?
            .broadcast_as((batch, h, t))?
            .contiguous()?;
        let scores = (score_token.gather(&token_index, 2)? + score_pos)?;
        let pattern = candle_nn::ops::softmax(&scores, D::Minus1)?; // [batch, head, pos]

        // Attention mass per token id: [batch, head, vocab], summed into a flat vector at
        // (example * heads + head) * vocab + token. Not `scatter_add` on [batch, head, vocab]:
        // candle's backward of it fails unless n_ctx equals d_vocab (n = 5 in the prompt layout);
        // a one-hot batched matmul works but costs up to half a step at d_model 16.
        let offsets = Tensor::arange_step(0u32, (batch * h * v) as u32, v as u32, tokens.device())?
            .reshape((batch, h, 1))?;
        let flat_index = token_index.broadcast_add(&offsets)?.flatten_all()?;
        let token_weight = Tensor::zeros(batch * h * v, pattern.dtype(), pattern.device())?
            .index_add(&flat_index, &pattern.flatten_all()?, 0)?
            .reshape((batch, h, v))?;
        // OV tables [head, rows, d_model]; b_V rides on the token table (token weights sum to 1).
        let ov = |x: Tensor, rows: usize| {
            x.reshape((rows, h, dh))?
                .transpose(0, 1)?
                .contiguous()?
                .matmul(&attn.w_o)
        };
        let ov_token = ov(
            self.w_e
                .matmul(&w_v)?
                .broadcast_add(&attn.b_v.flatten_all()?)?,
            v,
        )?;
        let ov_pos = ov(w_pos.matmul(&w_v)?, t)?;
        let weights = Tensor::cat(
            &[
                token_weight.reshape((batch, h * v))?,
                pattern.reshape((batch, h * t))?,
            ],
            1,
        )?;
        let table = Tensor::cat(
            &[ov_token.reshape((h * v, d))?, ov_pos.reshape((h * t, d))?],
            0,
        )?;
        let attn_out = weights.matmul(&table)?.broadcast_add(&attn.b_o)?;

        let resid_mid = (x_last + attn_out)?;
        let mlp = &block.mlp;
        let post = resid_mid
            .matmul(&mlp.w_in)?
            .broadcast_add(&mlp.b_in)?
            .relu()?;
        let resid_post = (resid_mid + post.matmul(&mlp.w_out)?.broadcast_add(&mlp.b_out)?)?;
        resid_post.matmul(&self.w_u)?.broadcast_add(&self.b_u)
    }
}
