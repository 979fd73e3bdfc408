//! The shapes of one fused step and the buffers it works in, allocated once per config and
//! reused by every step (the steady state allocates nothing for activations or gradients).

use super::aligned::Floats;
use super::kernel::StepKind;
use crate::config::TrainConfig;
use crate::output_stats::RowStats;
use crate::step::StepResult;

/// Floats a parallel task of the step's row loops works on at least: about 10 µs of
/// element-wise work, so that a task outweighs handing it to another thread (a few µs), and a
/// small step (d_model 16: 128 rows of 16) runs its loops on one thread.
const TASK_FLOATS: usize = 1 << 14;

/// The least rows of a parallel task for a loop over rows that each work on about `floats`
/// floats (an exponential counts as several). Set by the shapes, never by the thread count.
pub fn rows_per_task(floats: usize) -> usize {
    (TASK_FLOATS / floats.max(1)).max(1)
}

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
    /// Whether the attention output goes through the table rows' OV products (the kernel
    /// `fusedov`, see [`Shapes::output_tables_are_cheaper`]); never with attention per row.
    pub output_tables: bool,
}

impl Shapes {
    /// The shapes of `cfg`'s step on batches of `batch` examples, with the attention output
    /// computed as the kernel the config trains with says.
    pub fn of(cfg: &TrainConfig, batch: usize) -> Shapes {
        let mut s = Shapes::sizes(cfg, batch);
        s.output_tables = cfg.training_kernel().step == StepKind::FusedOv && !s.attention_per_row();
        s
    }

    /// The sizes alone, with the attention output through `z`.
    pub fn sizes(cfg: &TrainConfig, batch: usize) -> Shapes {
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
            output_tables: false,
        }
    }

    /// Whether taking the attention output through the table rows costs at most half the
    /// multiply-adds of taking it through `z`. Through `z`, the step multiplies every query
    /// row's `z` by `W_O`: `rows * qkv * d_model` forward, twice that backward. Through the
    /// tables, it multiplies each head's value-table rows by its block of `W_O` once, then each
    /// row's attention weights by those OV rows: `(table_rows * qkv + rows * table_rows *
    /// n_heads) * d_model` forward, twice that backward. The second is cheaper when a head is
    /// much wider than the table is long: at d_model 512 with one head, batch 128 and 24 table
    /// rows it is 4.3x fewer; at d_model 128 with four heads it is more. Never with attention
    /// per row, which has no dense table weights. Counted in f64, so that an absurd config
    /// (refused later, with a message) cannot overflow here.
    pub fn output_tables_are_cheaper(&self) -> bool {
        let f = |n: usize| n as f64;
        let (b, r, h, qkv) = (
            f(self.batch) * f(self.queries.len()),
            f(self.table_rows()),
            f(self.n_heads),
            f(self.qkv()),
        );
        let through_z = b * qkv;
        let through_tables = r * qkv + b * r * h;
        !self.attention_per_row() && 2.0 * through_tables <= through_z
    }

    /// Query rows of a step, `[example, query]`: every per-query activation has this many rows.
    pub fn rows(&self) -> usize {
        self.batch * self.queries.len()
    }

    /// The query position of query row `row` and the tokens of its example up to it (the
    /// positions it attends to; its own token is the last), from the batch's `tokens`
    /// (`[example, pos]`).
    pub fn prefix<'t>(&self, tokens: &'t [u32], row: usize) -> (usize, &'t [u32]) {
        let (example, query) = match self.queries.as_slice() {
            // The prompt layout, without a division (tens of cycles, in every row loop).
            &[query] => (row, query),
            queries => (row / queries.len(), queries[row % queries.len()]),
        };
        (query, &tokens[example * self.pos..][..query + 1])
    }

    /// Rows of the key and value tables: one per token id, then one per position.
    pub fn table_rows(&self) -> usize {
        self.d_vocab + self.pos
    }

    /// Whether the query table is computed only for the rows some query reads
    /// ([`queried_rows`]). Finding them is a pass over the batch's rows, about 1.7 µs at batch
    /// 128 (2.6% of a d_model 16 step); the rows left out must save more: the full table's
    /// product is `table_rows * d_model * n_heads * d_head` multiply-adds, 6K at d_model 16,
    /// 98K at 64, 6.3M at 512.
    pub fn queries_of_queried_rows(&self) -> bool {
        // Saturating: the memory estimate builds shapes of absurd configs before refusing them.
        let product = self.table_rows().saturating_mul(self.d_model);
        product.saturating_mul(self.qkv()) >= 1 << 16
    }

    /// Rows of room for the queried rows and their queries: the table's, or none where the
    /// full query table is computed.
    pub fn queried_room(&self) -> usize {
        if self.queries_of_queried_rows() {
            self.table_rows()
        } else {
            0
        }
    }

    /// Whether attention runs row by row over each query's prefix rather than as dense
    /// products with every table row. A row attends to at most `pos` positions, each a token
    /// row plus a position row of the tables; the dense products touch all `table_rows`
    /// instead, but as matrix products, which run several times faster per multiply-add than
    /// the short loops over a prefix. Per row wins when the table has many more rows than a
    /// prefix has positions: a full-batch modular-addition epoch (117 rows, 3 positions) ran
    /// about 10% faster per row; an addition step at d_model 16 (26 rows, 12 positions) 1.35x
    /// slower.
    pub fn attention_per_row(&self) -> bool {
        self.table_rows() >= 8 * self.pos
    }

    /// `n_heads * d_head`, the width of queries, keys, values and `z`.
    pub fn qkv(&self) -> usize {
        self.n_heads * self.d_head
    }

    /// Bytes of the [`Buffers`] of these shapes with `trained` trained floats, counted from
    /// the shapes alone (what a run's memory estimate adds up before anything is allocated).
    /// In f64, so that an absurd config gives an absurd estimate rather than an overflow.
    pub fn buffer_bytes(&self, trained: f64) -> f64 {
        let f = |n: usize| n as f64;
        let (b, d, r, m, qkv) = (
            f(self.batch) * f(self.queries.len()),
            f(self.d_model),
            f(self.table_rows()),
            f(self.d_mlp),
            f(self.qkv()),
        );
        let (h, t, o) = (f(self.n_heads), f(self.pos), f(self.d_vocab_out));
        // table_in and its gradient; the query, key and value tables and their gradients; the
        // queried rows and their queries.
        let queried = f(self.queried_room());
        let tables = 2.0 * r * d + 6.0 * r * qkv + queried * (d + qkv);
        let (per_head, per_position) = if self.attention_per_row() {
            (0.0, 2.0 * h * b * t)
        } else {
            (4.0 * h * b * r, h * b * t)
        };
        // z and its gradient per row, or the OV rows and theirs per head and table row.
        let output = if self.output_tables {
            2.0 * h * r * d
        } else {
            2.0 * b * qkv
        };
        let rows = b * (2.0 * qkv + 4.0 * d + 3.0 * m + 2.0 * o) + output;
        // f32 floats, the u32 targets, the f64 row losses and the rows' output statistics.
        let row_stats = f(std::mem::size_of::<RowStats>());
        4.0 * (tables + per_head + per_position + rows + trained + b)
            + (8.0 + row_stats) * b
            + f(std::mem::size_of::<usize>()) * queried
    }
}

