//! The layer's backward: the recurrent loop in reverse over blocks of
//! rows, then every weight and bias gradient and dx from whole-sequence
//! products.
use super::layout::{split_params, split_params_mut, Dims, DirParams};
use super::{items, step_threads, Block, Buffers, Initial, Ptr, State};
use crate::nn::fused::matmul::{product, threads_for, Mat, MatMut};
use crate::nn::fused::{gru, lstm, rnn, threads};
use crate::nn::spec::Cell;

/// Backward of [`super::forward_from`]. `hs` is the forward's hidden
/// states [T, B, W]; `dy` the output gradient, [T, B, W] when `dy_seq`,
/// else [B, W] (final states); `init` the state the forward started from
/// (a constant: no gradient flows into it, truncated BPTT). Consumes
/// `state`'s gates and extra (they become gradients). Writes `dx` [T, B, I]
/// and `dparams` (packed like the parameters).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    d: &Dims,
    x: &[f32],
    params: &[f32],
    state: &mut State,
    hs: &[f32],
    dy: &[f32],
    dy_seq: bool,
    dx: &mut [f32],
    dparams: &mut [f32],
    init: Option<Initial>,
) {
    let (tb, w) = (d.steps * d.batch, d.width());
    assert_eq!(hs.len(), tb * w);
    assert_eq!(dy.len(), if dy_seq { tb * w } else { d.batch * w });
    assert_eq!(dx.len(), tb * d.input);
    assert_eq!(dparams.len(), d.param_len());
    let output = OutputGradient { dy, dy_seq };
    recur_back(d, params, state, hs, output, init);
    // SAFETY (products below): every view covers the shape it is given,
    // and destinations overlap no operand.
    let all = threads::threads();
    for dir in 0..d.dirs {
        let (gates, extra) = (&state.gates[dir], &state.extra[dir]);
        let g = split_params_mut(d, dparams, dir);
        let da = Mat::rows(gates, d.gate_width());
        unsafe {
            product(
                d.gate_width(),
                d.input,
                tb,
                MatMut::rows(g.w_ih, d.input),
                false,
                da.t(),
                Mat::rows(x, d.input),
                threads_for(d.gate_width(), d.input, tb, all),
            );
        }
        w_hh_gradient(d, dir, gates, extra, hs, g.w_hh, all);
        if let Some(i) = init {
            first_step_w_hh(d, gates, extra, i.h, g.w_hh, all);
        }
        bias_gradients(d, gates, extra, g.b_ih, g.b_hh);
        let w_ih = split_params(d, params, dir).w_ih;
        unsafe {
            product(
                tb,
                d.input,
                d.gate_width(),
                MatMut::rows(dx, d.input),
                dir > 0,
                da,
                Mat::rows(w_ih, d.input),
                threads_for(tb, d.input, d.gate_width(), all),
            );
        }
    }
}

/// The gradient flowing into the layer's output.
#[derive(Clone, Copy)]
struct OutputGradient<'a> {
    dy: &'a [f32],
    /// Whether `dy` covers every step ([T, B, W]) or the final states
    /// alone ([B, W]).
    dy_seq: bool,
}

/// The recurrent loop backward: (direction, block of rows) items, each
/// turning its gates and extra into pre-activation gradients.
fn recur_back(
    d: &Dims,
    params: &[f32],
    state: &mut State,
    hs: &[f32],
    output: OutputGradient,
    init: Option<Initial>,
) {
    let items = items(d, &threads::row_blocks(d.batch, d.dirs));
    // Read only: the backward never writes the hidden states.
    let buffers = Buffers::new(d, state, Ptr(hs.as_ptr() as *mut f32));
    let per_step = step_threads(items.len());
    threads::for_each(items.len(), |i| {
        let at = buffers.block(d, items[i], init);
        let block = BackwardBlock {
            p: split_params(d, params, at.dir),
            at,
            per_step,
            output,
        };
        // SAFETY: items cover disjoint (direction, rows) blocks.
        unsafe { block.run() }
    });
}

/// One block's backward, step by step against its direction's order.
struct BackwardBlock<'a> {
    at: Block<'a>,
    /// Threads for each per-step product.
    per_step: usize,
    p: DirParams<&'a [f32]>,
    output: OutputGradient<'a>,
}

