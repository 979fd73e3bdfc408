//! The backward pass of the fused step, derived by hand from [`super::forward`]: every
//! gradient of the loss with respect to the trained tensors, from the activations the forward
//! pass left in the buffers.

use rayon::prelude::*;

use super::buffers::{rows_per_task, Buffers, Shapes};
use super::forward::{dot, head_row};
use super::gemm::{matmul, Mat, MatMut};
use super::Weights;

/// Writes the gradients into `buf.result.grads` (trained-tensor order: W_E, W_pos, W_Q, W_K,
/// W_V, W_O, W_in, b_in, W_out, b_out, W_U).
///
/// The chain from the logits back to the embeddings runs on this thread; each weight's
/// gradient is a side task (`side.spawn`) started as soon as its inputs are ready, which
/// another thread of the pool takes if it is free (at d_model 16 the chain's products and the
/// weights' are about the same size, so a second thread nearly halves the pass). Every buffer
/// is written by one task, in a fixed order, so the bytes do not depend on which thread ran
/// what.
pub fn backward(s: &Shapes, w: &Weights, tokens: &[u32], buf: &mut Buffers) {
    let (b, v, d) = (s.rows(), s.d_vocab, s.d_model);
    let (h, dh, r, m, o) = (s.n_heads, s.d_head, s.table_rows(), s.d_mlp, s.d_vocab_out);
    let qkv = s.qkv();
    let Buffers {
        table_in,
        q,
        key_table,
        value_table,
        pattern,
        table_weights,
        z,
        ov_table,
        resid_mid,
        pre,
        post,
        resid_post,
        d_logits,
        d_resid_post,
        d_pre,
        d_resid_mid,
        d_z,
        d_ov_table,
        d_table_weights,
        d_table_scores,
        d_scores,
        d_q,
        d_key_table,
        d_value_table,
        d_table_in,
        d_query_table,
        result,
        ..
    } = buf;
    let [g_e, g_pos, g_q, g_k, g_v, g_o, g_in, gb_in, g_out, gb_out, g_u] =
        result.grads.as_mut_slice()
    else {
        unreachable!("the fused step checked the trained tensors when it was built")
    };

    // From the logits to the gradients of the key, value and query tables (borrowed for the
    // scope only: the projections read them after it).
    let (d_key_table_in_scope, d_value_table_in_scope) =
        (&mut d_key_table[..], &mut d_value_table[..]);
    rayon::scope(|side| {
        let (d_key_table, d_value_table) = (d_key_table_in_scope, d_value_table_in_scope);
        // Unembedding.
        let d_logits = Mat::rows(d_logits, b, o);
        let resid_post = &*resid_post;
        side.spawn(move |_| {
            let resid_post = Mat::rows(resid_post, b, d).t();
            matmul(MatMut::rows(g_u, d, o), resid_post, d_logits, 1.0, false);
        });
        let w_u = Mat::rows(w.w_u, d, o);
        matmul(
            MatMut::rows(d_resid_post, b, d),
            d_logits,
            w_u.t(),
            1.0,
            false,
        );
        let d_resid_post = &*d_resid_post;

        // MLP. ReLU passes the gradient where pre >= 0, as candle's autograd does (PyTorch
        // uses > 0; the two differ only at exactly zero).
        let post = &*post;
        side.spawn(move |_| {
            let post = Mat::rows(post, b, m).t();
            let d_out = Mat::rows(d_resid_post, b, d);
            matmul(MatMut::rows(g_out, m, d), post, d_out, 1.0, false);
            column_sums(gb_out, d_resid_post);
        });
        let w_out = Mat::rows(w.w_out, m, d);
        matmul(
            MatMut::rows(d_pre, b, m),
            Mat::rows(d_resid_post, b, d),
            w_out.t(),
            1.0,
            false,
        );
        d_pre
            .par_chunks_mut(1 << 14)
            .zip(pre.par_chunks(1 << 14))
            .for_each(|(d_pre, pre)| {
                // A select, not a branch, so that the loop vectorises.
                for (g, &p) in d_pre.iter_mut().zip(pre) {
                    *g = if p < 0.0 { 0.0 } else { *g };
                }
            });
        let d_pre = &*d_pre;
        let resid_mid = &*resid_mid;
        side.spawn(move |_| {
            column_sums(gb_in, d_pre);
            let resid_mid = Mat::rows(resid_mid, b, d).t();
            matmul(
                MatMut::rows(g_in, d, m),
                resid_mid,
                Mat::rows(d_pre, b, m),
                1.0,
                false,
            );
        });
        d_resid_mid.copy_from_slice(d_resid_post);
        let w_in = Mat::rows(w.w_in, d, m);
        matmul(
            MatMut::rows(d_resid_mid, b, d),
            Mat::rows(d_pre, b, m),
            w_in.t(),
            1.0,
            true,
        );
        let d_resid_mid = &*d_resid_mid;

        // Attention output: resid_mid = x + z W_O + b_O.
        let d_mid = Mat::rows(d_resid_mid, b, d);
        if s.output_tables {
            // Through the OV rows: z W_O is, summed over heads, the table weights times the
            // OV rows (value-table rows times the head's block of W_O).
            let table_weights = &*table_weights;
            for head in 0..h {
                let weights = Mat::cols(table_weights, head * r, b, r, h * r);
                let d_ov = MatMut::rows(&mut d_ov_table[head * r * d..][..r * d], r, d);
                matmul(d_ov, weights.t(), d_mid, 1.0, false);
            }
            let (d_ov_table, value_table) = (&*d_ov_table, &*value_table);
            side.spawn(move |_| ov_gradients(s, w, value_table, d_ov_table, g_o, d_value_table));
            for head in 0..h {
                let ov = Mat::rows(&ov_table[head * r * d..], r, d);
                let d_weights = MatMut::cols(d_table_weights, head * r, b, r, h * r);
                matmul(d_weights, d_mid, ov.t(), 1.0, false);
            }
        } else {
            let z = &*z;
            side.spawn(move |_| {
                matmul(
                    MatMut::rows(g_o, qkv, d),
                    Mat::rows(z, b, qkv).t(),
                    d_mid,
                    1.0,
                    false,
                );
            });
            matmul(
                MatMut::rows(d_z, b, qkv),
                d_mid,
                Mat::rows(w.w_o, qkv, d).t(),
                1.0,
                false,
            );
            let d_z = &*d_z;
            // Through attention to the gradients of each row's query and of the key and value
            // tables (`[head, table row, d_head]`).
            if s.attention_per_row() {
                let from = Attention {
                    q,
                    pattern,
                    keys: key_table,
                    values: value_table,
                    d_z,
                };
                attention_backward_per_row(s, tokens, &from, d_scores, d_q);
                key_value_gradients_into_tables(
                    s,
                    tokens,
                    &from,
                    d_scores,
                    d_key_table,
                    d_value_table,
                );
            } else {
                // z = table weights @ value table, per head.
                let table_weights = &*table_weights;
                let value_table = &*value_table;
                side.spawn(move |_| table_gradients(s, d_value_table, table_weights, d_z));
                for head in 0..h {
                    let d_z_head = Mat::cols(d_z, head * dh, b, dh, qkv);
                    let values = Mat::cols(value_table, head * dh, r, dh, qkv);
                    let d_weights = MatMut::cols(d_table_weights, head * r, b, r, h * r);
                    matmul(d_weights, d_z_head, values.t(), 1.0, false);
                }
            }
        }
        if !s.attention_per_row() {
            pattern_backward(s, tokens, pattern, d_table_weights, d_table_scores);
            // Scores = q . key table rows, with q already scaled by 1 / sqrt(d_head).
            let d_table_scores = &*d_table_scores;
            let q = &*q;
            side.spawn(move |_| table_gradients(s, d_key_table, d_table_scores, q));
            let scale = 1.0 / (dh as f32).sqrt();
            for head in 0..h {
                let d_scores = Mat::cols(d_table_scores, head * r, b, r, h * r);
                let keys = Mat::cols(key_table, head * dh, r, dh, qkv);
                let d_q_head = MatMut::cols(d_q, head * dh, b, dh, qkv);
                matmul(d_q_head, d_scores, keys, scale, false);
            }
        }
        // Then the queries' gradients into the query table.
        query_gradients_into_table(s, tokens, d_q, d_query_table);
    });

    // Projections of the table rows into queries, keys and values, per head: each weight's
    // gradient a side task, the table rows' gradient summed here in a fixed order.
    let table_in = Mat::rows(table_in, r, d);
    let d_tables = [&*d_query_table, &*d_key_table, &*d_value_table];
    rayon::scope(|side| {
        for (grad, d_table) in [g_q, g_k, g_v].into_iter().zip(d_tables) {
            side.spawn(move |_| {
                for (head, grad) in grad.chunks_exact_mut(d * dh).enumerate() {
                    let d_table = Mat::head(d_table, head, r, dh);
                    matmul(MatMut::rows(grad, d, dh), table_in.t(), d_table, 1.0, false);
                }
            });
        }
        for head in 0..h {
            for (i, (d_table, weight)) in d_tables.iter().zip([w.w_q, w.w_k, w.w_v]).enumerate() {
                let d_table = Mat::head(d_table, head, r, dh);
                let weight = Mat::head(weight, head, d, dh).t();
                let accumulate = head > 0 || i > 0;
                matmul(
                    MatMut::rows(d_table_in, r, d),
                    d_table,
                    weight,
                    1.0,
                    accumulate,
                );
            }
        }
    });

    // Embeddings: the table rows, plus the residual stream x = W_E[token at the query] +
    // W_pos[query position] that resid_mid starts from.
    g_e.copy_from_slice(&d_table_in[..v * d]);
    g_pos.copy_from_slice(&d_table_in[v * d..]);
    for (row, d_x) in d_resid_mid.chunks_exact(d).enumerate() {
        let (pos, prefix) = s.prefix(tokens, row);
        let token = prefix[pos] as usize;
        for ((e, p), g) in g_e[token * d..][..d]
            .iter_mut()
            .zip(g_pos[pos * d..][..d].iter_mut())
            .zip(d_x)
        {
            *e += g;
            *p += g;
        }
    }
}