/// Fills `rows` with the table rows some query row of the batch `tokens` reads, ascending: the
/// token at each query position and the query positions. The other rows of the query table are
/// never read, and their gradients are zero. In the prompt layout that is 2 of 24 rows.
pub fn queried_rows(s: &Shapes, tokens: &[u32], rows: &mut Vec<usize>) {
    // Marks first, one per table row, then the marked rows' numbers moved to the front in
    // place (the `n`th number goes where at least `n` marks were read): no allocation.
    rows.clear();
    rows.resize(s.table_rows(), 0);
    for row in 0..s.rows() {
        let (pos, prefix) = s.prefix(tokens, row);
        rows[prefix[pos] as usize] = 1;
        rows[s.d_vocab + pos] = 1;
    }
    let mut n = 0;
    for row in 0..rows.len() {
        if rows[row] != 0 {
            rows[n] = row;
            n += 1;
        }
    }
    rows.truncate(n);
}

/// Activations of the forward pass and their gradients. `row` is a query row (example, query
/// position; see [`Shapes::rows`]). Per-head attention is `[row, head, ...]`, so that one
/// row's attention is contiguous (a head's matrix is read with a stride); the gradients of the
/// query, key and value tables are `[head, table row, d_head]`, so that one head's are. The
/// four `[row, head, table row]` buffers are empty when attention runs per row
/// ([`Shapes::attention_per_row`]), and `d_scores` is empty when it does not.
pub struct Buffers {
    /// `W_E` rows then `W_pos` rows, `[table row, d_model]`: what queries, keys and values are
    /// read from.
    pub table_in: Floats,
    /// Query, key and value tables, `[table row, head * d_head]`, biases on the token rows; the
    /// query table is scaled by `1 / sqrt(d_head)`.
    pub query_table: Floats,
    pub key_table: Floats,
    pub value_table: Floats,
    /// The table rows some query of the batch reads, ascending ([`queried_rows`]); these three
    /// are empty without [`Shapes::queries_of_queried_rows`].
    pub queried: Vec<usize>,
    /// Those rows of `table_in`, gathered, `[queried row, d_model]`.
    pub queried_in: Floats,
    /// Their queries, `[queried row, head * d_head]`, before they go to their rows.
    pub queried_out: Floats,
    /// Scaled queries, `[row, head * d_head]`.
    pub q: Floats,
    /// Query-key products with every table row, `[row, head, table row]`.
    pub table_scores: Floats,
    /// Attention pattern at the query positions, `[row, head, pos]`, zero past the query.
    pub pattern: Floats,
    /// Attention mass per table row (token rows summed over the positions holding the token),
    /// `[row, head, table row]`.
    pub table_weights: Floats,
    /// Attention result before W_O, `[row, head * d_head]` (empty with the OV products).
    pub z: Floats,
    /// With the OV products ([`Shapes::output_tables`]): each head's value-table rows times
    /// its block of `W_O`, `[head, table row, d_model]`; empty otherwise.
    pub ov_table: Floats,
    pub resid_mid: Floats,
    /// MLP pre-activation, `[row, d_mlp]`.
    pub pre: Floats,
    pub post: Floats,
    pub resid_post: Floats,
    /// Each row's cross-entropy, summed in row order into the loss.
    pub row_loss: Vec<f64>,
    /// Each row's contribution to the log's output statistics, from the same softmax.
    pub row_stats: Vec<RowStats>,
    /// Gradient of the loss with respect to the logits, `[row, d_vocab_out]`.
    pub d_logits: Floats,
    pub d_resid_post: Floats,
    /// Gradient of the MLP pre-activation, `[row, d_mlp]` (its own buffer, so that `post` is
    /// still there for `W_out`'s gradient, computed alongside).
    pub d_pre: Floats,
    pub d_resid_mid: Floats,
    pub d_z: Floats,
    pub d_ov_table: Floats,
    pub d_table_weights: Floats,
    pub d_table_scores: Floats,
    /// Gradient of the scores at the query's prefix, `[row, head, pos]` (per-row attention).
    pub d_scores: Floats,
    pub d_q: Floats,
    pub d_query_table: Floats,
    pub d_key_table: Floats,
    pub d_value_table: Floats,
    pub d_table_in: Floats,
    /// Loss, logits `[row, d_vocab_out]`, targets and gradients, as the training loop reads
    /// them.
    pub result: StepResult,
}

