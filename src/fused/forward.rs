//! The forward pass of the fused step: logits at the query positions and the mean
//! cross-entropy, from the token and position tables (the algebra of
//! `model/last_position.rs`, with a causal mask when a query is not the last position),
//! keeping every activation the backward pass needs.

use rayon::prelude::*;

use super::buffers::{Buffers, Shapes, BLOCK_ROWS};
use super::gemm::{matmul, Mat, MatMut};
use super::Weights;

/// Fills `buf` with the activations of `tokens` (`[batch, pos]`), the logits, the loss and the
/// gradient of the loss with respect to the logits.
pub fn forward(s: &Shapes, w: &Weights, tokens: &[u32], buf: &mut Buffers) {
    let (b, t, v, d) = (s.rows(), s.pos, s.d_vocab, s.d_model);
    let (h, dh, r, m, o) = (s.n_heads, s.d_head, s.table_rows(), s.d_mlp, s.d_vocab_out);
    let qkv = s.qkv();

    // Queries, keys and values of every token and every position: `r` rows a step, however
    // many examples the batch has.
    buf.table_in[..v * d].copy_from_slice(&w.w_e[..v * d]);
    buf.table_in[v * d..].copy_from_slice(&w.w_pos[..t * d]);
    let table_in = Mat::rows(&buf.table_in, r, d);
    for head in 0..h {
        for (table, weight) in [
            (&mut buf.query_table, w.w_q),
            (&mut buf.key_table, w.w_k),
            (&mut buf.value_table, w.w_v),
        ] {
            let dst = MatMut::cols(table, head * dh, r, dh, qkv);
            matmul(dst, table_in, Mat::head(weight, head, d, dh), 1.0, false);
        }
    }
    // Biases on the token rows only: every query, key and value is one token row plus one
    // position row, so each gets its bias once.
    for (table, bias) in [
        (&mut buf.query_table, w.b_q),
        (&mut buf.key_table, w.b_k),
        (&mut buf.value_table, w.b_v),
    ] {
        for row in table[..v * qkv].chunks_exact_mut(qkv) {
            row.iter_mut().zip(bias).for_each(|(x, b)| *x += b);
        }
    }
    let scale = 1.0 / (dh as f32).sqrt();
    buf.query_table.iter_mut().for_each(|q| *q *= scale);

    attention(s, tokens, buf);

    // resid_mid = W_E[token] + W_pos[query] + b_O + z W_O; W_O as [head * d_head, d_model]
    // is its stored layout.
    buf.resid_mid
        .par_chunks_exact_mut(d)
        .enumerate()
        .with_min_len(64)
        .for_each(|(row, x)| {
            let (example, pos) = s.query_of(row);
            let token = tokens[example * t + pos] as usize;
            let (e, p) = (&w.w_e[token * d..][..d], &w.w_pos[pos * d..][..d]);
            for (((x, e), p), b) in x.iter_mut().zip(e).zip(p).zip(w.b_o) {
                *x = e + p + b;
            }
        });
    matmul(
        MatMut::rows(&mut buf.resid_mid, b, d),
        Mat::rows(&buf.z, b, qkv),
        Mat::rows(w.w_o, qkv, d),
        1.0,
        true,
    );

    // MLP: post = ReLU(resid_mid W_in + b_in); resid_post = resid_mid + post W_out + b_out.
    broadcast_rows(&mut buf.pre, w.b_in);
    matmul(
        MatMut::rows(&mut buf.pre, b, m),
        Mat::rows(&buf.resid_mid, b, d),
        Mat::rows(w.w_in, d, m),
        1.0,
        true,
    );
    buf.post
        .par_chunks_mut(1 << 14)
        .zip(buf.pre.par_chunks(1 << 14))
        .for_each(|(post, pre)| {
            for (post, pre) in post.iter_mut().zip(pre) {
                *post = pre.max(0.0);
            }
        });
    add_rows(&mut buf.resid_post, &buf.resid_mid, w.b_out);
    matmul(
        MatMut::rows(&mut buf.resid_post, b, d),
        Mat::rows(&buf.post, b, m),
        Mat::rows(w.w_out, m, d),
        1.0,
        true,
    );

    let logits = &mut buf.result.logits;
    broadcast_rows(logits, w.b_u);
    matmul(
        MatMut::rows(logits, b, o),
        Mat::rows(&buf.resid_post, b, d),
        Mat::rows(w.w_u, d, o),
        1.0,
        true,
    );
    cross_entropy(s, buf);
}

/// `a · b`, summed in 8 lanes so that it vectorises (the compiler keeps a single float sum in
/// order, one element at a time).
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 8;
    let mut lanes = [0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let rest: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (a, b) in a_chunks.zip(b_chunks) {
        for l in 0..LANES {
            lanes[l] += a[l] * b[l];
        }
    }
    lanes.iter().sum::<f32>() + rest
}

