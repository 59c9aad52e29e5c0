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
/// current rayon pool (the fused path splits products itself instead).
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
    const PER_THREAD_FLOP: usize = 2 << 20;
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

/// Rows a register block of [`small_matmul`] covers.
const MR: usize = 6;

/// One register block: `c[ROWS, NR] (+)= a[ROWS, k] b[k, NR]`, the
/// accumulators held in registers for the whole k loop (ROWS * NR / 16
/// AVX-512 registers). `a` is read one element at a time (broadcast), so
/// any strides work; `b` rows are contiguous.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn block<const FMA: bool, const ROWS: usize, const NR: usize>(
    k: usize,
    a: *const f32,
    a_rs: usize,
    a_cs: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    let mut acc = [[0.0f32; NR]; ROWS];
    if accumulate {
        for (r, row) in acc.iter_mut().enumerate() {
            *row = std::ptr::read_unaligned(c.add(r * ldc) as *const [f32; NR]);
        }
    }
    for p in 0..k {
        let bv = std::ptr::read_unaligned(b.add(p * ldb) as *const [f32; NR]);
        let ap = a.add(p * a_cs);
        for (r, row) in acc.iter_mut().enumerate() {
            let av = *ap.add(r * a_rs);
            for j in 0..NR {
                row[j] = super::simd::madd::<FMA>(av, bv[j], row[j]);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        std::ptr::write_unaligned(c.add(r * ldc) as *mut [f32; NR], *row);
    }
}

/// All the row blocks of one column panel of width NR.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn panel<const FMA: bool, const NR: usize>(
    m: usize,
    k: usize,
    a: *const f32,
    a_rs: usize,
    a_cs: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    let mut r = 0;
    while r + MR <= m {
        let (ar, cr) = (a.add(r * a_rs), c.add(r * ldc));
        block::<FMA, MR, NR>(k, ar, a_rs, a_cs, b, ldb, cr, ldc, accumulate);
        r += MR;
    }
    let (a, c) = (a.add(r * a_rs), c.add(r * ldc));
    match m - r {
        0 => {}
        1 => block::<FMA, 1, NR>(k, a, a_rs, a_cs, b, ldb, c, ldc, accumulate),
        2 => block::<FMA, 2, NR>(k, a, a_rs, a_cs, b, ldb, c, ldc, accumulate),
        3 => block::<FMA, 3, NR>(k, a, a_rs, a_cs, b, ldb, c, ldc, accumulate),
        4 => block::<FMA, 4, NR>(k, a, a_rs, a_cs, b, ldb, c, ldc, accumulate),
        _ => block::<FMA, 5, NR>(k, a, a_rs, a_cs, b, ldb, c, ldc, accumulate),
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn small_matmul_impl<const FMA: bool>(
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    a_rs: usize,
    a_cs: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    // Rows of `b` per pass: a column panel of a pass touches few enough
    // rows (pages) to stay in the TLB and the prefetchers' reach. Each
    // row of the result still sums over k in order, whatever m is.
    const KC: usize = 128;
    let mut p0 = 0;
    while p0 < k {
        let kc = KC.min(k - p0);
        // SAFETY: the caller's contract (see small_matmul).
        unsafe {
            columns::<FMA>(
                m,
                n,
                kc,
                a.add(p0 * a_cs),
                a_rs,
                a_cs,
                b.add(p0 * ldb),
                ldb,
                c,
                ldc,
                accumulate || p0 > 0,
            );
        }
        p0 += kc;
    }
    if k == 0 && !accumulate {
        for r in 0..m {
            // SAFETY: as above.
            unsafe { std::ptr::write_bytes(c.add(r * ldc), 0, n) };
        }
    }
}

/// All column panels of `c (+)= a b` for one pass over k.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn columns<const FMA: bool>(
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    a_rs: usize,
    a_cs: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    {
        let mut j = 0;
        if m == 1 {
            // One row (a single sequence): wide panels, so each step of k
            // reads a long contiguous run of `b` and keeps 16 independent
            // accumulators busy.
            while j + 256 <= n {
                let (bj, cj) = (b.add(j), c.add(j));
                block::<FMA, 1, 256>(k, a, a_rs, a_cs, bj, ldb, cj, ldc, accumulate);
                j += 256;
            }
        }
        while j + 64 <= n {
            let (bj, cj) = (b.add(j), c.add(j));
            panel::<FMA, 64>(m, k, a, a_rs, a_cs, bj, ldb, cj, ldc, accumulate);
            j += 64;
        }
        while j + 16 <= n {
            let (bj, cj) = (b.add(j), c.add(j));
            panel::<FMA, 16>(m, k, a, a_rs, a_cs, bj, ldb, cj, ldc, accumulate);
            j += 16;
        }
        if j < n {
            // The last columns, padded to a vector through small copies.
            let w = n - j;
            let mut bt = vec![0.0f32; k * 16];
            for p in 0..k {
                std::ptr::copy_nonoverlapping(b.add(p * ldb + j), bt.as_mut_ptr().add(p * 16), w);
            }
            let mut ct = vec![0.0f32; m * 16];
            if accumulate {
                for r in 0..m {
                    std::ptr::copy_nonoverlapping(
                        c.add(r * ldc + j),
                        ct.as_mut_ptr().add(r * 16),
                        w,
                    );
                }
            }
            panel::<FMA, 16>(
                m,
                k,
                a,
                a_rs,
                a_cs,
                bt.as_ptr(),
                16,
                ct.as_mut_ptr(),
                16,
                accumulate,
            );
            for r in 0..m {
                std::ptr::copy_nonoverlapping(ct.as_ptr().add(r * 16), c.add(r * ldc + j), w);
            }
        }
    }
}

super::simd::multiversion! {
    /// `c[m, n] (+)= a[m, k] b[k, n]`: `a` with any strides (element
    /// (r, p) at `a + r * a_rs + p * a_cs`), `b` and `c` row-major with
    /// contiguous columns. Register-blocked, no packing: small and
    /// medium products cost their arithmetic and little else.
    pub fn small_matmul(
        m: usize,
        n: usize,
        k: usize,
        a: *const f32,
        a_rs: usize,
        a_cs: usize,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) => small_matmul_impl
}

/// The default of [`set_gemm_min_macs`]. Unoptimised builds (tests) send
/// every product to gemm, an optimised dependency: the register-blocked
/// kernel needs the optimiser.
pub const DEFAULT_GEMM_MIN_MACS: usize = if cfg!(debug_assertions) { 0 } else { 1 << 23 };

/// Products at least this large (in multiply-adds) go to gemm, whose
/// packing and cache blocking pay off there.
static GEMM_MIN_MACS: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(DEFAULT_GEMM_MIN_MACS);

/// Sets the size from which [`product`] hands products to gemm.
pub fn set_gemm_min_macs(macs: usize) {
    GEMM_MIN_MACS.store(macs, std::sync::atomic::Ordering::Relaxed);
}

/// Products from this many multiply-adds on are worth splitting by columns
/// in [`product_rowwise`].
const ROWWISE_SPLIT_MACS: usize = 1 << 20;

/// [`product`] through the register-blocked kernel only: each element of
/// the result is summed in one fixed order whatever the other rows, so
/// results do not depend on the batch around them. Large products are
/// split by columns over up to `threads` workers (which keeps that order).
///
/// # Safety
/// As for [`matmul`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn product_rowwise(
    m: usize,
    n: usize,
    k: usize,
    dst: MatMut,
    accumulate: bool,
    a: Mat,
    b: Mat,
    threads: usize,
) {
    debug_assert_eq!(b.cs, 1, "b is row-major");
    let chunks = if m * n * k >= ROWWISE_SPLIT_MACS {
        threads.min(n / 64).max(1)
    } else {
        1
    };
    let run = |i: usize| {
        let (a, b, dst) = (&a, &b, &dst);
        // Column ranges in whole 64-column panels.
        let panels = n.div_ceil(64);
        let (j0, j1) = (
            (panels * i / chunks * 64).min(n),
            (panels * (i + 1) / chunks * 64).min(n),
        );
        if j1 > j0 {
            small_matmul(
                m,
                j1 - j0,
                k,
                a.ptr,
                a.rs as usize,
                a.cs as usize,
                b.ptr.add(j0),
                b.rs as usize,
                dst.ptr.add(j0),
                dst.ld,
                accumulate,
            );
        }
    };
    if chunks > 1 {
        super::threads::for_each(chunks, run);
    } else {
        run(0);
    }
}

