//! Simple (Elman) RNN pointwise step kernels: `h' = tanh(x W_ih^T + b_ih +
//! h W_hh^T + b_hh)`. The forward keeps h itself (in place of the
//! pre-activation); the backward turns it into d(pre-activation).
use super::simd::{multiversion, tanh};

pub const GATES: usize = 1;
pub const EXTRA: usize = 0;

#[inline(always)]
fn forward_rows_impl<const FMA: bool>(
    rows: usize,
    h: usize,
    gates: *mut f32,
    gates_ld: usize,
    out: *mut f32,
    out_ld: usize,
) {
    for r in 0..rows {
        // SAFETY: the caller guarantees each row's range is in bounds and
        // that rows of different workers do not overlap.
        let (a, o_row) = unsafe {
            (
                std::slice::from_raw_parts_mut(gates.add(r * gates_ld), h),
                std::slice::from_raw_parts_mut(out.add(r * out_ld), h),
            )
        };
        forward_kernel::<FMA>(a, o_row);
    }
}

/// One row's forward (separate slices: no run-time alias checks).
#[inline(always)]
fn forward_kernel<const FMA: bool>(a: &mut [f32], out: &mut [f32]) {
    let a = &mut a[..out.len()];
    for (a, o) in a.iter_mut().zip(out.iter_mut()) {
        let v = tanh::<FMA>(*a);
        *a = v;
        *o = v;
    }
}

multiversion! {
    /// One step for `rows` rows: `gates` holds the pre-activation and
    /// becomes h, which is also written to `out`.
    pub fn forward_rows(
        rows: usize,
        h: usize,
        gates: *mut f32,
        gates_ld: usize,
        out: *mut f32,
        out_ld: usize,
    ) => forward_rows_impl
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn backward_rows_impl<const FMA: bool>(
    rows: usize,
    h: usize,
    gates: *mut f32,
    gates_ld: usize,
    dh: *const f32,
    dy: *const f32,
    dy_ld: usize,
) {
    for r in 0..rows {
        // SAFETY: as in forward_rows_impl.
        let (a, dh, dy) = unsafe {
            (
                std::slice::from_raw_parts_mut(gates.add(r * gates_ld), h),
                std::slice::from_raw_parts(dh.add(r * h), h),
                std::slice::from_raw_parts(dy.add(r * dy_ld), h),
            )
        };
        backward_kernel(a, dh, dy);
    }
}

/// One row's backward (separate slices: no run-time alias checks).
#[inline(always)]
fn backward_kernel(a: &mut [f32], dh: &[f32], dy: &[f32]) {
    let h = a.len();
    let (dh, dy) = (&dh[..h], &dy[..h]);
    for j in 0..h {
        let v = a[j];
        a[j] = (dh[j] + dy[j]) * (1.0 - v * v);
    }
}

multiversion! {
    /// Backward of one step: `gates` (holding h) becomes d(pre-activation)
    /// from `dh` (later steps) and `dy` (the layer's output).
    pub fn backward_rows(
        rows: usize,
        h: usize,
        gates: *mut f32,
        gates_ld: usize,
        dh: *const f32,
        dy: *const f32,
        dy_ld: usize,
    ) => backward_rows_impl
}
