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
//! row-major left operand against a transposed right one, into at most 256 outputs). The
//! vectors are as wide as the CPU offers (16 floats with AVX-512, 8 with AVX2), which does not
//! change any output's chain. Without FMA (or off x86-64), products go to `gemm`.

use std::cell::RefCell;
use std::sync::OnceLock;

use super::{Mat, MatMut};
use crate::fused::aligned::Floats;
use crate::fused::kernel::Simd;

/// Floats of the right operand up to which a product is computed here: it stays in L1 (32
/// KiB) while every row of the output reads it. Larger products have enough arithmetic for
/// `gemm`'s blocking to pay.
const MAX_RHS: usize = 8192;

/// The longest summed dimension `gemm` sums in one block.
const MAX_DEPTH: usize = 512;

/// Columns of the narrow blocks, and the multiple the columns of a packed right operand are
/// padded to: one AVX-512 vector, two AVX2 vectors.
const WIDTH: usize = 16;

thread_local! {
    /// The right operand with cache-aligned rows of a multiple of [`WIDTH`] floats, when it
    /// has not (one per thread: products run on either thread).
    static PACKED: RefCell<Option<Floats>> = const { RefCell::new(None) };
}

/// The instruction set `multiply` runs with, if the CPU is an x86-64 with FMA.
fn simd() -> Option<Simd> {
    static SIMD: OnceLock<Option<Simd>> = OnceLock::new();
    *SIMD.get_or_init(|| match Simd::of_this_cpu() {
        simd @ (Simd::Avx512 | Simd::Fma) if cfg!(target_arch = "x86_64") => Some(simd),
        _ => None,
    })
}

/// Whether [`multiply`] computes `dst = a @ b` with `gemm`'s bits and is faster for it.
pub(super) fn applies(dst: &MatMut, a: &Mat, b: &Mat) -> bool {
    let dot_product_path = b.row_stride == 1 && a.col_stride == 1 && dst.rows * dst.cols <= 256;
    simd().is_some()
        && dst.rows >= 2
        && dst.cols >= 2
        && (3..=MAX_DEPTH).contains(&a.cols)
        && b.rows * b.cols <= MAX_RHS
        && !dot_product_path
}

/// `dst = a @ b * scale`, or `dst += a @ b * scale` when `accumulate`; only where
/// [`applies`].
pub(super) fn multiply(dst: MatMut, a: Mat, b: Mat, scale: f32, accumulate: bool) {
    let simd = simd().expect("`applies` checked for FMA");
    multiply_with(simd, dst, a, b, scale, accumulate);
}