/// `dst[m, n] (+)= a[m, k] b[k, n]` with `b` row-major (columns
/// contiguous), over up to `threads` workers of the kernel pool (row
/// blocks), through the register-blocked kernel or, for large products,
/// gemm.
///
/// # Safety
/// As for [`matmul`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn product(
    m: usize,
    n: usize,
    k: usize,
    dst: MatMut,
    accumulate: bool,
    a: Mat,
    b: Mat,
    threads: usize,
) {
    debug_assert_eq!(b.cs, 1, "b is row-major");
    if m == 0 || n == 0 {
        return;
    }
    let use_gemm = m * n * k >= GEMM_MIN_MACS.load(std::sync::atomic::Ordering::Relaxed);
    let chunks = threads.min(m.div_ceil(MR)).max(1);
    super::threads::for_each(chunks, |i| {
        // Capture the views whole (they are Send + Sync; their pointer
        // fields alone are not).
        let (a, b, dst) = (&a, &b, &dst);
        // Row blocks of whole register blocks.
        let blocks = m.div_ceil(MR);
        let (r0, r1) = (
            (blocks * i / chunks * MR).min(m),
            (blocks * (i + 1) / chunks * MR).min(m),
        );
        if r1 <= r0 {
            return;
        }
        let a_rows = Mat {
            ptr: a.ptr.offset(r0 as isize * a.rs),
            ..*a
        };
        let dst_rows = MatMut {
            ptr: dst.ptr.add(r0 * dst.ld),
            ld: dst.ld,
        };
        if use_gemm {
            matmul(r1 - r0, n, k, dst_rows, accumulate, a_rows, *b, 1);
        } else {
            small_matmul(
                r1 - r0,
                n,
                k,
                a_rows.ptr,
                a_rows.rs as usize,
                a_rows.cs as usize,
                b.ptr,
                b.rs as usize,
                dst_rows.ptr,
                dst.ld,
                accumulate,
            );
        }
    });
}

