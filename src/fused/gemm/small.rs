//! Small matrix products by hand, with the bits `gemm` gives them.
//!
//! At d_model 16 a step makes about two dozen products of a few thousand to a hundred
//! thousand multiply-adds each. `gemm` spends more time around such a product (choosing
//! blocks, allocating and packing its operands) than in it: 1.0 to 1.5 µs for `[128, 16] @
//! [16, 16]`, where this kernel takes 0.6 (2,048 vector multiply-adds; best of 30 repeats on a
//! 2-core AVX-512 Xeon). No crate offers a small-product kernel that also reproduces `gemm`'s
//! rounding, and runs must keep their bytes, so this one is written here.
//!
//! `gemm`'s micro-kernel computes every output as one chain of fused multiply-adds over the
//! summed dimension, in order from its first term, starting from zero, then scales it (or
//! adds it to the destination with one more fused multiply-add). That is what [`multiply`]
//! does, so the results are the same bits, as long as `gemm` would take that path: a summed
//! dimension of 3 to 512 (one block; 1 and 2 go through its outer-product path), at least two
//! rows and two columns (one is a matrix-vector product), and not its dot-product path (a
//! row-major left operand against a transposed right one, into at most 256 outputs).
//!
//! The kernel needs AVX-512; elsewhere products go to `gemm` as before. An AVX2 version (two
//! 8-float vectors where AVX-512 has one) was slower on the d_model 16 step's products than
//! `gemm` on this machine (57 µs against 52 for all of them, though `gemm` ran its AVX-512
//! kernels there), and `gemm`'s AVX2 kernels could not be timed beside it, so it was left out
//! rather than risk making AVX2 machines slower.

use std::arch::x86_64::*;
use std::cell::RefCell;

use super::{Mat, MatMut};
use crate::fused::aligned::Floats;
use crate::fused::kernel::Simd;

/// Floats of the right operand up to which a product is computed here: it stays in L1 (32
/// KiB) while every row of the output reads it. Larger products have enough arithmetic for
/// `gemm`'s blocking to pay.
const MAX_RHS: usize = 8192;

/// The longest summed dimension `gemm` sums in one block.
const MAX_DEPTH: usize = 512;

/// Floats in an AVX-512 vector: the columns of a narrow block, and the multiple the columns of
/// a packed right operand are padded to.
const WIDTH: usize = 16;

/// Blocks of four rows by four vectors (64 columns, sixteen chains of sums) while the
/// columns last; the last columns in blocks of one to three vectors, with enough rows for eight
/// to twelve chains, which keep both FMA units busy.
const WIDE_VECTORS: usize = 4;

thread_local! {
    /// The right operand with cache-aligned rows of a multiple of [`WIDTH`] floats, when it
    /// has not (one per thread: products run on either thread).
    static PACKED: RefCell<Option<Floats>> = const { RefCell::new(None) };
}

/// Whether this CPU has AVX-512 (and FMA, which `gemm`'s chains use).
fn has_avx512() -> bool {
    Simd::of_this_cpu() == Simd::Avx512
}

/// Whether [`multiply`] computes `dst = a @ b` with `gemm`'s bits and is faster for it.
pub(super) fn applies(dst: &MatMut, a: &Mat, b: &Mat) -> bool {
    let dot_product_path = b.row_stride == 1 && a.col_stride == 1 && dst.rows * dst.cols <= 256;
    has_avx512()
        && dst.rows >= 2
        && dst.cols >= 2
        && (3..=MAX_DEPTH).contains(&a.cols)
        && b.rows * b.cols <= MAX_RHS
        && !dot_product_path
}

/// `dst = a @ b * scale`, or `dst += a @ b * scale` when `accumulate`; only where
/// [`applies`].
pub(super) fn multiply(dst: MatMut, a: Mat, b: Mat, scale: f32, accumulate: bool) {
    let (depth, cols) = (b.rows, b.cols);
    let padded = cols.next_multiple_of(WIDTH);
    // SAFETY (both calls): `applies` found AVX-512, which `all_blocks` is compiled for.
    // Rows that start on cache lines are read as they are. Others would be read split across
    // two lines at every vector load, which made products up to 1.8 times slower than copying
    // them first (`Vec<f32>` is 16-byte aligned).
    let aligned = |x: usize| x.is_multiple_of(4 * WIDTH);
    if b.col_stride == 1
        && cols == padded
        && aligned(b.data.as_ptr() as usize)
        && aligned(4 * b.row_stride)
    {
        return unsafe { all_blocks(dst, a, b.data, b.row_stride, scale, accumulate) };
    }
    PACKED.with_borrow_mut(|packed| {
        let packed = packed.get_or_insert_with(|| Floats::zeros(0));
        // Columns past `cols` keep whatever an earlier product left there: they are summed
        // into outputs that are never stored.
        packed.set_len(depth * padded);
        if b.col_stride == 1 {
            // SAFETY: `applies` found AVX-512; the view's constructor checked its rows, and
            // `packed` holds `depth` rows of `padded` floats.
            unsafe { copy_rows(b.data, b.row_stride, packed, padded, depth, cols) };
        } else {
            // Element by element through pointers, the strides in locals: with bounds checks,
            // or with the strides read from the view after every store (which might have
            // changed them, as far as the compiler knew), this copy took as long as the
            // product. The view's constructor checked every element of `b`.
            let (from, to) = (b.data.as_ptr(), packed.as_mut_ptr());
            let (row_stride, col_stride) = (b.row_stride, b.col_stride);
            for p in 0..depth {
                for j in 0..cols {
                    // SAFETY: `(p, j)` is an element of `b` and of the `[depth, padded]` copy.
                    unsafe { *to.add(p * padded + j) = *from.add(p * row_stride + j * col_stride) };
                }
            }
        }
        unsafe { all_blocks(dst, a, packed, padded, scale, accumulate) };
    });
}

