//! Row-major matrix views and the one matrix product the kernels use, on
//! the `gemm` crate (the library candle's CPU matmul calls).
use gemm::Parallelism;

/// A read-only matrix: element (r, c) is at `ptr + r * rs + c * cs`.
#[derive(Clone, Copy, Debug)]
pub struct Mat {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

// SAFETY: a Mat is a view the caller keeps alive and unaliased by writers
// for as long as a product reads it.
unsafe impl Send for Mat {}
unsafe impl Sync for Mat {}

impl Mat {
    /// A row-major matrix whose rows are `ld` floats apart.
    pub fn rows(data: &[f32], ld: usize) -> Self {
        Self::raw(data.as_ptr(), ld)
    }

    pub fn raw(ptr: *const f32, ld: usize) -> Self {
        Self {
            ptr,
            rs: ld as isize,
            cs: 1,
        }
    }

    /// The transpose, as a view.
    pub fn t(self) -> Self {
        Self {
            ptr: self.ptr,
            rs: self.cs,
            cs: self.rs,
        }
    }
}

/// A row-major destination whose rows are `ld` floats apart.
#[derive(Clone, Copy, Debug)]
pub struct MatMut {
    pub ptr: *mut f32,
    pub ld: usize,
}

unsafe impl Send for MatMut {}
unsafe impl Sync for MatMut {}

impl MatMut {
    pub fn rows(data: &mut [f32], ld: usize) -> Self {
        Self {
            ptr: data.as_mut_ptr(),
            ld,
        }
    }
}

/// `dst[m, n] (+)= a[m, k] * b[k, n]`: accumulates when `accumulate`,
/// overwrites otherwise. `threads` > 1 lets gemm split the product over the
/// current rayon pool.
///
/// # Safety
/// Every view must cover the elements the shapes name, and `dst` must not
/// overlap `a` or `b`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: MatMut,
    accumulate: bool,
    a: Mat,
    b: Mat,
    threads: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                std::ptr::write_bytes(dst.ptr.add(r * dst.ld), 0, n);
            }
        }
        return;
    }
    let parallelism = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    gemm::gemm(
        m,
        n,
        k,
        dst.ptr,
        1,
        dst.ld as isize,
        accumulate,
        a.ptr,
        a.cs,
        a.rs,
        b.ptr,
        b.cs,
        b.rs,
        1.0f32,
        1.0f32,
        false,
        false,
        false,
        parallelism,
    );
}

/// Threads worth giving one product of this size (gemm splits large ones
/// well; small ones lose more to waking threads than they gain).
pub fn threads_for(m: usize, n: usize, k: usize, available: usize) -> usize {
    const PER_THREAD_FLOP: usize = 4 << 20;
    let flop = 2 * m * n * k;
    (flop / PER_THREAD_FLOP).clamp(1, available.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_products_match_naive() {
        let (m, n, k) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| i as f32 * 0.5 - 2.0).collect();
        let b: Vec<f32> = (0..n * k).map(|i| 1.0 - i as f32 * 0.25).collect();
        // dst = a @ b^T with b stored [n, k], accumulated onto ones.
        let mut dst = vec![1.0f32; m * n];
        unsafe {
            matmul(
                m,
                n,
                k,
                MatMut::rows(&mut dst, n),
                true,
                Mat::rows(&a, k),
                Mat::rows(&b, k).t(),
                1,
            )
        };
        for r in 0..m {
            for c in 0..n {
                let want: f32 = 1.0 + (0..k).map(|p| a[r * k + p] * b[c * k + p]).sum::<f32>();
                assert!((dst[r * n + c] - want).abs() < 1e-5);
            }
        }
    }
}
