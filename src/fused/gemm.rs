//! Matrix products of the fused step: strided views over plain `f32` slices, multiplied by the
//! `gemm` crate directly, or, when small, by [`small`]'s kernel with the same bits.
//!
//! Views carry their own strides, so transposes and single heads of `[head, d_model, d_head]`
//! tensors are read in place, never copied. `gemm` picks its micro-kernel at run time (see
//! [`super::kernel`]) and splits a product over rayon's pool only along output tiles, never along
//! the summed dimension, so the bytes do not depend on the number of threads.

#[cfg(target_arch = "x86_64")]
mod small;
#[cfg(target_arch = "x86_64")]
mod transpose;

use ::gemm::Parallelism;
use rayon::prelude::*;

/// A read-only matrix view: element `(i, j)` is `data[i * row_stride + j * col_stride]`.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

/// A writable matrix view, laid out as [`Mat`].
pub struct MatMut<'a> {
    data: &'a mut [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
}

impl<'a> Mat<'a> {
    /// A row-major `[rows, cols]` matrix at the start of `data`.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> Mat<'a> {
        Mat::strided(data, rows, cols, cols, 1)
    }

    /// Any layout; panics if the view reaches past `data` (a bug in the caller's shapes).
    pub fn strided(
        data: &'a [f32],
        rows: usize,
        cols: usize,
        row_stride: usize,
        col_stride: usize,
    ) -> Mat<'a> {
        let last = (rows.max(1) - 1) * row_stride + (cols.max(1) - 1) * col_stride;
        assert!(
            rows == 0 || cols == 0 || last < data.len(),
            "matrix view out of bounds"
        );
        Mat {
            data,
            rows,
            cols,
            row_stride,
            col_stride,
        }
    }

    /// Columns `first..first + width` of a row-major matrix with rows of `stride` (one head of
    /// a `[rows, head * d_head]` matrix).
    pub fn cols(
        data: &'a [f32],
        first: usize,
        rows: usize,
        width: usize,
        stride: usize,
    ) -> Mat<'a> {
        Mat::strided(&data[first..], rows, width, stride, 1)
    }

    /// Head `head` of a `[head, rows, cols]` tensor, as a row-major `[rows, cols]` matrix.
    pub fn head(data: &'a [f32], head: usize, rows: usize, cols: usize) -> Mat<'a> {
        Mat::rows(&data[head * rows * cols..][..rows * cols], rows, cols)
    }

    /// The transpose, as a view of the same memory.
    pub fn t(self) -> Mat<'a> {
        Mat {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }
}

impl<'a> MatMut<'a> {
    /// A row-major `[rows, cols]` matrix at the start of `data`.
    pub fn rows(data: &'a mut [f32], rows: usize, cols: usize) -> MatMut<'a> {
        MatMut::strided(data, rows, cols, cols)
    }

    /// Writable [`Mat::cols`].
    pub fn cols(
        data: &'a mut [f32],
        first: usize,
        rows: usize,
        width: usize,
        stride: usize,
    ) -> MatMut<'a> {
        MatMut::strided(&mut data[first..], rows, width, stride)
    }