/// All of `dst` (see [`multiply`]) in blocks: wide ones while the columns last, then narrow
/// ones of [`WIDTH`] columns, the last one partial. `b` has rows of `b_stride` floats with
/// `cols` rounded up to [`WIDTH`] readable.
///
/// # Safety
/// The CPU must have AVX-512.
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn all_blocks(
    dst: MatMut,
    a: Mat,
    b: &[f32],
    b_stride: usize,
    scale: f32,
    accumulate: bool,
) {
    let (cols, depth) = (dst.cols, a.cols);
    assert!((depth - 1) * b_stride + cols.next_multiple_of(WIDTH) <= b.len());
    let mut out = Out {
        data: dst.data,
        row_stride: dst.row_stride,
        scale,
        accumulate,
    };
    let mut first_col = 0;
    while first_col < cols {
        let width = (cols - first_col).min(WIDE_VECTORS * WIDTH);
        // SAFETY (every call): the rows are in `a` and `dst`, the columns in `b` (asserted).
        unsafe {
            match width.div_ceil(WIDTH) {
                4 => blocks::<4, 4>(&mut out, a, b, b_stride, first_col, width),
                3 => blocks::<4, 3>(&mut out, a, b, b_stride, first_col, width),
                2 => blocks::<6, 2>(&mut out, a, b, b_stride, first_col, width),
                _ => blocks::<8, 1>(&mut out, a, b, b_stride, first_col, width),
            }
        }
        first_col += width;
    }
}

/// Columns `first_col..first_col + width` of every output row, in blocks of `ROWS` rows, the
/// rows left over one at a time.
///
/// # Safety
/// As for [`block`].
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn blocks<const ROWS: usize, const VECTORS: usize>(
    out: &mut Out,
    a: Mat,
    b: &[f32],
    b_stride: usize,
    first_col: usize,
    width: usize,
) {
    let mut row = 0;
    while row + ROWS <= a.rows {
        unsafe { block::<ROWS, VECTORS>(out, a, b, b_stride, row, first_col, width) };
        row += ROWS;
    }
    for row in row..a.rows {
        unsafe { block::<1, VECTORS>(out, a, b, b_stride, row, first_col, width) };
    }
}

/// Where and how a block's sums are stored.
struct Out<'a> {
    data: &'a mut [f32],
    row_stride: usize,
    scale: f32,
    accumulate: bool,
}

/// Rows `first_row..first_row + ROWS`, columns `first_col..first_col + width` of the output:
/// each a chain of fused multiply-adds over the summed dimension, in order. The sums are
/// arrays of vectors, not of floats: the compiler keeps those in registers, while arrays of
/// floats it vectorised but stored back to the stack after every multiply-add, which made the
/// kernel slower than `gemm`.
///
/// # Safety
/// The CPU must have AVX-512; the rows must be rows of `a` and the output, and `b` must have
/// `VECTORS * WIDTH` floats from `first_col` in each of its `a.cols` rows.
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn block<const ROWS: usize, const VECTORS: usize>(
    out: &mut Out,
    a: Mat,
    b: &[f32],
    b_stride: usize,
    first_row: usize,
    first_col: usize,
    width: usize,
) {
    let (a_ptr, b_ptr) = (a.data.as_ptr(), b.as_ptr());
    let mut sums = [[_mm512_setzero_ps(); VECTORS]; ROWS];
    for p in 0..a.cols {
        let b_row = unsafe { b_ptr.add(p * b_stride + first_col) };
        let b_row: [__m512; VECTORS] =
            std::array::from_fn(|v| unsafe { _mm512_loadu_ps(b_row.add(v * WIDTH)) });
        for (r, sums) in sums.iter_mut().enumerate() {
            let x = unsafe { *a_ptr.add((first_row + r) * a.row_stride + p * a.col_stride) };
            let x = _mm512_set1_ps(x);
            for (sum, &y) in sums.iter_mut().zip(&b_row) {
                *sum = _mm512_fmadd_ps(y, x, *sum);
            }
        }
    }
    let scale = _mm512_set1_ps(out.scale);
    for (r, sums) in sums.iter().enumerate() {
        let row = &mut out.data[(first_row + r) * out.row_stride + first_col..][..width];
        for (v, &sum) in sums.iter().enumerate() {
            // The last vector of a block may be partial (10 logits, 24 table rows): its
            // lanes past `width` are neither read nor written. The same multiply-add as a
            // float at a time, so the bits do not depend on where a block ends.
            let mask = lanes(width - v * WIDTH);
            let y = unsafe { row.as_mut_ptr().add(v * WIDTH) };
            let result = if out.accumulate {
                _mm512_fmadd_ps(scale, sum, unsafe { _mm512_maskz_loadu_ps(mask, y) })
            } else {
                _mm512_mul_ps(scale, sum)
            };
            unsafe { _mm512_mask_storeu_ps(y, mask, result) };
        }
    }
}