impl BackwardBlock<'_> {
    unsafe fn run(&self) {
        let (d, rows) = (self.at.d, self.at.rows);
        // The gradient reaching h (and c) from the step after.
        let mut dh = vec![0.0f32; rows * d.units];
        let mut dc = if d.cell == Cell::Lstm {
            vec![0.0f32; rows * d.units]
        } else {
            Vec::new()
        };
        for s in (0..d.steps).rev() {
            let t = d.time(self.at.dir, s);
            let prev = (s > 0).then(|| d.time(self.at.dir, s - 1));
            let dy = self.dy_at(s, t);
            match d.cell {
                Cell::Lstm => self.lstm_step(t, prev, dy, &mut dh, &mut dc),
                Cell::Gru => self.gru_step(t, prev, dy, &mut dh),
                Cell::Rnn => self.rnn_step(t, prev, dy, &mut dh),
            }
        }
    }

    /// The output gradient at step `s` (time `t`) with its row stride:
    /// zeros at every step but the last when only final states had one.
    unsafe fn dy_at(&self, s: usize, t: usize) -> (*const f32, usize) {
        let (d, at) = (self.at.d, &self.at);
        let (dy, w) = (self.output.dy, d.width());
        let column = at.dir * d.units;
        if self.output.dy_seq {
            (dy[at.row(t) * w + column..].as_ptr(), w)
        } else if s == d.steps - 1 {
            (dy[at.r0 * w + column..].as_ptr(), w)
        } else {
            (at.zeros.as_ptr(), 0)
        }
    }

    /// `dh = dA W_hh` (or `+=`) over the block's rows, the gate columns
    /// `k` wide from `a`, the weights `w_hh`'s rows from there.
    unsafe fn dh_from(&self, dh: &mut [f32], add: bool, k: usize, a: Mat, w_hh: &[f32]) {
        let (rows, h) = (self.at.rows, self.at.d.units);
        let dst = MatMut::rows(dh, h);
        product(rows, h, k, dst, add, a, Mat::rows(w_hh, h), self.per_step);
    }

    unsafe fn lstm_step(
        &self,
        t: usize,
        prev: Option<usize>,
        (dyp, dy_ld): (*const f32, usize),
        dh: &mut [f32],
        dc: &mut [f32],
    ) {
        let d = self.at.d;
        let (gh, a) = (d.gate_width(), self.at.gates_at(t));
        let (c_prev, c_ld) = self.at.c_prev(prev);
        lstm::backward_rows(
            self.at.rows,
            d.units,
            a,
            gh,
            c_prev,
            c_ld,
            self.at.extra_at(t),
            d.extra_width(),
            dh.as_ptr(),
            dyp,
            dy_ld,
            dc.as_mut_ptr(),
        );
        if prev.is_some() {
            self.dh_from(dh, false, gh, Mat::raw(a, gh), self.p.w_hh);
        }
    }

    unsafe fn gru_step(
        &self,
        t: usize,
        prev: Option<usize>,
        (dyp, dy_ld): (*const f32, usize),
        dh: &mut [f32],
    ) {
        let d = self.at.d;
        let (gh, h, eh) = (d.gate_width(), d.units, d.extra_width());
        let (a, e) = (self.at.gates_at(t), self.at.extra_at(t));
        let (hp, hp_ld) = self.at.h_prev_or_zeros(prev);
        gru::backward_rows(
            self.at.rows,
            h,
            a,
            gh,
            hp,
            hp_ld,
            e,
            eh,
            dh.as_mut_ptr(),
            dyp,
            dy_ld,
        );
        if prev.is_some() {
            // Rows r, z of W_hh from the gate gradients; row n from h_n's.
            let two = 2 * h;
            self.dh_from(dh, true, two, Mat::raw(a, gh), self.p.w_hh);
            self.dh_from(dh, true, h, Mat::raw(e, eh), &self.p.w_hh[two * h..]);
        }
    }

    unsafe fn rnn_step(
        &self,
        t: usize,
        prev: Option<usize>,
        (dyp, dy_ld): (*const f32, usize),
        dh: &mut [f32],
    ) {
        let d = self.at.d;
        let (gh, a) = (d.gate_width(), self.at.gates_at(t));
        rnn::backward_rows(self.at.rows, d.units, a, gh, dh.as_ptr(), dyp, dy_ld);
        if prev.is_some() {
            self.dh_from(dh, false, gh, Mat::raw(a, gh), self.p.w_hh);
        }
    }
}

