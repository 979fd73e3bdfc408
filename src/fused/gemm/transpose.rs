//! A 16 x 16 tile of a column-major product written row-major, transposed in AVX-512
//! registers.
//!
//! [`super::add_transposed`] moves every column-major product of the transposed-weight path
//! into place. Moved a float at a time through a tile on the stack, that was 3% of a d_model
//! 512 step (`d_pre`, 128 x 2,048 floats, every step). Sixteen vector loads, four rounds of
//! shuffles and sixteen vector stores do the same; the floats, and the sums when accumulating,
//! are the same bits. No crate offers an in-register transpose, so this one is written here.

use std::arch::x86_64::*;

/// Rows `0..16` of `columns`' 16 columns (column `j` starting at `columns[j * column_stride]`)
/// written to (or added to, when `accumulate`) 16 rows of 16 floats of `out`, row `i`
/// starting at `out[i * row_stride]`.
///
/// # Safety
/// The CPU must have AVX-512F, and both slices must hold what those strides reach.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn tile(
    columns: &[f32],
    column_stride: usize,
    out: &mut [f32],
    row_stride: usize,
    accumulate: bool,
) {
    assert!(columns.len() >= 15 * column_stride + 16 && out.len() >= 15 * row_stride + 16);
    // SAFETY: the assertion keeps every load and store inside the slices.
    unsafe {
        let mut r: [__m512; 16] =
            std::array::from_fn(|j| _mm512_loadu_ps(columns.as_ptr().add(j * column_stride)));
        let mut t = r;
        // Interleave floats of column pairs, then pairs of floats, then 128-bit lanes twice:
        // afterwards r[i] holds float i of every column, in column order.
        for k in 0..8 {
            t[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
            t[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
        }
        let pd = _mm512_castps_pd;
        for k in 0..4 {
            let b = 4 * k;
            r[b] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(t[b]), pd(t[b + 2])));
            r[b + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(t[b]), pd(t[b + 2])));
            r[b + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(t[b + 1]), pd(t[b + 3])));
            r[b + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(t[b + 1]), pd(t[b + 3])));
        }
        for g in [0, 8] {
            for q in 0..4 {
                t[g + q] = _mm512_shuffle_f32x4::<0x88>(r[g + q], r[g + q + 4]);
                t[g + q + 4] = _mm512_shuffle_f32x4::<0xdd>(r[g + q], r[g + q + 4]);
            }
        }
        for q in 0..8 {
            r[q] = _mm512_shuffle_f32x4::<0x88>(t[q], t[q + 8]);
            r[q + 8] = _mm512_shuffle_f32x4::<0xdd>(t[q], t[q + 8]);
        }
        for (i, row) in r.iter().enumerate() {
            let at = out.as_mut_ptr().add(i * row_stride);
            let row = if accumulate {
                _mm512_add_ps(_mm512_loadu_ps(at), *row)
            } else {
                *row
            };
            _mm512_storeu_ps(at, row);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every float lands in its place, assigned and added, against plain loops.
    #[test]
    fn a_tile_is_the_transpose() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            eprintln!("skipped: this CPU has no AVX-512, which the tile needs");
            return;
        }
        let (column_stride, row_stride) = (21, 19);
        let columns: Vec<f32> = (0..16 * column_stride)
            .map(|x| x as f32 * 0.5 - 7.0)
            .collect();
        for accumulate in [false, true] {
            let mut out: Vec<f32> = (0..16 * row_stride).map(|x| x as f32 * 0.25).collect();
            let before = out.clone();
            // SAFETY: the CPU has AVX-512F (checked above); the slices hold 16 strides each.
            unsafe { tile(&columns, column_stride, &mut out, row_stride, accumulate) };
            for i in 0..16 {
                for j in 0..row_stride {
                    let old = before[i * row_stride + j];
                    let expected = if j < 16 {
                        let x = columns[j * column_stride + i];
                        if accumulate {
                            old + x
                        } else {
                            x
                        }
                    } else {
                        old
                    };
                    assert_eq!(
                        out[i * row_stride + j].to_bits(),
                        expected.to_bits(),
                        "({i}, {j})"
                    );
                }
            }
        }
    }
}
