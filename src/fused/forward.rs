//! The forward pass of the fused step: logits at the query positions and the mean
//! cross-entropy, from the token and position tables (the algebra of
//! `model/last_position.rs`, with a causal mask when a query is not the last position),
//! keeping every activation the backward pass needs.

use rayon::prelude::*;

use super::buffers::{queried_rows, rows_per_task, Buffers, Shapes};
use super::gemm::{matmul, Mat, MatMut};
use super::Weights;
use crate::exp::{exp, exp_in_place};
use crate::output_stats::{combine, row_stats, shift_by_max};

/// Fills `buf` with the activations of `tokens` (`[batch, pos]`), the logits, the loss and the
/// gradient of the loss with respect to the logits.
pub fn forward(s: &Shapes, w: &Weights, tokens: &[u32], buf: &mut Buffers) {
    let (b, t, v, d) = (s.rows(), s.pos, s.d_vocab, s.d_model);
    let (h, dh, r, m, o) = (s.n_heads, s.d_head, s.table_rows(), s.d_mlp, s.d_vocab_out);
    let qkv = s.qkv();

    // The rows queries, keys and values are made of: every token's embedding, every position's.
    buf.table_in[..v * d].copy_from_slice(&w.w_e[..v * d]);
    buf.table_in[v * d..].copy_from_slice(&w.w_pos[..t * d]);

    // Keys and values of every token and every position: `r` rows a step, however many rows
    // the batch has. A key (value, query) is its token's row plus its position's.
    let table_in = Mat::rows(&buf.table_in, r, d);
    for head in 0..h {
        for (table, weight) in [(&mut buf.key_table, w.w_k), (&mut buf.value_table, w.w_v)] {
            let dst = MatMut::cols(table, head * dh, r, dh, qkv);
            matmul(dst, table_in, Mat::head(weight, head, d, dh), 1.0, false);
        }
    }
    query_table(s, w, tokens, buf);
    // Biases on the token rows only: each query, key and value has one token row. Queries are
    // scaled by 1 / sqrt(d_head).
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
    let query_table = &buf.query_table;
    buf.q
        .par_chunks_exact_mut(qkv)
        .enumerate()
        .with_min_len(rows_per_task(qkv))
        .for_each(|(row, q)| {
            let (pos, prefix) = s.prefix(tokens, row);
            let token = prefix[pos] as usize;
            let (own_token, own_pos) = (
                &query_table[token * qkv..][..qkv],
                &query_table[(v + pos) * qkv..][..qkv],
            );
            for ((q, a), b) in q.iter_mut().zip(own_token).zip(own_pos) {
                *q = a + b;
            }
        });

    if s.attention_per_row() {
        attention_per_row(s, tokens, buf);
    } else {
        for head in 0..h {
            let q_head = Mat::cols(&buf.q, head * dh, b, dh, qkv);
            let keys = Mat::cols(&buf.key_table, head * dh, r, dh, qkv);
            let scores = MatMut::cols(&mut buf.table_scores, head * r, b, r, h * r);
            matmul(scores, q_head, keys.t(), 1.0, false);
        }
        attention_pattern(s, tokens, buf);
        for head in 0..h {
            let values = Mat::cols(&buf.value_table, head * dh, r, dh, qkv);
            if s.output_tables {
                // Each value-table row's contribution to the output: its OV row.
                let ov = MatMut::rows(&mut buf.ov_table[head * r * d..][..r * d], r, d);
                matmul(
                    ov,
                    values,
                    Mat::rows(&w.w_o[head * dh * d..], dh, d),
                    1.0,
                    false,
                );
            } else {
                let weights = Mat::cols(&buf.table_weights, head * r, b, r, h * r);
                let z = MatMut::cols(&mut buf.z, head * dh, b, dh, qkv);
                matmul(z, weights, values, 1.0, false);
            }
        }
    }

    // resid_mid = x + z W_O + b_O, with x = W_E[token] + W_pos[pos] the residual stream at the
    // query; W_O as [head * d_head, d_model] is its stored layout.
    buf.resid_mid
        .par_chunks_exact_mut(d)
        .enumerate()
        .with_min_len(rows_per_task(d))
        .for_each(|(row, x)| {
            let (pos, prefix) = s.prefix(tokens, row);
            let token = prefix[pos] as usize;
            let (e, p) = (&w.w_e[token * d..][..d], &w.w_pos[pos * d..][..d]);
            for (((x, e), p), b) in x.iter_mut().zip(e).zip(p).zip(w.b_o) {
                *x = e + p + b;
            }
        });
    if s.output_tables {
        // z W_O = sum over heads of the table weights times the OV rows.
        for head in 0..h {
            matmul(
                MatMut::rows(&mut buf.resid_mid, b, d),
                Mat::cols(&buf.table_weights, head * r, b, r, h * r),
                Mat::rows(&buf.ov_table[head * r * d..], r, d),
                1.0,
                true,
            );
        }
    } else {
        matmul(
            MatMut::rows(&mut buf.resid_mid, b, d),
            Mat::rows(&buf.z, b, qkv),
            Mat::rows(w.w_o, qkv, d),
            1.0,
            true,
        );
    }

    // MLP: post = ReLU(resid_mid W_in + b_in); resid_post = resid_mid + post W_out + b_out.
    // Biases are added in the parallel passes after each product, not broadcast before it.
    matmul(
        MatMut::rows(&mut buf.pre, b, m),
        Mat::rows(&buf.resid_mid, b, d),
        Mat::rows(w.w_in, d, m),
        1.0,
        false,
    );
    buf.pre
        .par_chunks_exact_mut(m)
        .zip(buf.post.par_chunks_exact_mut(m))
        .with_min_len(rows_per_task(m))
        .for_each(|(pre, post)| {
            for ((pre, post), b) in pre.iter_mut().zip(post).zip(w.b_in) {
                *pre += b;
                *post = pre.max(0.0);
            }
        });
    matmul(
        MatMut::rows(&mut buf.resid_post, b, d),
        Mat::rows(&buf.post, b, m),
        Mat::rows(w.w_out, m, d),
        1.0,
        false,
    );
    buf.resid_post
        .par_chunks_exact_mut(d)
        .zip(buf.resid_mid.par_chunks_exact(d))
        .with_min_len(rows_per_task(d))
        .for_each(|(y, x)| {
            for ((y, x), b) in y.iter_mut().zip(x).zip(w.b_out) {
                *y += x + b;
            }
        });

    matmul(
        MatMut::rows(&mut buf.result.logits, b, o),
        Mat::rows(&buf.resid_post, b, d),
        Mat::rows(w.w_u, d, o),
        1.0,
        false,
    );
    cross_entropy(s, w.b_u, buf);
}