#[cfg(test)]
mod small_tests {
    use super::*;

    #[test]
    fn small_products_match_naive() {
        for (m, n, k) in [
            (1, 1, 1),
            (7, 100, 9),
            (13, 64, 33),
            (6, 80, 5),
            (32, 256, 64),
            (5, 15, 0),
            (9, 8, 40),
            (1, 600, 300),
            (2, 300, 260),
        ] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7) % 11) as f32 * 0.1 - 0.5)
                .collect();
            let b: Vec<f32> = (0..k * n)
                .map(|i| ((i * 5) % 13) as f32 * 0.1 - 0.6)
                .collect();
            for accumulate in [false, true] {
                let mut c = vec![0.25f32; m * n];
                unsafe {
                    small_matmul(
                        m,
                        n,
                        k,
                        a.as_ptr(),
                        k,
                        1,
                        b.as_ptr(),
                        n,
                        c.as_mut_ptr(),
                        n,
                        accumulate,
                    )
                };
                for r in 0..m {
                    for j in 0..n {
                        let base = if accumulate { 0.25 } else { 0.0 };
                        let want: f32 =
                            base + (0..k).map(|p| a[r * k + p] * b[p * n + j]).sum::<f32>();
                        assert!((c[r * n + j] - want).abs() < 1e-4, "{m}x{n}x{k} at {r},{j}");
                    }
                }
            }
        }
    }

    #[test]
    fn split_and_gemm_products_match_naive() {
        let (m, n, k) = (37, 70, 19);
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 3) % 17) as f32 * 0.1 - 0.8)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 11) % 7) as f32 * 0.2 - 0.6)
            .collect();
        // a^T stored [k, m], read through a transposed view.
        let at: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
        let want: Vec<f32> = (0..m * n)
            .map(|i| (0..k).map(|p| a[(i / n) * k + p] * b[p * n + i % n]).sum())
            .collect();
        for (a_view, threads) in [
            (Mat::rows(&a, k), 1),
            (Mat::rows(&a, k), 3),
            (Mat::rows(&at, m).t(), 2),
        ] {
            for gemm_from in [usize::MAX, 0] {
                set_gemm_min_macs(gemm_from);
                let mut c = vec![0.0f32; m * n];
                unsafe {
                    product(
                        m,
                        n,
                        k,
                        MatMut::rows(&mut c, n),
                        false,
                        a_view,
                        Mat::rows(&b, n),
                        threads,
                    )
                };
                set_gemm_min_macs(DEFAULT_GEMM_MIN_MACS);
                for (x, y) in c.iter().zip(&want) {
                    assert!((x - y).abs() < 1e-4);
                }
            }
        }
    }

    #[test]
    fn rowwise_products_do_not_depend_on_rows_or_threads() {
        let (m, n, k) = (3, 1100, 400);
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 13) % 29) as f32 * 0.03 - 0.4)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 7) % 31) as f32 * 0.02 - 0.3)
            .collect();
        let run = |rows: usize, threads: usize| {
            let mut c = vec![0.5f32; rows * n];
            unsafe {
                product_rowwise(
                    rows,
                    n,
                    k,
                    MatMut::rows(&mut c, n),
                    true,
                    Mat::rows(&a, k),
                    Mat::rows(&b, n),
                    threads,
                )
            };
            c
        };
        let all = run(m, 1);
        assert_eq!(run(m, 3), all);
        assert_eq!(run(1, 2)[..], all[..n]);
    }
}
