//! The shapes of one fused step and the buffers it works in, allocated once per config and
//! reused by every step (the steady state allocates nothing for activations or gradients).

use crate::config::TrainConfig;
use crate::step::StepResult;

/// Sizes of one step, in the names of docs/metrics.md, 'The model'.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shapes {
    pub batch: usize,
    /// Sequence length (`n_ctx`).
    pub pos: usize,
    /// The query positions: the predicting position of every trained digit, in the order of
    /// the targets (one, the `=` position, in the prompt layout). Each attends causally to its
    /// own prefix.
    pub queries: Vec<usize>,
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
            queries: cfg
                .task
                .targets
                .iter()
                .map(|&k| cfg.task.predicting_position(k))
                .collect(),
            d_vocab: m.d_vocab,
            d_model: m.d_model,
            n_heads: m.n_heads,
            d_head: m.d_head(),
            d_mlp: m.d_mlp,
            d_vocab_out: m.d_vocab_out,
        }
    }

    /// Query rows of a step, `[example, query]`: every per-query activation has this many rows.
    pub fn rows(&self) -> usize {
        self.batch * self.queries.len()
    }

    /// The example and query position of query row `row`.
    pub fn query_of(&self, row: usize) -> (usize, usize) {
        let n = self.queries.len();
        (row / n, self.queries[row % n])
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

/// Rows of one block of the attention loops: blocks run in parallel, each accumulating its
/// rows' share of the table gradients into its own partial tables, which are then added in
/// block order. Fixed by position, not by thread count, so the sums (and the bytes of a run)
/// do not depend on the number of threads.
pub const BLOCK_ROWS: usize = 256;

/// Activations of the forward pass and their gradients. `row` is a query row (example, query
/// position; see [`Shapes::rows`]).
pub struct Buffers {
    /// `W_E` rows then `W_pos` rows, `[table row, d_model]`: what queries, keys and values are
    /// read from.
    pub table_in: Vec<f32>,
    /// Query, key and value tables, `[table row, head * d_head]`, biases on the token rows;
    /// the query table is scaled by `1 / sqrt(d_head)`. A query (key, value) is the sum of its
    /// token's row and its position's row.
    pub query_table: Vec<f32>,
    pub key_table: Vec<f32>,
    pub value_table: Vec<f32>,
    /// Scaled queries, `[row, head * d_head]`.
    pub q: Vec<f32>,
    /// Attention pattern at the query positions, `[row, head, pos]`, zero past the query.
    pub pattern: Vec<f32>,
    /// Attention result before W_O, `[row, head * d_head]`.
    pub z: Vec<f32>,
    pub resid_mid: Vec<f32>,
    /// MLP pre-activation, `[row, d_mlp]`.
    pub pre: Vec<f32>,
    /// MLP post-activation, then (backward) the gradient of its pre-activation.
    pub post: Vec<f32>,
    pub resid_post: Vec<f32>,
    /// Each row's cross-entropy, summed in row order into the loss.
    pub row_loss: Vec<f64>,
    /// Gradient of the loss with respect to the logits, `[row, d_vocab_out]`.
    pub d_logits: Vec<f32>,
    pub d_resid_post: Vec<f32>,
    pub d_resid_mid: Vec<f32>,
    pub d_z: Vec<f32>,
    /// Gradient of the attention scores, `[row, head, pos]`.
    pub d_scores: Vec<f32>,
    /// Gradient of the scaled queries, `[row, head * d_head]`.
    pub d_q: Vec<f32>,
    /// Per block of [`BLOCK_ROWS`] rows, its partial gradients of the query, key and value
    /// tables, `[block, 3, table row, head * d_head]`.
    pub d_table_partials: Vec<f32>,
    pub d_query_table: Vec<f32>,
    pub d_key_table: Vec<f32>,
    pub d_value_table: Vec<f32>,
    pub d_table_in: Vec<f32>,
    /// Loss, logits `[row, d_vocab_out]`, targets and gradients, as the training loop reads
    /// them.
    pub result: StepResult,
}

impl Buffers {
    /// Bytes of every buffer (activations, their gradients, logits, targets and the weights'
    /// gradients).
    pub fn bytes(&self) -> usize {
        let activations = [
            &self.table_in,
            &self.query_table,
            &self.key_table,
            &self.value_table,
            &self.q,
            &self.pattern,
            &self.z,
            &self.resid_mid,
            &self.pre,
            &self.post,
            &self.resid_post,
            &self.d_logits,
            &self.d_resid_post,
            &self.d_resid_mid,
            &self.d_z,
            &self.d_scores,
            &self.d_q,
            &self.d_table_partials,
            &self.d_query_table,
            &self.d_key_table,
            &self.d_value_table,
            &self.d_table_in,
            &self.result.logits,
        ];
        let floats: usize = activations.iter().map(|v| v.len()).sum::<usize>()
            + self.result.grads.iter().map(Vec::len).sum::<usize>();
        4 * (floats + self.result.targets.len()) + 8 * self.row_loss.len()
    }

    /// Zeroed buffers for `s`; `grad_sizes` in the trained-tensor order of the config.
    pub fn new(s: &Shapes, grad_sizes: &[usize]) -> Buffers {
        let z = |n: usize| vec![0f32; n];
        let (b, d, r, m, qkv) = (s.rows(), s.d_model, s.table_rows(), s.d_mlp, s.qkv());
        let per_pos = b * s.n_heads * s.pos;
        Buffers {
            table_in: z(r * d),
            query_table: z(r * qkv),
            key_table: z(r * qkv),
            value_table: z(r * qkv),
            q: z(b * qkv),
            pattern: z(per_pos),
            z: z(b * qkv),
            resid_mid: z(b * d),
            pre: z(b * m),
            post: z(b * m),
            resid_post: z(b * d),
            row_loss: vec![0.0; b],
            d_logits: z(b * s.d_vocab_out),
            d_resid_post: z(b * d),
            d_resid_mid: z(b * d),
            d_z: z(b * qkv),
            d_scores: z(per_pos),
            d_q: z(b * qkv),
            d_table_partials: z(b.div_ceil(BLOCK_ROWS) * 3 * r * qkv),
            d_query_table: z(r * qkv),
            d_key_table: z(r * qkv),
            d_value_table: z(r * qkv),
            d_table_in: z(r * d),
            result: StepResult {
                loss: 0.0,
                logits: z(b * s.d_vocab_out),
                targets: vec![0; b],
                grads: grad_sizes.iter().map(|&n| z(n)).collect(),
            },
        }
    }
}
