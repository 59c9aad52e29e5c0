//! GRU pointwise step kernels, PyTorch's formulas (gates r, z, n):
//! `r = σ(x_r + h_r)`, `z = σ(x_z + h_z)`, `n = tanh(x_n + r * h_n)`,
//! `h' = (1 - z) * n + z * h`, where `x_* = x W_i*^T + b_i*` and
//! `h_* = h W_h*^T + b_h*`.
//!
//! Per (step, row) the forward keeps `[r, z, n]` (in place of the input
//! projection) and `h_n`; the backward turns them into the gradients of
//! the input-side pre-activations and of `h_n`'s pre-activation.
use super::simd::{multiversion, sigmoid, tanh};

pub const GATES: usize = 3;
/// Floats kept per (step, row), in units of H: `h_n`.
pub const EXTRA: usize = 1;

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn forward_rows_impl<const FMA: bool>(
    rows: usize,
    h: usize,
    gates: *mut f32,
    gates_ld: usize,
    hw: *const f32,
    hw_ld: usize,
    h_prev: *const f32,
    h_prev_ld: usize,
    extra: *mut f32,
    extra_ld: usize,
    out: *mut f32,
    out_ld: usize,
) {
    for r in 0..rows {
        // SAFETY: the caller guarantees each row's ranges are in bounds and
        // that rows of different workers do not overlap.
        let (a, hw, hp, hn_keep, o_row) = unsafe {
            (
                std::slice::from_raw_parts_mut(gates.add(r * gates_ld), 3 * h),
                std::slice::from_raw_parts(hw.add(r * hw_ld), 3 * h),
                std::slice::from_raw_parts(h_prev.add(r * h_prev_ld), h),
                std::slice::from_raw_parts_mut(extra.add(r * extra_ld), h),
                std::slice::from_raw_parts_mut(out.add(r * out_ld), h),
            )
        };
        let (ar, rest) = a.split_at_mut(h);
        let (az, an) = rest.split_at_mut(h);
        let (hr, rest) = hw.split_at(h);
        let (hz, hn) = rest.split_at(h);
        forward_kernel::<FMA>(ar, az, an, hr, hz, hn, hp, hn_keep, o_row);
    }
}

/// One row's forward. Separate slice arguments tell the compiler they do
/// not overlap, so the loop vectorises without run-time alias checks.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn forward_kernel<const FMA: bool>(
    ar: &mut [f32],
    az: &mut [f32],
    an: &mut [f32],
    hr: &[f32],
    hz: &[f32],
    hn: &[f32],
    hp: &[f32],
    hn_keep: &mut [f32],
    out: &mut [f32],
) {
    let h = out.len();
    let (ar, az, an, hn_keep) = (&mut ar[..h], &mut az[..h], &mut an[..h], &mut hn_keep[..h]);
    let (hr, hz, hn, hp) = (&hr[..h], &hz[..h], &hn[..h], &hp[..h]);
    for j in 0..h {
        let rg = sigmoid::<FMA>(ar[j] + hr[j]);
        let zg = sigmoid::<FMA>(az[j] + hz[j]);
        let ng = tanh::<FMA>(an[j] + rg * hn[j]);
        ar[j] = rg;
        az[j] = zg;
        an[j] = ng;
        hn_keep[j] = hn[j];
        out[j] = ng + zg * (hp[j] - ng);
    }
}

multiversion! {
    /// One step for `rows` rows: `gates` holds `x W_ih^T + b_ih` and
    /// becomes `[r, z, n]`; `hw` holds `h W_hh^T + b_hh`; `h_prev` is the
    /// previous hidden state (a zero row with `h_prev_ld` 0 at the first
    /// step); keeps `h_n` in `extra` and writes h to `out`.
    pub fn forward_rows(
        rows: usize,
        h: usize,
        gates: *mut f32,
        gates_ld: usize,
        hw: *const f32,
        hw_ld: usize,
        h_prev: *const f32,
        h_prev_ld: usize,
        extra: *mut f32,
        extra_ld: usize,
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
    h_prev: *const f32,
    h_prev_ld: usize,
    extra: *mut f32,
    extra_ld: usize,
    dh: *mut f32,
    dy: *const f32,
    dy_ld: usize,
) {
    for r in 0..rows {
        // SAFETY: as in forward_rows_impl; `dh` is the worker's own
        // [rows, h] buffer.
        let (a, hp, hn_keep, dh, dy) = unsafe {
            (
                std::slice::from_raw_parts_mut(gates.add(r * gates_ld), 3 * h),
                std::slice::from_raw_parts(h_prev.add(r * h_prev_ld), h),
                std::slice::from_raw_parts_mut(extra.add(r * extra_ld), h),
                std::slice::from_raw_parts_mut(dh.add(r * h), h),
                std::slice::from_raw_parts(dy.add(r * dy_ld), h),
            )
        };
        let (ar, rest) = a.split_at_mut(h);
        let (az, an) = rest.split_at_mut(h);
        backward_kernel(ar, az, an, hp, hn_keep, dh, dy);
    }
}

/// One row's backward (separate slices: no run-time alias checks).
#[inline(always)]
fn backward_kernel(
    ar: &mut [f32],
    az: &mut [f32],
    an: &mut [f32],
    hp: &[f32],
    hn_keep: &mut [f32],
    dh: &mut [f32],
    dy: &[f32],
) {
    let h = dh.len();
    let (ar, az, an, hn_keep) = (&mut ar[..h], &mut az[..h], &mut an[..h], &mut hn_keep[..h]);
    let (hp, dy) = (&hp[..h], &dy[..h]);
    for j in 0..h {
        let (rg, zg, ng, hn) = (ar[j], az[j], an[j], hn_keep[j]);
        let dht = dh[j] + dy[j];
        let dn = dht * (1.0 - zg) * (1.0 - ng * ng);
        let dz = dht * (hp[j] - ng) * zg * (1.0 - zg);
        let dr = dn * hn * rg * (1.0 - rg);
        ar[j] = dr;
        az[j] = dz;
        an[j] = dn;
        hn_keep[j] = dn * rg;
        dh[j] = dht * zg;
    }
}

multiversion! {
    /// Backward of one step: `dh` (in: gradient reaching h from later
    /// steps; out: the part of the previous state's gradient that skips
    /// the recurrent product, `dh * z`), `dy` from the layer's output.
    /// `gates` becomes the gradient of the input-side pre-activations
    /// `[d x_r, d x_z, d x_n]`, `extra` that of `h_n`.
    pub fn backward_rows(
        rows: usize,
        h: usize,
        gates: *mut f32,
        gates_ld: usize,
        h_prev: *const f32,
        h_prev_ld: usize,
        extra: *mut f32,
        extra_ld: usize,
        dh: *mut f32,
        dy: *const f32,
        dy_ld: usize,
    ) => backward_rows_impl
}
