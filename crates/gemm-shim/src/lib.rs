//! gemm 0.19 under gemm 0.15's name, for dfdx: the same `gemm::gemm` entry point and
//! `Parallelism`, with AVX-512 kernels on stable Rust; plus [`sgemm`], a bounds-checked
//! single-threaded f32 product for kiln-train's own tape ops (docs/ARCHITECTURE.md,
//! Decisions).

pub use upstream::*;

/// How a matrix operand lies in its slice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Row-major as the product reads it (`rows × cols`).
    RowMajor,
    /// Stored row-major as its transpose (`cols × rows`), read transposed.
    Transposed,
}

impl Layout {
    /// (column stride, row stride) of a `rows × cols` operand.
    fn strides(self, rows: usize, cols: usize) -> (isize, isize) {
        match self {
            Layout::RowMajor => (1, cols as isize),
            Layout::Transposed => (rows as isize, 1),
        }
    }
}

/// `dst (m × n, row-major) = a (m × k) · b (k × n)`, or `+=` with `accumulate`, on the
/// calling thread.
///
/// # Panics
/// When a slice is shorter than its matrix.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    accumulate: bool,
    a: &[f32],
    a_layout: Layout,
    b: &[f32],
    b_layout: Layout,
) {
    assert!(
        dst.len() >= m * n,
        "sgemm: dst holds {} of {m} x {n}",
        dst.len()
    );
    assert!(a.len() >= m * k, "sgemm: a holds {} of {m} x {k}", a.len());
    assert!(b.len() >= k * n, "sgemm: b holds {} of {k} x {n}", b.len());
    if m == 0 || n == 0 {
        return;
    }
    let (a_cs, a_rs) = a_layout.strides(m, k);
    let (b_cs, b_rs) = b_layout.strides(k, n);
    // SAFETY: every operand lies inside its slice (checked above): the largest offset
    // read or written is (rows - 1) · row stride + (cols - 1) · column stride, which is
    // below rows · cols for both layouts; `dst` does not alias `a` or `b` (a `&mut`).
    unsafe {
        upstream::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            upstream::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every layout pair against the schoolbook product, with and without accumulation.
    #[test]
    fn sgemm_matches_the_schoolbook_product() {
        let (m, n, k) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| i as f32 * 0.5 - 3.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32).sin()).collect();
        let at = |i: usize, j: usize, l: Layout| match l {
            Layout::RowMajor => a[i * k + j],
            Layout::Transposed => a[j * m + i],
        };
        let bt = |i: usize, j: usize, l: Layout| match l {
            Layout::RowMajor => b[i * n + j],
            Layout::Transposed => b[j * k + i],
        };
        for la in [Layout::RowMajor, Layout::Transposed] {
            for lb in [Layout::RowMajor, Layout::Transposed] {
                let mut dst = vec![1.0f32; m * n];
                sgemm((m, n, k), &mut dst, true, &a, la, &b, lb);
                for i in 0..m {
                    for j in 0..n {
                        let want: f32 =
                            1.0 + (0..k).map(|l| at(i, l, la) * bt(l, j, lb)).sum::<f32>();
                        assert!(
                            (dst[i * n + j] - want).abs() < 1e-4,
                            "{la:?} {lb:?} ({i}, {j})"
                        );
                    }
                }
                sgemm((m, n, k), &mut dst, false, &a, la, &b, lb);
                let want: f32 = (0..k).map(|l| at(0, l, la) * bt(l, 0, lb)).sum();
                assert!((dst[0] - want).abs() < 1e-4);
            }
        }
    }
}