/// Row `row` (of `width`) of a row-major table, from column `first`, `len` wide.
pub(super) fn table_row(
    table: &[f32],
    row: usize,
    width: usize,
    first: usize,
    len: usize,
) -> &[f32] {
    &table[row * width + first..][..len]
}

/// Every query row's scaled query (its token's row of the query table plus its position's),
/// its attention pattern (softmax over the positions up to the query of `q . (token key +
/// position key)`) and `z` (the pattern's mix of token value plus position value). Rows are
/// independent and run in parallel blocks.
fn attention(s: &Shapes, tokens: &[u32], buf: &mut Buffers) {
    let (t, v, h, dh, qkv) = (s.pos, s.d_vocab, s.n_heads, s.d_head, s.qkv());
    let (query_table, keys, values) = (&buf.query_table, &buf.key_table, &buf.value_table);
    buf.q
        .par_chunks_mut(BLOCK_ROWS * qkv)
        .zip(buf.pattern.par_chunks_mut(BLOCK_ROWS * h * t))
        .zip(buf.z.par_chunks_mut(BLOCK_ROWS * qkv))
        .enumerate()
        .for_each(|(block, ((q, pattern), z))| {
            let rows = q
                .chunks_exact_mut(qkv)
                .zip(pattern.chunks_exact_mut(h * t))
                .zip(z.chunks_exact_mut(qkv));
            for (i, ((q, pattern), z)) in rows.enumerate() {
                let (example, query) = s.query_of(block * BLOCK_ROWS + i);
                let tokens = &tokens[example * t..][..query + 1];
                let own_token = table_row(query_table, tokens[query] as usize, qkv, 0, qkv);
                let own_pos = table_row(query_table, v + query, qkv, 0, qkv);
                for ((q, a), b) in q.iter_mut().zip(own_token).zip(own_pos) {
                    *q = a + b;
                }
                for head in 0..h {
                    let (q, first) = (&q[head * dh..][..dh], head * dh);
                    let pattern = &mut pattern[head * t..][..t];
                    pattern[query + 1..].fill(0.0);
                    let pattern = &mut pattern[..query + 1];
                    let mut max = f32::NEG_INFINITY;
                    for (j, (p, &token)) in pattern.iter_mut().zip(tokens).enumerate() {
                        let key_token = table_row(keys, token as usize, qkv, first, dh);
                        let key_pos = table_row(keys, v + j, qkv, first, dh);
                        *p = dot(q, key_token) + dot(q, key_pos);
                        max = max.max(*p);
                    }
                    let mut sum = 0.0;
                    for p in pattern.iter_mut() {
                        *p = (*p - max).exp();
                        sum += *p;
                    }
                    let z = &mut z[first..][..dh];
                    z.fill(0.0);
                    for (j, (p, &token)) in pattern.iter_mut().zip(tokens).enumerate() {
                        *p /= sum;
                        let value_token = table_row(values, token as usize, qkv, first, dh);
                        let value_pos = table_row(values, v + j, qkv, first, dh);
                        for ((z, a), b) in z.iter_mut().zip(value_token).zip(value_pos) {
                            *z += *p * (a + b);
                        }
                    }
                }
            }
        });
}

/// The mean cross-entropy of the logits over query rows and its gradient `(softmax -
/// one_hot) / rows`. Rows run in parallel; their losses are added in row order.
fn cross_entropy(s: &Shapes, buf: &mut Buffers) {
    let (o, b) = (s.d_vocab_out, s.rows() as f32);
    let result = &mut buf.result;
    result
        .logits
        .par_chunks_exact(o)
        .zip(buf.d_logits.par_chunks_exact_mut(o))
        .zip(result.targets.par_iter())
        .zip(buf.row_loss.par_iter_mut())
        .with_min_len(64)
        .for_each(|(((logits, d_logits), &target), loss)| {
            let max = logits.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
            let mut sum = 0.0;
            for (d, &x) in d_logits.iter_mut().zip(logits) {
                *d = (x - max).exp();
                sum += *d;
            }
            let target = target as usize;
            *loss = f64::from(max + sum.ln() - logits[target]);
            d_logits.iter_mut().for_each(|d| *d /= sum * b);
            d_logits[target] -= 1.0 / b;
        });
    result.loss = (buf.row_loss.iter().sum::<f64>() / f64::from(b)) as f32;
}

/// Every row of `dst` (rows of `bias.len()`) set to `src`'s row plus `bias`.
fn add_rows(dst: &mut [f32], src: &[f32], bias: &[f32]) {
    for (dst, src) in dst
        .chunks_exact_mut(bias.len())
        .zip(src.chunks_exact(bias.len()))
    {
        for ((y, x), b) in dst.iter_mut().zip(src).zip(bias) {
            *y = x + b;
        }
    }
}

/// Every row of `dst` set to `bias`.
fn broadcast_rows(dst: &mut [f32], bias: &[f32]) {
    for row in dst.chunks_exact_mut(bias.len()) {
        row.copy_from_slice(bias);
    }
}