/// With the OV products: `W_O`'s gradient (`[head * d_head, d_model]`) and the value
/// table's (`[head, table row, d_head]`), per head from the gradient of its OV rows (`[head,
/// table row, d_model]`): OV rows = value rows @ the head's block of `W_O`.
fn ov_gradients(
    s: &Shapes,
    w: &Weights,
    value_table: &[f32],
    d_ov_table: &[f32],
    g_o: &mut [f32],
    d_value_table: &mut [f32],
) {
    let (d, dh, r, qkv) = (s.d_model, s.d_head, s.table_rows(), s.qkv());
    let blocks = g_o
        .chunks_exact_mut(dh * d)
        .zip(d_value_table.chunks_exact_mut(r * dh))
        .enumerate();
    for (head, (g_o, d_values)) in blocks {
        let d_ov = Mat::rows(&d_ov_table[head * r * d..], r, d);
        let values = Mat::cols(value_table, head * dh, r, dh, qkv);
        matmul(MatMut::rows(g_o, dh, d), values.t(), d_ov, 1.0, false);
        let w_o = Mat::rows(&w.w_o[head * dh * d..], dh, d);
        matmul(MatMut::rows(d_values, r, dh), d_ov, w_o.t(), 1.0, false);
    }
}

/// A key or value table's gradient (`[head, table row, d_head]`) in the dense attention: per
/// head, `per_table_row^T @ per_row`, from a `[row, head, table row]` matrix (the table
/// weights, or the scores' gradient) and a `[row, head * d_head]` one (`d_z`, or the queries).
fn table_gradients(s: &Shapes, d_table: &mut [f32], per_table_row: &[f32], per_row: &[f32]) {
    let (b, h, dh, r, qkv) = (s.rows(), s.n_heads, s.d_head, s.table_rows(), s.qkv());
    for (head, d_table) in d_table.chunks_exact_mut(r * dh).enumerate() {
        let a = Mat::cols(per_table_row, head * r, b, r, h * r);
        let per_row = Mat::cols(per_row, head * dh, b, dh, qkv);
        matmul(MatMut::rows(d_table, r, dh), a.t(), per_row, 1.0, false);
    }
}