/// The mask of the first `n` lanes of a vector (all of them from [`WIDTH`] on).
#[inline(always)]
fn lanes(n: usize) -> __mmask16 {
    if n >= WIDTH {
        !0
    } else {
        (1 << n) - 1
    }
}

/// Copies `rows` rows of `cols` floats, `from_stride` apart, into rows `to_stride` apart (a
/// multiple of [`WIDTH`] at least `cols`), a vector at a time, the last one masked. A
/// `copy_from_slice` per row called `memcpy` for every row of ten logits, which took as long
/// as the product.
///
/// # Safety
/// The CPU must have AVX-512; `from` must hold the rows and `to` `rows * to_stride` floats.
#[target_feature(enable = "avx512f")]
unsafe fn copy_rows(
    from: &[f32],
    from_stride: usize,
    to: &mut [f32],
    to_stride: usize,
    rows: usize,
    cols: usize,
) {
    assert!(
        rows == 0
            || ((rows - 1) * from_stride + cols <= from.len() && rows * to_stride <= to.len())
    );
    for i in 0..rows {
        let (from, to) = unsafe {
            (
                from.as_ptr().add(i * from_stride),
                to.as_mut_ptr().add(i * to_stride),
            )
        };
        for c in (0..cols).step_by(WIDTH) {
            unsafe {
                let x = _mm512_maskz_loadu_ps(lanes(cols - c), from.add(c));
                _mm512_storeu_ps(to.add(c), x);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::gemm_into;
    use super::*;

    /// A deterministic spread of positive and negative floats of many magnitudes.
    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                let x = ((i as u32).wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(40_503)) as f32;
                (x / u32::MAX as f32 - 0.5) * (1.0 + (i % 7) as f32)
            })
            .collect()
    }

    /// Every layout the fused step multiplies (row-major and transposed operands, an output
    /// that is some columns of a wider matrix), assigned and accumulated, scaled and not: the
    /// same bits as `gemm`, which computes the same sums in its own code.
    #[test]
    fn products_have_gemm_bits() {
        if !has_avx512() {
            eprintln!("skipped: this CPU has no AVX-512, so small products go to `gemm` itself");
            return;
        }
        let mut computed_here = 0;
        for (m, k, n) in [
            (2, 3, 2),
            (128, 16, 16),
            (128, 16, 64),
            (128, 64, 16),
            (16, 128, 64),
            (64, 128, 16),
            (128, 26, 16),
            (128, 16, 26),
            (26, 16, 16),
            (16, 26, 16),
            (9, 512, 10),
            (17, 5, 33),
            (128, 128, 10),
            (7, 100, 3),
        ] {
            for (a_t, b_t, scale, accumulate) in [
                (false, false, 1.0, false),
                (false, true, 0.25, false),
                (true, false, 1.0, true),
                (true, true, 0.37, true),
            ] {
                let a_data = values(m * k, 1);
                let b_data = values(k * n, 2);
                let a = if a_t {
                    Mat::rows(&a_data, k, m).t()
                } else {
                    Mat::rows(&a_data, m, k)
                };
                let b = if b_t {
                    Mat::rows(&b_data, n, k).t()
                } else {
                    Mat::rows(&b_data, k, n)
                };
                // The output: columns 1..n+1 of an [m, n + 3] matrix.
                let width = n + 3;
                let start = values(m * width, 3);
                let (mut here, mut by_gemm) = (start.clone(), start);
                let dst = MatMut::strided(&mut here[1..], m, n, width);
                if !applies(&dst, &a, &b) {
                    continue;
                }
                computed_here += 1;
                multiply(dst, a, b, scale, accumulate);
                let dst = MatMut::strided(&mut by_gemm[1..], m, n, width);
                let ptr = dst.data.as_mut_ptr();
                // SAFETY: `dst` is a checked view of its own buffer.
                unsafe { gemm_into(ptr, 1, width as isize, accumulate, &dst, a, b, scale) };
                for (i, (x, y)) in here.iter().zip(&by_gemm).enumerate() {
                    assert_eq!(
                        x.to_bits(),
                        y.to_bits(),
                        "[{m}, {k}] @ [{k}, {n}], a^T {a_t}, b^T {b_t}, scale {scale}, \
                         accumulate {accumulate}: element {i}, {x} here, {y} by gemm"
                    );
                }
            }
        }
        assert!(
            computed_here >= 40,
            "only {computed_here} products computed here"
        );
    }
}