/// [`multiply`] with the kernel for `simd` (AVX-512, or else AVX2 and FMA), which the CPU must
/// have.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn multiply_with(simd: Simd, dst: MatMut, a: Mat, b: Mat, scale: f32, accumulate: bool) {
    let (depth, cols) = (b.rows, b.cols);
    let padded = cols.next_multiple_of(WIDTH);
    let run = |b_rows: &[f32], b_stride: usize| {
        // SAFETY: the CPU has the features these functions are compiled for (see above).
        #[cfg(target_arch = "x86_64")]
        unsafe {
            match simd {
                Simd::Avx512 => {
                    rows_avx512(dst, a, b_rows, b_stride, scale, accumulate);
                }
                _ => rows_fma(dst, a, b_rows, b_stride, scale, accumulate),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("`applies` is false off x86-64")
    };
    // Rows that start on cache lines are read as they are. Others would be read split across
    // two lines at every vector load, which made products up to 1.8 times slower than copying
    // them first (`Vec<f32>` is 16-byte aligned).
    let aligned = |x: usize| x.is_multiple_of(4 * WIDTH);
    if b.col_stride == 1
        && cols == padded
        && aligned(b.data.as_ptr() as usize)
        && aligned(4 * b.row_stride)
    {
        return run(b.data, b.row_stride);
    }
    PACKED.with_borrow_mut(|packed| {
        let packed = packed.get_or_insert_with(|| Floats::zeros(0));
        // Columns past `cols` keep whatever an earlier product left there: they are summed
        // into outputs that are never stored.
        packed.set_len(depth * padded);
        if b.col_stride == 1 {
            for (p, row) in packed.chunks_exact_mut(padded).enumerate() {
                row[..cols].copy_from_slice(&b.data[p * b.row_stride..][..cols]);
            }
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
        run(packed, padded);
    });
}

/// One instruction set's kernel, in `__m512` or `__m256` vectors of `$lanes` floats: blocks of
/// `$wide_rows` rows by `$wide_vectors` vectors while the columns last (16 chains of sums with
/// AVX-512, for a `[_, 64]` output), then `$rows` rows by [`WIDTH`] columns. The sums are arrays of vectors, not of floats: the
/// compiler keeps those in registers, while arrays of floats it vectorised but stored back to
/// the stack after every multiply-add, which made the kernel slower than `gemm`.
macro_rules! kernel {
    ($rows_fn:ident, $block_fn:ident, $features:literal, $vector:ty, $lanes:literal,
     ($wide_rows:literal, $wide_vectors:literal), $rows:literal,
     $zero:ident, $load:ident, $store:ident, $splat:ident, $mul:ident, $fma:ident) => {
        /// All of `dst` (see [`multiply`]); `b` has rows of `b_stride` floats with `cols`
        /// rounded up to [`WIDTH`] readable.
        #[target_feature(enable = $features)]
        unsafe fn $rows_fn(
            dst: MatMut,
            a: Mat,
            b: &[f32],
            b_stride: usize,
            scale: f32,
            accumulate: bool,
        ) {
            let (rows, cols, depth) = (dst.rows, dst.cols, a.cols);
            assert!((depth - 1) * b_stride + cols.next_multiple_of(WIDTH) <= b.len());
            let mut out = Out {
                data: dst.data,
                row_stride: dst.row_stride,
                scale,
                accumulate,
            };
            // Wide blocks while the columns last, then blocks of `WIDTH`, the last one partial.
            let mut first_col = 0;
            while first_col < cols {
                let wide = first_col + $wide_vectors * $lanes <= cols;
                let width = if wide {
                    $wide_vectors * $lanes
                } else {
                    WIDTH.min(cols - first_col)
                };
                let mut row = 0;
                // SAFETY (every call): the rows are in `a` and `dst`, the columns in `b`.
                if wide {
                    while row + $wide_rows <= rows {
                        unsafe {
                            $block_fn::<$wide_rows, $wide_vectors>(
                                &mut out, a, b, b_stride, row, first_col, width,
                            )
                        };
                        row += $wide_rows;
                    }
                    for row in row..rows {
                        unsafe {
                            $block_fn::<1, $wide_vectors>(
                                &mut out, a, b, b_stride, row, first_col, width,
                            )
                        };
                    }
                } else {
                    while row + $rows <= rows {
                        unsafe {
                            $block_fn::<$rows, { WIDTH / $lanes }>(
                                &mut out, a, b, b_stride, row, first_col, width,
                            )
                        };
                        row += $rows;
                    }
                    for row in row..rows {
                        unsafe {
                            $block_fn::<1, { WIDTH / $lanes }>(
                                &mut out, a, b, b_stride, row, first_col, width,
                            )
                        };
                    }
                }
                first_col += width;
            }
        }

        /// Rows `first_row..first_row + ROWS`, columns `first_col..first_col + width` of the
        /// output: each a chain of fused multiply-adds over the summed dimension, in order.
        ///
        /// # Safety
        /// The rows must be rows of `a` and the output, and `b` must have [`WIDTH`] floats
        /// from `first_col` in each of its `a.cols` rows.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn $block_fn<const ROWS: usize, const VECTORS: usize>(
            out: &mut Out,
            a: Mat,
            b: &[f32],
            b_stride: usize,
            first_row: usize,
            first_col: usize,
            width: usize,
        ) {
            let (a_ptr, b_ptr) = (a.data.as_ptr(), b.as_ptr());
            let mut sums: [[$vector; VECTORS]; ROWS] = [[$zero(); VECTORS]; ROWS];
            for p in 0..a.cols {
                let b_row = unsafe { b_ptr.add(p * b_stride + first_col) };
                let b_row: [$vector; VECTORS] =
                    std::array::from_fn(|v| unsafe { $load(b_row.add(v * $lanes)) });
                for (r, sums) in sums.iter_mut().enumerate() {
                    let x =
                        unsafe { *a_ptr.add((first_row + r) * a.row_stride + p * a.col_stride) };
                    let x = $splat(x);
                    for (sum, &y) in sums.iter_mut().zip(&b_row) {
                        *sum = $fma(y, x, *sum);
                    }
                }
            }
            let scale = $splat(out.scale);
            for (r, sums) in sums.iter().enumerate() {
                let row = &mut out.data[(first_row + r) * out.row_stride + first_col..][..width];
                if width == VECTORS * $lanes {
                    for (v, &sum) in sums.iter().enumerate() {
                        let y = unsafe { row.as_mut_ptr().add(v * $lanes) };
                        let result = if out.accumulate {
                            $fma(scale, sum, unsafe { $load(y) })
                        } else {
                            $mul(scale, sum)
                        };
                        unsafe { $store(y, result) };
                    }
                } else {
                    let mut lanes = [[0.0f32; $lanes]; VECTORS];
                    for (v, &sum) in sums.iter().enumerate() {
                        unsafe { $store(lanes[v].as_mut_ptr(), sum) };
                    }
                    for (y, sum) in row.iter_mut().zip(lanes.into_iter().flatten()) {
                        *y = if out.accumulate {
                            out.scale.mul_add(sum, *y)
                        } else {
                            out.scale * sum
                        };
                    }
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

// Eight chains of one vector each: enough to keep the FMA units busy.
#[cfg(target_arch = "x86_64")]
kernel!(
    rows_avx512,
    block_avx512,
    "avx512f,avx2,fma",
    __m512,
    16,
    (4, 4),
    8,
    _mm512_setzero_ps,
    _mm512_loadu_ps,
    _mm512_storeu_ps,
    _mm512_set1_ps,
    _mm512_mul_ps,
    _mm512_fmadd_ps
);
// Four rows of two vectors each: eight chains, and room in AVX2's sixteen registers.
#[cfg(target_arch = "x86_64")]
kernel!(
    rows_fma,
    block_fma,
    "avx2,fma",
    __m256,
    8,
    (4, 2),
    4,
    _mm256_setzero_ps,
    _mm256_loadu_ps,
    _mm256_storeu_ps,
    _mm256_set1_ps,
    _mm256_mul_ps,
    _mm256_fmadd_ps
);

/// Where and how a block's sums are stored.
struct Out<'a> {
    data: &'a mut [f32],
    row_stride: usize,
    scale: f32,
    accumulate: bool,
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
    /// that is some columns of a wider matrix), assigned and accumulated, scaled and not, by
    /// each kernel this CPU can run: the same bits as `gemm`, which computes the same sums in
    /// its own code.
    #[test]
    fn products_have_gemm_bits() {
        let Some(simd) = simd() else {
            eprintln!("skipped: this CPU has no FMA, so small products go to `gemm` itself");
            return;
        };
        let kernels: &[Simd] = if simd == Simd::Avx512 {
            &[Simd::Avx512, Simd::Fma]
        } else {
            eprintln!("AVX-512 kernel not tested: this CPU does not have AVX-512");
            &[Simd::Fma]
        };
        for &kernel in kernels {
            products_have_gemm_bits_with(kernel);
        }
    }

    fn products_have_gemm_bits_with(kernel: Simd) {
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
                multiply_with(kernel, dst, a, b, scale, accumulate);
                let dst = MatMut::strided(&mut by_gemm[1..], m, n, width);
                let ptr = dst.data.as_mut_ptr();
                // SAFETY: `dst` is a checked view of its own buffer.
                unsafe { gemm_into(ptr, 1, width as isize, accumulate, &dst, a, b, scale) };
                for (i, (x, y)) in here.iter().zip(&by_gemm).enumerate() {
                    assert_eq!(
                        x.to_bits(),
                        y.to_bits(),
                        "{kernel:?}: [{m}, {k}] @ [{k}, {n}], a^T {a_t}, b^T {b_t}, scale {scale}, \
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
