//! The shapes of one fused step and the buffers it works in, allocated once per config and
//! reused by every step (the steady state allocates nothing for activations or gradients).

use crate::config::TrainConfig;
use crate::step::StepResult;

/// Sizes of one step, in the names of docs/metrics.md, 'The model'.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shapes {
    pub batch: usize,
    /// Sequence length (`n_ctx`); the query is at position `pos - 1`.
    pub pos: usize,
    pub d_vocab: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub d_head: usize,
    pub d_mlp: usize,
    pub d_vocab_out: usize,
}

impl Shapes {
    pub fn of(cfg: &TrainConfig, batch: usize) -> Shapes {
        let m = &cfg.model;
        Shapes {
            batch,
            pos: cfg.task.n_ctx(),
            d_vocab: m.d_vocab,
            d_model: m.d_model,
            n_heads: m.n_heads,
            d_head: m.d_head(),
            d_mlp: m.d_mlp,
            d_vocab_out: m.d_vocab_out,
        }
    }

    /// Rows of the key and value tables: one per token id, then one per position.
    pub fn table_rows(&self) -> usize {
        self.d_vocab + self.pos
    }

    /// `n_heads * d_head`, the width of queries, keys, values and `z`.
    pub fn qkv(&self) -> usize {
        self.n_heads * self.d_head
    }
}

/// Activations of the forward pass and their gradients. Per-head score and weight matrices
/// are `[head, batch, table row]`, so each head's block is one contiguous matrix.
pub struct Buffers {
    /// The residual stream at the query position before attention, `[batch, d_model]`.
    pub x: Vec<f32>,
    /// `W_E` rows then `W_pos` rows, `[table row, d_model]`: what keys and values are read from.
    pub table_in: Vec<f32>,
    /// Scaled queries, `[batch, head * d_head]`.
    pub q: Vec<f32>,
    /// Key and value tables, `[table row, head * d_head]`, biases on the token rows.
    pub key_table: Vec<f32>,
    pub value_table: Vec<f32>,
    /// Query-key products with every table row, `[head, batch, table row]`.
    pub table_scores: Vec<f32>,
    /// Attention pattern at the query position, `[batch, head, pos]`.
    pub pattern: Vec<f32>,
    /// Attention mass per table row (token rows summed over the positions holding the token),
    /// `[head, batch, table row]`.
    pub table_weights: Vec<f32>,
    /// Attention result before W_O, `[batch, head * d_head]`.
    pub z: Vec<f32>,
    pub resid_mid: Vec<f32>,
    /// MLP pre-activation, then (backward) its gradient, `[batch, d_mlp]`.
    pub pre: Vec<f32>,
    pub post: Vec<f32>,
    pub resid_post: Vec<f32>,
    /// Gradient of the loss with respect to the logits, `[batch, d_vocab_out]`.
    pub d_logits: Vec<f32>,
    pub d_resid_post: Vec<f32>,
    pub d_resid_mid: Vec<f32>,
    pub d_z: Vec<f32>,
    pub d_table_weights: Vec<f32>,
    pub d_table_scores: Vec<f32>,
    pub d_q: Vec<f32>,
    pub d_key_table: Vec<f32>,
    pub d_value_table: Vec<f32>,
    pub d_table_in: Vec<f32>,
    /// Gradient of the residual stream at the query position, `[batch, d_model]`.
    pub d_x: Vec<f32>,
    /// Loss, logits `[batch, d_vocab_out]`, targets and gradients, as the training loop reads
    /// them.
    pub result: StepResult,
}

impl Buffers {
    /// Zeroed buffers for `s`; `grad_sizes` in the trained-tensor order of the config.
    pub fn new(s: &Shapes, grad_sizes: &[usize]) -> Buffers {
        let z = |n: usize| vec![0f32; n];
        let (b, d, r, m) = (s.batch, s.d_model, s.table_rows(), s.d_mlp);
        let per_head = s.n_heads * b * r;
        Buffers {
            x: z(b * d),
            table_in: z(r * d),
            q: z(b * s.qkv()),
            key_table: z(r * s.qkv()),
            value_table: z(r * s.qkv()),
            table_scores: z(per_head),
            pattern: z(b * s.n_heads * s.pos),
            table_weights: z(per_head),
            z: z(b * s.qkv()),
            resid_mid: z(b * d),
            pre: z(b * m),
            post: z(b * m),
            resid_post: z(b * d),
            d_logits: z(b * s.d_vocab_out),
            d_resid_post: z(b * d),
            d_resid_mid: z(b * d),
            d_z: z(b * s.qkv()),
            d_table_weights: z(per_head),
            d_table_scores: z(per_head),
            d_q: z(b * s.qkv()),
            d_key_table: z(r * s.qkv()),
            d_value_table: z(r * s.qkv()),
            d_table_in: z(r * d),
            d_x: z(b * d),
            result: StepResult {
                loss: 0.0,
                logits: z(b * s.d_vocab_out),
                targets: vec![0; b],
                grads: grad_sizes.iter().map(|&n| z(n)).collect(),
            },
        }
    }
}