    /// `[rows, cols]` with unit column stride and the given row stride (one head's columns of
    /// a `[rows, head * d_head]` matrix).
    pub fn strided(data: &'a mut [f32], rows: usize, cols: usize, row_stride: usize) -> MatMut<'a> {
        assert!(
            rows == 0 || cols == 0 || (rows - 1) * row_stride + cols <= data.len(),
            "matrix view out of bounds"
        );
        MatMut {
            data,
            rows,
            cols,
            row_stride,
        }
    }
}

/// Floats of a transposed `b` (a weight read as `W^T`) from which [`matmul`] computes the product
/// column-major and transposes it into `dst`. `gemm` lays a row-major product out as its
/// transpose, `b^T a^T`, which makes such a `b` a row-major left operand that it packs,
/// transposing, for every block of the summed dimension. A column-major product reads it in
/// place instead. At d_model 512 on two threads: `d_pre @ W_in^T` (`[128, 2048] @ [2048, 512]`)
/// 1.5 ms against 2.7; `d_mid @ W_O^T` 0.46 against 0.85; the query, key and value tables'
/// `d_table @ W^T` (`[24, 512] @ [512, 512]`) 0.15 against 0.58. At d_model 128 and below
/// (weights of 64K floats or fewer) the direct call is as fast or faster.
const TRANSPOSED_WEIGHT: usize = 1 << 18;

thread_local! {
    /// The column-major product of [`matmul`]'s transposed-weight path, grown to the largest
    /// product and kept (one per thread: side tasks multiply on either thread).
    static COLUMN_MAJOR: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `dst = a @ b * scale`, or `dst += a @ b * scale` when `accumulate`.
pub fn matmul(dst: MatMut, a: Mat, b: Mat, scale: f32, accumulate: bool) {
    assert!(
        a.rows == dst.rows && b.cols == dst.cols && a.cols == b.rows,
        "matmul shapes: [{}, {}] @ [{}, {}] into [{}, {}]",
        a.rows,
        a.cols,
        b.rows,
        b.cols,
        dst.rows,
        dst.cols
    );
    if dst.rows == 0 || dst.cols == 0 {
        return;
    }
    if a.cols == 0 {
        if !accumulate {
            for i in 0..dst.rows {
                dst.data[i * dst.row_stride..][..dst.cols].fill(0.0);
            }
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if small::applies(&dst, &a, &b) {
        return small::multiply(dst, a, b, scale, accumulate);
    }
    if b.row_stride == 1 && b.col_stride != 1 && b.rows * b.cols >= TRANSPOSED_WEIGHT {
        COLUMN_MAJOR.with_borrow_mut(|product| {
            product.resize(product.len().max(dst.rows * dst.cols), 0.0);
            let product = &mut product[..dst.rows * dst.cols];
            // SAFETY: `product` holds `rows * cols` floats, read as column-major
            // `[rows, cols]`; the views were checked by their constructors.
            unsafe {
                gemm_into(
                    product.as_mut_ptr(),
                    dst.rows as isize,
                    1,
                    false,
                    &dst,
                    a,
                    b,
                    scale,
                )
            };
            add_transposed(dst, product, accumulate);
        });
        return;
    }
    // SAFETY: the constructors checked that every view stays inside its slice; `dst` is borrowed
    // mutably, so it overlaps neither input.
    let (ptr, row_stride) = (dst.data.as_mut_ptr(), dst.row_stride as isize);
    unsafe { gemm_into(ptr, 1, row_stride, accumulate, &dst, a, b, scale) };
}

/// The `gemm` call: `a @ b * scale` into `dst_rows` x `dst_cols` floats at `out`, with the
/// given strides, added to what is there when `accumulate`.
///
/// # Safety
/// `out` with those strides must stay inside memory the caller may write, overlapping
/// neither `a` nor `b`.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_into(
    out: *mut f32,
    col_stride: isize,
    row_stride: isize,
    accumulate: bool,
    dst: &MatMut,
    a: Mat,
    b: Mat,
    scale: f32,
) {
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    unsafe {
        ::gemm::gemm(
            dst.rows,
            dst.cols,
            a.cols,
            out,
            col_stride,
            row_stride,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `dst = product^T` (or `+=` when `accumulate`), `product` column-major `[rows, cols]`, in
/// blocks of 16 rows, in parallel, each through 16 x 16 tiles so that every cache line of
/// `product` and of `dst` is touched once per tile. Writing `dst` a float at a time down its
/// columns had cost 6% of a d_model 512 step: the 16 rows of a block lie a row stride apart
/// (2 KiB at d_model 512), in the same few sets of the L1 cache.
fn add_transposed(dst: MatMut, product: &[f32], accumulate: bool) {
    const TILE: usize = 16;
    let (rows, cols, stride) = (dst.rows, dst.cols, dst.row_stride);
    #[cfg(target_arch = "x86_64")]
    let in_registers = super::kernel::Simd::of_this_cpu() == super::kernel::Simd::Avx512;
    // The view's floats only: a view of some columns reaches on to the end of its buffer.
    dst.data[..(rows - 1) * stride + cols]
        .par_chunks_mut(TILE * stride)
        .enumerate()
        .for_each(|(block, out)| {
            let first = block * TILE;
            let n = TILE.min(rows - first);
            let mut tile = [[0f32; TILE]; TILE];
            for j0 in (0..cols).step_by(TILE) {
                let width = TILE.min(cols - j0);
                #[cfg(target_arch = "x86_64")]
                if in_registers && n == TILE && width == TILE {
                    let columns = &product[j0 * rows + first..];
                    let out = &mut out[j0..];
                    // SAFETY: the CPU has AVX-512F; the tile's 16 columns of 16 rows lie in
                    // `product`, its 16 rows of 16 columns in this block of `dst`.
                    unsafe { transpose::tile(columns, rows, out, stride, accumulate) };
                    continue;
                }
                for (jj, column) in product[j0 * rows..].chunks(rows).take(width).enumerate() {
                    for (i, &x) in column[first..][..n].iter().enumerate() {
                        tile[i][jj] = x;
                    }
                }
                for (i, row) in tile[..n].iter().enumerate() {
                    let out = &mut out[i * stride + j0..][..width];
                    if accumulate {
                        for (o, &x) in out.iter_mut().zip(row) {
                            *o += x;
                        }
                    } else {
                        out.copy_from_slice(&row[..width]);
                    }
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A weight read transposed and large enough for the column-major path, into some
    /// columns of a wider matrix, assigned and accumulated, against plain f64 loops.
    #[test]
    fn large_transposed_weights_match_plain_loops() {
        let (m, k, n) = (19, 1024, 515);
        assert!(k * n >= TRANSPOSED_WEIGHT);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        // The weight stored as [n, k], read as [k, n].
        let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.91).cos()).collect();
        let width = n + 3;
        let dot = |i: usize, j: usize| -> f64 {
            (0..k)
                .map(|p| f64::from(a[i * k + p]) * f64::from(w[j * k + p]))
                .sum()
        };
        for accumulate in [false, true] {
            let mut dst = vec![2.0f32; m * width];
            matmul(
                MatMut::strided(&mut dst[1..], m, n, width),
                Mat::rows(&a, m, k),
                Mat::rows(&w, n, k).t(),
                0.5,
                accumulate,
            );
            for i in 0..m {
                for j in 0..width {
                    let expected = if (1..=n).contains(&j) {
                        0.5 * dot(i, j - 1) + if accumulate { 2.0 } else { 0.0 }
                    } else {
                        2.0
                    };
                    let got = f64::from(dst[i * width + j]);
                    assert!(
                        (got - expected).abs() < 1e-3,
                        "({i}, {j}), accumulate {accumulate}: {got} vs {expected}"
                    );
                }
            }
        }
    }

    /// Products of transposed and strided views against plain f64 loops.
    #[test]
    fn strided_products_match_plain_loops() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        // b stored transposed, [n, k], and read as [k, n].
        let bt: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.91).cos()).collect();
        // dst is columns 2..5 of a [m, 6] matrix, starting from ones.
        let mut dst = vec![1.0f32; m * 6];
        matmul(
            MatMut::strided(&mut dst[2..], m, n, 6),
            Mat::rows(&a, m, k),
            Mat::rows(&bt, n, k).t(),
            0.5,
            true,
        );
        for i in 0..m {
            for j in 0..6 {
                let expected = if (2..5).contains(&j) {
                    let dot: f64 = (0..k)
                        .map(|p| f64::from(a[i * k + p]) * f64::from(bt[(j - 2) * k + p]))
                        .sum();
                    1.0 + 0.5 * dot
                } else {
                    1.0
                };
                let got = f64::from(dst[i * 6 + j]);
                assert!(
                    (got - expected).abs() < 1e-5,
                    "({i}, {j}): {got} vs {expected}"
                );
            }
        }
    }
}