/// From the gradient of the table weights to the gradient of the table scores: through the
/// gather of token rows by position, the softmax over the query's prefix, and back into token
/// and position rows (none into positions after the query).
fn pattern_backward(
    s: &Shapes,
    tokens: &[u32],
    pattern: &[f32],
    d_table_weights: &[f32],
    d_table_scores: &mut [f32],
) {
    let (t, v, r, h) = (s.pos, s.d_vocab, s.table_rows(), s.n_heads);
    d_table_scores
        .par_chunks_exact_mut(h * r)
        .zip(d_table_weights.par_chunks_exact(h * r))
        .zip(pattern.par_chunks_exact(h * t))
        .enumerate()
        .with_min_len(rows_per_task(h * (r + 4 * t)))
        .for_each(|(row, ((d_scores, d_weights), pattern))| {
            let (query, tokens) = s.prefix(tokens, row);
            let heads = d_scores
                .chunks_exact_mut(r)
                .zip(d_weights.chunks_exact(r))
                .zip(pattern.chunks_exact(t));
            for ((d_scores, d_weights), pattern) in heads {
                let (d_token_weights, d_position_weights) = d_weights.split_at(v);
                let (d_token_scores, d_position_scores) = d_scores.split_at_mut(v);
                let pattern = &pattern[..query + 1];
                // The pattern's gradient at each position, in the positions' scores for now.
                d_position_scores[query + 1..].fill(0.0);
                let d_pattern = &mut d_position_scores[..query + 1];
                let positions = d_pattern.iter_mut().zip(tokens).zip(d_position_weights);
                for ((d, &token), &d_position) in positions {
                    *d = d_token_weights[token as usize] + d_position;
                }
                // Then the softmax's: p * (d_p - p . d_p), into the position and token rows.
                softmax_backward_in_place(pattern, d_pattern);
                d_token_scores.fill(0.0);
                for (&g, &token) in d_pattern.iter().zip(tokens) {
                    d_token_scores[token as usize] += g;
                }
            }
        });
}