/// The `W_hh` gradient from pairs (step s, state of step s-1): for the
/// forward direction gradients at times 1.. with states at times ..T-1;
/// for the reverse, gradients at times ..T-1 with states at times 1...
fn w_hh_gradient(
    d: &Dims,
    dir: usize,
    gates: &[f32],
    extra: &[f32],
    hs: &[f32],
    w_hh: &mut [f32],
    all: usize,
) {
    let (b, gh, h, w, eh) = (d.batch, d.gate_width(), d.units, d.width(), d.extra_width());
    let k = (d.steps - 1) * b;
    if k == 0 {
        w_hh.fill(0.0);
        return;
    }
    let (a_row, h_row) = if dir == 0 { (b, 0) } else { (0, b) };
    let h_prev = Mat::raw(hs[h_row * w + dir * h..].as_ptr(), w);
    let kt = threads_for(gh, h, k, all);
    let da_pairs = Mat::raw(gates[a_row * gh..].as_ptr(), gh).t();
    // SAFETY: the views cover k pairs of rows; w_hh is distinct.
    unsafe {
        if d.cell == Cell::Gru {
            // Rows r, z from the gate gradients; row n from h_n's.
            let two = 2 * h;
            let (w_rz, w_n) = w_hh.split_at_mut(two * h);
            let dn_pairs = Mat::raw(extra[a_row * eh..].as_ptr(), eh).t();
            product(
                two,
                h,
                k,
                MatMut::rows(w_rz, h),
                false,
                da_pairs,
                h_prev,
                kt,
            );
            product(h, h, k, MatMut::rows(w_n, h), false, dn_pairs, h_prev, kt);
        } else {
            product(gh, h, k, MatMut::rows(w_hh, h), false, da_pairs, h_prev, kt);
        }
    }
}

/// Adds the first step's share of the `W_hh` gradient: its gate gradients
/// (for a GRU: rows r, z, and h_n's for row n) times the carried `h0` [B, H].
fn first_step_w_hh(
    d: &Dims,
    gates: &[f32],
    extra: &[f32],
    h0: &[f32],
    w_hh: &mut [f32],
    all: usize,
) {
    let (b, gh, h, eh) = (d.batch, d.gate_width(), d.units, d.extra_width());
    let h_prev = Mat::rows(h0, h);
    let kt = threads_for(gh, h, b, all);
    let da = Mat::rows(gates, gh).t();
    // SAFETY: the views cover the first step's B rows; w_hh is distinct.
    unsafe {
        if d.cell == Cell::Gru {
            let (w_rz, w_n) = w_hh.split_at_mut(2 * h * h);
            let dn = Mat::rows(extra, eh).t();
            product(2 * h, h, b, MatMut::rows(w_rz, h), true, da, h_prev, kt);
            product(h, h, b, MatMut::rows(w_n, h), true, dn, h_prev, kt);
        } else {
            product(gh, h, b, MatMut::rows(w_hh, h), true, da, h_prev, kt);
        }
    }
}

/// Both biases' gradients: the gates' column sums (for a GRU's `b_hh` row
/// n, h_n's, as that bias sits inside the reset gate's product).
fn bias_gradients(d: &Dims, gates: &[f32], extra: &[f32], b_ih: &mut [f32], b_hh: &mut [f32]) {
    column_sums(gates, d.gate_width(), b_ih);
    match d.cell {
        Cell::Gru => {
            let two = 2 * d.units;
            b_hh[..two].copy_from_slice(&b_ih[..two]);
            column_sums(extra, d.extra_width(), &mut b_hh[two..]);
        }
        _ => b_hh.copy_from_slice(b_ih),
    }
}

/// `out[c] = Σ_r m[r, c]` over a contiguous [rows, cols] matrix.
fn column_sums(m: &[f32], cols: usize, out: &mut [f32]) {
    out.fill(0.0);
    for row in m.chunks_exact(cols) {
        out.iter_mut().zip(row).for_each(|(o, v)| *o += v);
    }
}
