//! Matrix products of the fused step: strided views over plain `f32` slices, multiplied by the
//! `gemm` crate directly.
//!
//! Views carry their own strides, so transposes and single heads of `[head, d_model, d_head]`
//! tensors are read in place, never copied. `gemm` picks its micro-kernel at run time (see
//! [`super::kernel`]) and splits a product over rayon's pool only along output tiles, never along
//! the summed dimension, so the bytes do not depend on the number of threads.

use ::gemm::Parallelism;

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
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: the constructors checked that every view stays inside its slice; `dst` is borrowed
    // mutably, so it overlaps neither input.
    unsafe {
        ::gemm::gemm(
            dst.rows,
            dst.cols,
            a.cols,
            dst.data.as_mut_ptr(),
            1,
            dst.row_stride as isize,
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

#[cfg(test)]
mod tests {
    use super::*;

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