/// What the per-row attention backward reads: the forward pass's scaled queries and patterns,
/// the key and value tables, and the gradient of `z`.
struct Attention<'a> {
    q: &'a [f32],
    pattern: &'a [f32],
    keys: &'a [f32],
    values: &'a [f32],
    d_z: &'a [f32],
}

/// Per-row attention backward (see [`Shapes::attention_per_row`]), rows in parallel: the
/// gradient of each row's pattern (`d_z . (token value + position value)`), of its scores
/// through the softmax (into `d_scores`, `[row, head, pos]`), and of its query, `d_scores`
/// times the keys, by `1 / sqrt(d_head)` for the scaled query table.
fn attention_backward_per_row(
    s: &Shapes,
    tokens: &[u32],
    f: &Attention,
    d_scores: &mut [f32],
    d_q: &mut [f32],
) {
    let (t, v, h, dh, qkv) = (s.pos, s.d_vocab, s.n_heads, s.d_head, s.qkv());
    let scale = 1.0 / (dh as f32).sqrt();
    d_q.par_chunks_exact_mut(qkv)
        .zip(d_scores.par_chunks_exact_mut(h * t))
        .enumerate()
        .with_min_len(rows_per_task(4 * t * qkv))
        .for_each(|(row, (d_q, d_scores))| {
            let (query, tokens) = s.prefix(tokens, row);
            for (head, d_scores) in d_scores.chunks_exact_mut(t).enumerate() {
                let first = head * dh;
                let d_z = &f.d_z[row * qkv + first..][..dh];
                let pattern = &f.pattern[(row * h + head) * t..][..query + 1];
                d_scores[query + 1..].fill(0.0);
                let d_scores = &mut d_scores[..query + 1];
                for (j, (g, &token)) in d_scores.iter_mut().zip(tokens).enumerate() {
                    let value_token = head_row(f.values, token as usize, qkv, first, dh);
                    let value_pos = head_row(f.values, v + j, qkv, first, dh);
                    *g = dot(d_z, value_token) + dot(d_z, value_pos);
                }
                softmax_backward_in_place(pattern, d_scores);
                let d_q = &mut d_q[first..][..dh];
                d_q.fill(0.0);
                for (j, (&g, &token)) in d_scores.iter().zip(tokens).enumerate() {
                    let key_token = head_row(f.keys, token as usize, qkv, first, dh);
                    let key_pos = head_row(f.keys, v + j, qkv, first, dh);
                    for ((d, a), b) in d_q.iter_mut().zip(key_token).zip(key_pos) {
                        *d += scale * g * (a + b);
                    }
                }
            }
        });
}

