//! The backward pass of the fused step, derived by hand from [`super::forward`]: every
//! gradient of the loss with respect to the trained tensors, from the activations the forward
//! pass left in the buffers.

use rayon::prelude::*;

use super::buffers::{Buffers, Shapes, BLOCK_ROWS};
use super::forward::{dot, table_row};
use super::gemm::{matmul, Mat, MatMut};
use super::Weights;

/// Writes the gradients into `buf.result.grads` (trained-tensor order: W_E, W_pos, W_Q, W_K,
/// W_V, W_O, W_in, b_in, W_out, b_out, W_U). Overwrites `post` with the MLP's gradient.
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
        z,
        resid_mid,
        pre,
        post,
        resid_post,
        d_logits,
        d_resid_post,
        d_resid_mid,
        d_z,
        d_scores,
        d_q,
        d_table_partials,
        d_query_table,
        d_key_table,
        d_value_table,
        d_table_in,
        result,
        ..
    } = buf;
    let [g_e, g_pos, g_q, g_k, g_v, g_o, g_in, gb_in, g_out, gb_out, g_u] =
        result.grads.as_mut_slice()
    else {
        unreachable!("the fused step checked the trained tensors when it was built")
    };

    // Unembedding.
    let d_logits = Mat::rows(d_logits, b, o);
    matmul(
        MatMut::rows(g_u, d, o),
        Mat::rows(resid_post, b, d).t(),
        d_logits,
        1.0,
        false,
    );
    let w_u = Mat::rows(w.w_u, d, o);
    matmul(
        MatMut::rows(d_resid_post, b, d),
        d_logits,
        w_u.t(),
        1.0,
        false,
    );

    // MLP. ReLU passes the gradient where pre >= 0, as candle's autograd does (PyTorch uses
    // > 0; the two differ only at exactly zero).
    matmul(
        MatMut::rows(g_out, m, d),
        Mat::rows(post, b, m).t(),
        Mat::rows(d_resid_post, b, d),
        1.0,
        false,
    );
    column_sums(gb_out, d_resid_post);
    let d_pre = post;
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
    column_sums(gb_in, d_pre);
    matmul(
        MatMut::rows(g_in, d, m),
        Mat::rows(resid_mid, b, d).t(),
        Mat::rows(d_pre, b, m),
        1.0,
        false,
    );
    d_resid_mid.copy_from_slice(d_resid_post);
    let w_in = Mat::rows(w.w_in, d, m);
    matmul(
        MatMut::rows(d_resid_mid, b, d),
        Mat::rows(d_pre, b, m),
        w_in.t(),
        1.0,
        true,
    );

    // Attention output: resid_mid = x + z W_O + b_O.
    let d_mid = Mat::rows(d_resid_mid, b, d);
    matmul(
        MatMut::rows(g_o, qkv, d),
        Mat::rows(z, b, qkv).t(),
        d_mid,
        1.0,
        false,
    );
    matmul(
        MatMut::rows(d_z, b, qkv),
        d_mid,
        Mat::rows(w.w_o, qkv, d).t(),
        1.0,
        false,
    );

    // The attention of each row, back to the query, key and value tables.
    let tables = Tables {
        q,
        pattern,
        keys: key_table,
        values: value_table,
        d_z,
    };
    attention_backward(s, tokens, &tables, d_scores, d_q, d_table_partials);
    for (k, dst) in [&mut *d_query_table, &mut *d_key_table, &mut *d_value_table]
        .into_iter()
        .enumerate()
    {
        add_partials(dst, d_table_partials, k);
    }

    // Projections of the table rows: queries (scaled), keys and values, per head.
    let scale = 1.0 / (dh as f32).sqrt();
    let table_in = Mat::rows(table_in, r, d);
    for head in 0..h {
        let first = head * dh;
        let projections = [
            (&*d_query_table, &mut *g_q, w.w_q, scale),
            (&*d_key_table, &mut *g_k, w.w_k, 1.0),
            (&*d_value_table, &mut *g_v, w.w_v, 1.0),
        ];
        for (i, (d_table, grad, weight, scale)) in projections.into_iter().enumerate() {
            let d_table = Mat::cols(d_table, first, r, dh, qkv);
            matmul(
                MatMut::head(grad, head, d, dh),
                table_in.t(),
                d_table,
                scale,
                false,
            );
            let weight = Mat::head(weight, head, d, dh);
            let accumulate = head > 0 || i > 0;
            matmul(
                MatMut::rows(d_table_in, r, d),
                d_table,
                weight.t(),
                scale,
                accumulate,
            );
        }
    }

    // Embeddings: the table rows, plus the residual stream W_E[token] + W_pos[query] that
    // resid_mid starts from.
    g_e.copy_from_slice(&d_table_in[..v * d]);
    g_pos.copy_from_slice(&d_table_in[v * d..]);
    for (row, d_x) in d_resid_mid.chunks_exact(d).enumerate() {
        let (example, pos) = s.query_of(row);
        let token = tokens[example * s.pos + pos] as usize;
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

/// What the attention backward reads: the forward pass's queries and patterns, the key and
/// value tables, and the gradient of `z`.
struct Tables<'a> {
    q: &'a [f32],
    pattern: &'a [f32],
    keys: &'a [f32],
    values: &'a [f32],
    d_z: &'a [f32],
}