/// The query table before biases and scale: with [`Shapes::queries_of_queried_rows`] only the
/// rows some query reads ([`queried_rows`]), the others zero, else every row. Queries are read
/// at the query positions only: in the prompt layout that is 2 of 24 rows, and at d_model 512
/// the full table's product had taken a third of the query, key and value tables' time. Each
/// row of a product is computed alone, so a queried row's bits are the same either way.
fn query_table(s: &Shapes, w: &Weights, tokens: &[u32], buf: &mut Buffers) {
    let (d, dh, qkv) = (s.d_model, s.d_head, s.qkv());
    let gathered = s.queries_of_queried_rows();
    // The rows to multiply by `W_Q` and where their queries go.
    let (rows_in, n, queries) = if gathered {
        queried_rows(s, tokens, &mut buf.queried);
        for (row_in, &row) in buf.queried_in.chunks_exact_mut(d).zip(&buf.queried) {
            row_in.copy_from_slice(&buf.table_in[row * d..][..d]);
        }
        (
            &buf.queried_in[..],
            buf.queried.len(),
            &mut buf.queried_out[..],
        )
    } else {
        (&buf.table_in[..], s.table_rows(), &mut buf.query_table[..])
    };
    let rows_in = Mat::rows(rows_in, n, d);
    for head in 0..s.n_heads {
        let dst = MatMut::cols(queries, head * dh, n, dh, qkv);
        matmul(dst, rows_in, Mat::head(w.w_q, head, d, dh), 1.0, false);
    }
    if gathered {
        buf.query_table.fill(0.0);
        for (product, &row) in buf.queried_out.chunks_exact(qkv).zip(&buf.queried) {
            buf.query_table[row * qkv..][..qkv].copy_from_slice(product);
        }
    }
}