/// The key and value tables' gradients of per-row attention: a row's key (value) at a
/// position is its token's row plus the position's, so both rows receive `d_score * q` (`p *
/// d_z`). One head per task, its rows in row order, so the sums do not depend on the thread
/// count.
fn key_value_gradients_into_tables(
    s: &Shapes,
    tokens: &[u32],
    f: &Attention,
    d_scores: &[f32],
    d_key_table: &mut [f32],
    d_value_table: &mut [f32],
) {
    let (t, v, h, dh, qkv, r) = (
        s.pos,
        s.d_vocab,
        s.n_heads,
        s.d_head,
        s.qkv(),
        s.table_rows(),
    );
    d_key_table
        .par_chunks_exact_mut(r * dh)
        .zip(d_value_table.par_chunks_exact_mut(r * dh))
        .enumerate()
        .for_each(|(head, (d_keys, d_values))| {
            d_keys.fill(0.0);
            d_values.fill(0.0);
            for row in 0..s.rows() {
                let (_, tokens) = s.prefix(tokens, row);
                let q = &f.q[row * qkv + head * dh..][..dh];
                let d_z = &f.d_z[row * qkv + head * dh..][..dh];
                let at = (row * h + head) * t;
                let (pattern, d_scores) = (&f.pattern[at..][..t], &d_scores[at..][..t]);
                for (j, &token) in tokens.iter().enumerate() {
                    let (g, p) = (d_scores[j], pattern[j]);
                    for table_row in [token as usize, v + j] {
                        let d_key = &mut d_keys[table_row * dh..][..dh];
                        d_key.iter_mut().zip(q).for_each(|(d, q)| *d += g * q);
                        let d_value = &mut d_values[table_row * dh..][..dh];
                        d_value.iter_mut().zip(d_z).for_each(|(d, z)| *d += p * z);
                    }
                }
            }
        });
}

/// The query table's gradient (`[head, table row, d_head]`): each row's query is its token's
/// row plus its position's, so both receive the row's `d_q`. One head per task, rows in row
/// order.
fn query_gradients_into_table(s: &Shapes, tokens: &[u32], d_q: &[f32], d_query_table: &mut [f32]) {
    let (dh, qkv, r, v) = (s.d_head, s.qkv(), s.table_rows(), s.d_vocab);
    d_query_table
        .par_chunks_exact_mut(r * dh)
        .enumerate()
        .for_each(|(head, d_table)| {
            d_table.fill(0.0);
            for (row, d_q) in d_q.chunks_exact(qkv).enumerate() {
                let (pos, prefix) = s.prefix(tokens, row);
                let token = prefix[pos] as usize;
                let d_q = &d_q[head * dh..][..dh];
                for table_row in [token, v + pos] {
                    let d_row = &mut d_table[table_row * dh..][..dh];
                    d_row.iter_mut().zip(d_q).for_each(|(d, g)| *d += g);
                }
            }
        });
}

/// A pattern's gradient to its scores' through the softmax, in place: `p * (d_p - p . d_p)`.
fn softmax_backward_in_place(pattern: &[f32], d_pattern: &mut [f32]) {
    let mean = dot(pattern, d_pattern);
    for (g, p) in d_pattern.iter_mut().zip(pattern) {
        *g = p * (*g - mean);
    }
}

/// `sums[j] = sum_i rows[i][j]` over rows of `sums.len()`. Blocks of columns run in
/// parallel; each column is summed in row order, whatever the number of threads.
fn column_sums(sums: &mut [f32], rows: &[f32]) {
    const COLUMNS: usize = 64;
    let width = sums.len();
    sums.par_chunks_mut(COLUMNS)
        .enumerate()
        .for_each(|(c, sums)| {
            sums.fill(0.0);
            for row in rows.chunks_exact(width) {
                let row = &row[c * COLUMNS..][..sums.len()];
                sums.iter_mut().zip(row).for_each(|(s, x)| *s += x);
            }
        });
}