impl Buffers {
    /// Bytes of every buffer as allocated (activations, their gradients, logits, targets and
    /// the weights' gradients), to check [`Shapes::buffer_bytes`].
    #[cfg(test)]
    fn bytes(&self) -> usize {
        let activations: [&[f32]; 31] = [
            &self.table_in,
            &self.queried_in,
            &self.queried_out,
            &self.q,
            &self.key_table,
            &self.value_table,
            &self.table_scores,
            &self.pattern,
            &self.table_weights,
            &self.z,
            &self.ov_table,
            &self.d_ov_table,
            &self.resid_mid,
            &self.pre,
            &self.post,
            &self.resid_post,
            &self.d_logits,
            &self.d_resid_post,
            &self.d_pre,
            &self.d_resid_mid,
            &self.d_z,
            &self.d_table_weights,
            &self.d_table_scores,
            &self.d_scores,
            &self.d_q,
            &self.d_key_table,
            &self.d_value_table,
            &self.d_table_in,
            &self.query_table,
            &self.d_query_table,
            &self.result.logits,
        ];
        let floats: usize = activations.iter().map(|v| v.len()).sum::<usize>()
            + self.result.grads.iter().map(Vec::len).sum::<usize>();
        4 * (floats + self.result.targets.len())
            + std::mem::size_of::<usize>() * self.queried.capacity()
            + 8 * self.row_loss.len()
            + std::mem::size_of::<RowStats>() * self.row_stats.len()
    }

