//! LSTM pointwise step kernels, PyTorch's gate order (i, f, g, o):
//! `c' = f * c + i * g`, `h' = o * tanh(c')`.
//!
//! Per (step, row) the forward keeps the four activated gates (in place of
//! their pre-activations) and `[c', tanh c']`; the backward turns the gates
//! into the pre-activation gradient in place.
use super::simd::{multiversion, sigmoid, tanh};

pub const GATES: usize = 4;
/// Floats kept per (step, row), in units of H: `c` and `tanh c`.
pub const EXTRA: usize = 2;

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn forward_rows_impl<const FMA: bool>(
    rows: usize,
    h: usize,
    gates: *mut f32,
    gates_ld: usize,
    prev: *const f32,
    prev_ld: usize,
    extra: *mut f32,
    extra_ld: usize,
    out: *mut f32,
    out_ld: usize,
) {
    for r in 0..rows {
        // SAFETY: the caller guarantees each row's ranges are in bounds and
        // that rows of different workers do not overlap.
        let (a, c_prev, ext, o_row) = unsafe {
            (
                std::slice::from_raw_parts_mut(gates.add(r * gates_ld), 4 * h),
                std::slice::from_raw_parts(prev.add(r * prev_ld), h),
                std::slice::from_raw_parts_mut(extra.add(r * extra_ld), 2 * h),
                std::slice::from_raw_parts_mut(out.add(r * out_ld), h),
            )
        };
        let (ai, rest) = a.split_at_mut(h);
        let (af, rest) = rest.split_at_mut(h);
        let (ag, ao) = rest.split_at_mut(h);
        let (c, tc) = ext.split_at_mut(h);
        forward_kernel::<FMA>(ai, af, ag, ao, c_prev, c, tc, o_row);
    }
}

/// One row's forward. Separate slice arguments tell the compiler they do
/// not overlap, so the loop vectorises without run-time alias checks.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn forward_kernel<const FMA: bool>(
    ai: &mut [f32],
    af: &mut [f32],
    ag: &mut [f32],
    ao: &mut [f32],
    c_prev: &[f32],
    c: &mut [f32],
    tc: &mut [f32],
    out: &mut [f32],
) {
    let h = out.len();
    let (ai, af, ag, ao) = (&mut ai[..h], &mut af[..h], &mut ag[..h], &mut ao[..h]);
    let (c_prev, c, tc) = (&c_prev[..h], &mut c[..h], &mut tc[..h]);
    for j in 0..h {
        let i = sigmoid::<FMA>(ai[j]);
        let f = sigmoid::<FMA>(af[j]);
        let g = tanh::<FMA>(ag[j]);
        let o = sigmoid::<FMA>(ao[j]);
        let cn = f * c_prev[j] + i * g;
        let t = tanh::<FMA>(cn);
        ai[j] = i;
        af[j] = f;
        ag[j] = g;
        ao[j] = o;
        c[j] = cn;
        tc[j] = t;
        out[j] = o * t;
    }
}

multiversion! {
    /// One step for `rows` rows: `gates` holds `x W_ih^T + b + h W_hh^T`
    /// and becomes the activated gates; `prev` is the previous step's
    /// extra block (its first H floats are c; a zero row with `prev_ld` 0
    /// at the first step); writes `[c, tanh c]` to `extra` and h to `out`.
    pub fn forward_rows(
        rows: usize,
        h: usize,
        gates: *mut f32,
        gates_ld: usize,
        prev: *const f32,
        prev_ld: usize,
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
    prev: *const f32,
    prev_ld: usize,
    extra: *const f32,
    extra_ld: usize,
    dh: *const f32,
    dy: *const f32,
    dy_ld: usize,
    dc: *mut f32,
) {
    for r in 0..rows {
        // SAFETY: as in forward_rows_impl; `dh` and `dc` are the worker's
        // own [rows, h] buffers.
        let (a, c_prev, ext, dh, dy, dc) = unsafe {
            (
                std::slice::from_raw_parts_mut(gates.add(r * gates_ld), 4 * h),
                std::slice::from_raw_parts(prev.add(r * prev_ld), h),
                std::slice::from_raw_parts(extra.add(r * extra_ld), 2 * h),
                std::slice::from_raw_parts(dh.add(r * h), h),
                std::slice::from_raw_parts(dy.add(r * dy_ld), h),
                std::slice::from_raw_parts_mut(dc.add(r * h), h),
            )
        };
        let (ai, rest) = a.split_at_mut(h);
        let (af, rest) = rest.split_at_mut(h);
        let (ag, ao) = rest.split_at_mut(h);
        backward_kernel(ai, af, ag, ao, c_prev, &ext[h..2 * h], dh, dy, dc);
    }
}

/// One row's backward (separate slices: no run-time alias checks).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn backward_kernel(
    ai: &mut [f32],
    af: &mut [f32],
    ag: &mut [f32],
    ao: &mut [f32],
    c_prev: &[f32],
    tc: &[f32],
    dh: &[f32],
    dy: &[f32],
    dc: &mut [f32],
) {
    let h = dc.len();
    let (ai, af, ag, ao) = (&mut ai[..h], &mut af[..h], &mut ag[..h], &mut ao[..h]);
    let (c_prev, tc, dh, dy) = (&c_prev[..h], &tc[..h], &dh[..h], &dy[..h]);
    for j in 0..h {
        let (i, f, g, o, t) = (ai[j], af[j], ag[j], ao[j], tc[j]);
        let dht = dh[j] + dy[j];
        let dcj = dc[j] + dht * o * (1.0 - t * t);
        ai[j] = dcj * g * i * (1.0 - i);
        af[j] = dcj * c_prev[j] * f * (1.0 - f);
        ag[j] = dcj * i * (1.0 - g * g);
        ao[j] = dht * t * o * (1.0 - o);
        dc[j] = dcj * f;
    }
}

multiversion! {
    /// Backward of one step: `dh` is the gradient reaching h from later
    /// steps, `dy` the one from the layer's output (zero row, `dy_ld` 0,
    /// where none); `dc` carries the cell gradient (in: from later steps,
    /// out: to the previous step). The gates become d(pre-activation).
    pub fn backward_rows(
        rows: usize,
        h: usize,
        gates: *mut f32,
        gates_ld: usize,
        prev: *const f32,
        prev_ld: usize,
        extra: *const f32,
        extra_ld: usize,
        dh: *const f32,
        dy: *const f32,
        dy_ld: usize,
        dc: *mut f32,
    ) => backward_rows_impl
}