/// Softmax over the positions up to the query of `q . (token key + position key)`, then the
/// attention mass per table row: a token row collects the mass of every position holding that
/// token; positions after the query get none.
///
/// Rows go in blocks: every row of a block is shifted by its largest score, the block's
/// exponentials are taken at once (rows of a dozen positions are too short for vectors, see
/// [`exp_in_place`]), then each row is normalised and gathered into table rows.
fn attention_pattern(s: &Shapes, tokens: &[u32], buf: &mut Buffers) {
    let (t, v, r, h) = (s.pos, s.d_vocab, s.table_rows(), s.n_heads);
    let rows = rows_per_task(h * (r + 8 * t));
    buf.table_scores
        .par_chunks(rows * h * r)
        .zip(buf.table_weights.par_chunks_mut(rows * h * r))
        .zip(buf.pattern.par_chunks_mut(rows * h * t))
        .enumerate()
        .for_each(|(block, ((scores, weights), pattern))| {
            let first_row = block * rows;
            let block_rows = scores
                .chunks_exact(h * r)
                .zip(pattern.chunks_exact_mut(h * t));
            for (i, (scores, pattern)) in block_rows.enumerate() {
                let (query, tokens) = s.prefix(tokens, first_row + i);
                for (scores, pattern) in scores.chunks_exact(r).zip(pattern.chunks_exact_mut(t)) {
                    let (token_scores, position_scores) = scores.split_at(v);
                    let (pattern, after_query) = pattern.split_at_mut(query + 1);
                    // e^-inf is 0: no mass after the query.
                    after_query.fill(f32::NEG_INFINITY);
                    let positions = pattern.iter_mut().zip(tokens).zip(position_scores);
                    for ((p, &token), &position_score) in positions {
                        *p = token_scores[token as usize] + position_score;
                    }
                    subtract_max(pattern);
                }
            }
            exp_in_place(pattern);
            let block_rows = weights
                .chunks_exact_mut(h * r)
                .zip(pattern.chunks_exact_mut(h * t));
            for (i, (weights, pattern)) in block_rows.enumerate() {
                let (query, tokens) = s.prefix(tokens, first_row + i);
                for (weights, pattern) in
                    weights.chunks_exact_mut(r).zip(pattern.chunks_exact_mut(t))
                {
                    let pattern = &mut pattern[..query + 1];
                    normalise(pattern);
                    let (token_weights, position_weights) = weights.split_at_mut(v);
                    token_weights.fill(0.0);
                    for (&p, &token) in pattern.iter().zip(tokens) {
                        token_weights[token as usize] += p;
                    }
                    position_weights[..query + 1].copy_from_slice(pattern);
                    position_weights[query + 1..].fill(0.0);
                }
            }
        });
}

/// The same pattern and `z` as the dense products and [`attention_pattern`], row by row over
/// each query's prefix (see [`Shapes::attention_per_row`]): scores are `q . (token key +
/// position key)` and `z` is the pattern's mix of `token value + position value`.
fn attention_per_row(s: &Shapes, tokens: &[u32], buf: &mut Buffers) {
    let (t, v, h, dh, qkv) = (s.pos, s.d_vocab, s.n_heads, s.d_head, s.qkv());
    let (keys, values) = (&buf.key_table, &buf.value_table);
    buf.q
        .par_chunks_exact(qkv)
        .zip(buf.pattern.par_chunks_exact_mut(h * t))
        .zip(buf.z.par_chunks_exact_mut(qkv))
        .enumerate()
        .with_min_len(rows_per_task(4 * t * qkv))
        .for_each(|(row, ((q, pattern), z))| {
            let (query, tokens) = s.prefix(tokens, row);
            for (head, pattern) in pattern.chunks_exact_mut(t).enumerate() {
                let first = head * dh;
                let q = &q[first..][..dh];
                pattern[query + 1..].fill(0.0);
                let pattern = &mut pattern[..query + 1];
                for (j, (p, &token)) in pattern.iter_mut().zip(tokens).enumerate() {
                    let key_token = head_row(keys, token as usize, qkv, first, dh);
                    let key_pos = head_row(keys, v + j, qkv, first, dh);
                    *p = dot(q, key_token) + dot(q, key_pos);
                }
                softmax_in_place(pattern);
                let z = &mut z[first..][..dh];
                z.fill(0.0);
                for (j, (&p, &token)) in pattern.iter().zip(tokens).enumerate() {
                    let value_token = head_row(values, token as usize, qkv, first, dh);
                    let value_pos = head_row(values, v + j, qkv, first, dh);
                    for ((z, a), b) in z.iter_mut().zip(value_token).zip(value_pos) {
                        *z += p * (a + b);
                    }
                }
            }
        });
}