    /// Zeroed buffers for `s`; `grad_sizes` in the trained-tensor order of the config.
    pub fn new(s: &Shapes, grad_sizes: &[usize]) -> Buffers {
        let z = Floats::zeros;
        let (b, d, r, m) = (s.rows(), s.d_model, s.table_rows(), s.d_mlp);
        let (per_head, per_position) = (s.n_heads * b * r, s.n_heads * b * s.pos);
        let (per_head, d_scores) = if s.attention_per_row() {
            (0, per_position)
        } else {
            (per_head, 0)
        };
        let queried = s.queried_room();
        let (z_rows, ov_rows) = if s.output_tables {
            (0, s.n_heads * r * d)
        } else {
            (b * s.qkv(), 0)
        };
        Buffers {
            table_in: z(r * d),
            queried: Vec::with_capacity(queried),
            queried_in: z(queried * d),
            queried_out: z(queried * s.qkv()),
            q: z(b * s.qkv()),
            key_table: z(r * s.qkv()),
            value_table: z(r * s.qkv()),
            table_scores: z(per_head),
            pattern: z(per_position),
            table_weights: z(per_head),
            z: z(z_rows),
            ov_table: z(ov_rows),
            resid_mid: z(b * d),
            pre: z(b * m),
            post: z(b * m),
            resid_post: z(b * d),
            row_loss: vec![0.0; b],
            row_stats: vec![RowStats::default(); b],
            d_logits: z(b * s.d_vocab_out),
            d_resid_post: z(b * d),
            d_pre: z(b * m),
            d_resid_mid: z(b * d),
            d_z: z(z_rows),
            d_ov_table: z(ov_rows),
            d_table_weights: z(per_head),
            d_table_scores: z(per_head),
            d_scores: z(d_scores),
            d_q: z(b * s.qkv()),
            d_key_table: z(r * s.qkv()),
            d_value_table: z(r * s.qkv()),
            d_table_in: z(r * d),
            query_table: z(r * s.qkv()),
            d_query_table: z(r * s.qkv()),
            result: StepResult {
                loss: 0.0,
                logits: vec![0.0; b * s.d_vocab_out],
                targets: vec![0; b],
                grads: grad_sizes.iter().map(|&n| vec![0.0; n]).collect(),
                stats: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TrainConfig;
    use crate::task::{Layout, TaskConfig};

    /// The queried rows are the set of token-at-query and query-position rows, ascending, in
    /// both layouts, counted here with a set over the examples and their query positions.
    #[test]
    fn queried_rows_are_the_rows_the_queries_read() {
        use crate::task::training_batch;
        use std::collections::BTreeSet;
        for task in [
            TaskConfig {
                n_digits: 5,
                layout: Layout::Prompt,
                targets: vec![3],
                modp: None,
            },
            TaskConfig {
                n_digits: 5,
                layout: Layout::Answer,
                targets: (0..=5).collect(),
                modp: None,
            },
        ] {
            let cfg = TrainConfig::default_for(task.clone(), 16, 2);
            let s = Shapes::of(&cfg, 64);
            let batch = training_batch(&task, 7, 3, 64);
            let mut expected = BTreeSet::new();
            for example in batch.tokens.chunks_exact(s.pos) {
                for &query in &s.queries {
                    expected.insert(example[query] as usize);
                    expected.insert(s.d_vocab + query);
                }
            }
            let mut rows = vec![99; 3];
            queried_rows(&s, &batch.tokens, &mut rows);
            assert_eq!(rows, expected.into_iter().collect::<Vec<_>>(), "{task:?}");
            assert!(rows.len() < s.table_rows(), "{task:?}: {rows:?}");
        }
    }

    /// The count from the shapes is what `Buffers::new` allocates, in both layouts, with rows
    /// in several blocks, and with attention per row (modular addition).
    #[test]
    fn buffer_bytes_count_what_is_allocated() {
        let task = |layout, targets| TaskConfig {
            n_digits: 5,
            layout,
            targets,
            modp: None,
        };
        for (task, d_model, n_heads, batch) in [
            (task(Layout::Prompt, vec![0]), 128, 4, 128),
            (task(Layout::Prompt, vec![2]), 15, 3, 700),
            (task(Layout::Answer, (0..=5).collect()), 32, 4, 50),
            (TaskConfig::modp(23, 0.3, 100), 16, 2, 159),
            (task(Layout::Prompt, vec![0]), 512, 1, 128),
        ] {
            let cfg = TrainConfig::default_for(task, d_model, n_heads);
            let s = Shapes::of(&cfg, batch);
            assert_eq!(s.output_tables, d_model == 512, "{s:?}");
            let sizes: Vec<usize> = cfg
                .model
                .param_specs()
                .iter()
                .filter(|p| p.trained)
                .map(|p| p.shape.iter().product())
                .collect();
            let allocated = Buffers::new(&s, &sizes).bytes();
            let counted = s.buffer_bytes(sizes.iter().sum::<usize>() as f64);
            assert_eq!(counted, allocated as f64, "{s:?}");
        }
    }
}