/// Through each row's attention (in parallel blocks of [`BLOCK_ROWS`] rows): the gradient of
/// its pattern, then of its scores through the softmax over its prefix, then of its query, and
/// each block's share of the query, key and value tables' gradients (a row's query, key or
/// value is a token row plus a position row, so both receive its gradient) into its own
/// partial tables.
fn attention_backward(
    s: &Shapes,
    tokens: &[u32],
    f: &Tables,
    d_scores: &mut [f32],
    d_q: &mut [f32],
    partials: &mut [f32],
) {
    let (t, v, h, dh, qkv, r) = (
        s.pos,
        s.d_vocab,
        s.n_heads,
        s.d_head,
        s.qkv(),
        s.table_rows(),
    );
    d_q.par_chunks_mut(BLOCK_ROWS * qkv)
        .zip(d_scores.par_chunks_mut(BLOCK_ROWS * h * t))
        .zip(partials.par_chunks_mut(3 * r * qkv))
        .enumerate()
        .for_each(|(block, ((d_q, d_scores), partial))| {
            partial.fill(0.0);
            let (d_query_table, rest) = partial.split_at_mut(r * qkv);
            let (d_keys, d_values) = rest.split_at_mut(r * qkv);
            let rows = d_q
                .chunks_exact_mut(qkv)
                .zip(d_scores.chunks_exact_mut(h * t));
            for (i, (d_q, d_scores)) in rows.enumerate() {
                let row = block * BLOCK_ROWS + i;
                let (example, query) = s.query_of(row);
                let tokens = &tokens[example * t..][..query + 1];
                for head in 0..h {
                    let first = head * dh;
                    let q = &f.q[row * qkv + first..][..dh];
                    let d_z = &f.d_z[row * qkv + first..][..dh];
                    let pattern = &f.pattern[(row * h + head) * t..][..query + 1];
                    let d_scores = &mut d_scores[head * t..][..t];
                    d_scores[query + 1..].fill(0.0);
                    let d_scores = &mut d_scores[..query + 1];
                    // The pattern's gradient, then the softmax's: p (d_p - p . d_p).
                    for (j, (g, &token)) in d_scores.iter_mut().zip(tokens).enumerate() {
                        let value_token = table_row(f.values, token as usize, qkv, first, dh);
                        let value_pos = table_row(f.values, v + j, qkv, first, dh);
                        *g = dot(d_z, value_token) + dot(d_z, value_pos);
                    }
                    let mean = dot(pattern, d_scores);
                    for (g, p) in d_scores.iter_mut().zip(pattern) {
                        *g = p * (*g - mean);
                    }
                    let d_q = &mut d_q[first..][..dh];
                    d_q.fill(0.0);
                    for (j, ((&g, &p), &token)) in
                        d_scores.iter().zip(pattern).zip(tokens).enumerate()
                    {
                        for at_row in [token as usize, v + j] {
                            let key = table_row(f.keys, at_row, qkv, first, dh);
                            for (d_q, k) in d_q.iter_mut().zip(key) {
                                *d_q += g * k;
                            }
                            let at = at_row * qkv + first;
                            let d_key = &mut d_keys[at..][..dh];
                            d_key.iter_mut().zip(q).for_each(|(d, q)| *d += g * q);
                            let d_value = &mut d_values[at..][..dh];
                            d_value.iter_mut().zip(d_z).for_each(|(d, z)| *d += p * z);
                        }
                    }
                }
                for at_row in [tokens[query] as usize, v + query] {
                    let d_row = &mut d_query_table[at_row * qkv..][..qkv];
                    d_row.iter_mut().zip(&*d_q).for_each(|(d, g)| *d += g);
                }
            }
        });
}

/// `dst` set to the sum, in block order, of table `k` (of 3) of every block's partial tables.
fn add_partials(dst: &mut [f32], partials: &[f32], k: usize) {
    let n = dst.len();
    dst.par_chunks_mut(1 << 12)
        .enumerate()
        .for_each(|(c, dst)| {
            let at = k * n + c * (1 << 12);
            dst.fill(0.0);
            for partial in partials.chunks_exact(3 * n) {
                let partial = &partial[at..][..dst.len()];
                dst.iter_mut().zip(partial).for_each(|(d, x)| *d += x);
            }
        });
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