/// Scores to their softmax, in place.
fn softmax_in_place(scores: &mut [f32]) {
    subtract_max(scores);
    scores.iter_mut().for_each(|p| *p = exp(*p));
    normalise(scores);
}

/// Subtracts the largest score from every score.
fn subtract_max(scores: &mut [f32]) {
    // A compare rather than `f32::max`, whose NaN handling lengthens the loop's dependency
    // chain; both skip NaN, and the sign of a zero maximum changes no `x - max`.
    let max = scores
        .iter()
        .fold(f32::NEG_INFINITY, |a, &x| if x > a { x } else { a });
    scores.iter_mut().for_each(|p| *p -= max);
}

/// Exponentials to probabilities: each divided by their float32 sum, added in order.
fn normalise(exps: &mut [f32]) {
    let sum: f32 = exps.iter().sum();
    exps.iter_mut().for_each(|p| *p /= sum);
}

/// `a . b`.
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(a, b)| a * b).sum()
}

/// Columns `first..first + len` of row `row` of a row-major table with rows of `width` (one
/// head's part of a query, key or value table row).
pub(super) fn head_row(
    table: &[f32],
    row: usize,
    width: usize,
    first: usize,
    len: usize,
) -> &[f32] {
    &table[row * width + first..][..len]
}

/// The most rows a block of [`cross_entropy`] takes (their largest logits' indices are kept
/// on the stack between its two passes).
const MAX_BLOCK_ROWS: usize = 256;

/// Adds the unembedding bias `b_u` to the logits, then the mean cross-entropy of the logits
/// over query rows, its gradient `(softmax - one_hot) / rows`, and the log's output statistics
/// from the same exponentials. Blocks of rows run in parallel, each taking its rows'
/// exponentials at once (as [`attention_pattern`] does); the losses are added in row order.
fn cross_entropy(s: &Shapes, b_u: &[f32], buf: &mut Buffers) {
    let (o, b) = (s.d_vocab_out, s.rows() as f32);
    let rows = rows_per_task(8 * o).min(MAX_BLOCK_ROWS);
    let result = &mut buf.result;
    result
        .logits
        .par_chunks_mut(rows * o)
        .zip(buf.d_logits.par_chunks_mut(rows * o))
        .zip(result.targets.par_chunks(rows))
        .zip(buf.row_loss.par_chunks_mut(rows))
        .zip(buf.row_stats.par_chunks_mut(rows))
        .for_each(|((((logits, d_logits), targets), losses), stats)| {
            // The softmax's terms, `exp(x - max)`, in `d_logits` until it is the gradient;
            // each row's first largest logit, between the two passes.
            let mut tops = [0; MAX_BLOCK_ROWS];
            let block_rows = logits.chunks_exact_mut(o).zip(d_logits.chunks_exact_mut(o));
            for ((logits, terms), top) in block_rows.zip(&mut tops) {
                logits.iter_mut().zip(b_u).for_each(|(x, b)| *x += b);
                *top = shift_by_max(logits, terms).0;
            }
            exp_in_place(d_logits);
            let block_rows = logits
                .chunks_exact(o)
                .zip(d_logits.chunks_exact_mut(o))
                .zip(targets)
                .zip(losses)
                .zip(stats)
                .zip(tops);
            for (((((logits, d_logits), &target), loss), stats), top) in block_rows {
                let max = logits[top];
                let sum: f32 = d_logits.iter().sum();
                let target = target as usize;
                *loss = f64::from(max + sum.ln() - logits[target]);
                *stats = row_stats(d_logits, sum, max, top, target);
                d_logits.iter_mut().for_each(|d| *d /= sum * b);
                d_logits[target] -= 1.0 / b;
            }
        });
    result.loss = (buf.row_loss.iter().sum::<f64>() / f64::from(b)) as f32;
    result.stats = Some(combine(
        &buf.row_stats,
        &result.logits,
        s.d_vocab_out,
        &result.targets,
        s.queries.len(),
    ));
}
