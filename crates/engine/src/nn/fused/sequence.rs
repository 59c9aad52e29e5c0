//! The fused layer driver: a whole recurrent layer (every direction, every
//! step) forward and backward over plain f32 slices, time-major.
//!
//! Layouts (row-major): input `x` [T, B, I]; output `h` [T, B, W] with
//! direction d in columns d*H..(d+1)*H (the reverse direction's state at
//! time t is the one after reading tokens T-1 down to t); parameters
//! packed per direction as `[w_ih (G*H x I) | w_hh (G*H x H) | b_ih | b_hh]`,
//! PyTorch's layouts.
//!
//! Forward: one product for the input projection of every step, then per
//! step one product `h_prev W_hh^T` accumulated onto it and one fused
//! pointwise pass (gate activations and state update) over the rows. The
//! activated gates and cell states stay for the backward, which per step
//! runs one fused pointwise pass and one product `dA W_hh`, then gets
//! every weight gradient, bias gradient and dx from a few large products.
use super::matmul::{product, product_rowwise, threads_for, Mat, MatMut};
use super::{gru, lstm, rnn, threads};
use crate::nn::spec::Cell;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub cell: Cell,
    pub steps: usize,
    pub batch: usize,
    pub input: usize,
    pub units: usize,
    pub dirs: usize,
}

impl Dims {
    /// G*H: rows of the weight matrices.
    pub fn gate_width(&self) -> usize {
        self.cell.gates() * self.units
    }

    /// Output width, directions concatenated.
    pub fn width(&self) -> usize {
        self.units * self.dirs
    }

    /// Floats kept per (step, row) besides the gates.
    pub fn extra_width(&self) -> usize {
        self.units
            * match self.cell {
                Cell::Lstm => lstm::EXTRA,
                Cell::Gru => gru::EXTRA,
                Cell::Rnn => rnn::EXTRA,
            }
    }

    fn dir_param_len(&self) -> usize {
        let gh = self.gate_width();
        gh * self.input + gh * self.units + 2 * gh
    }

    /// Length of the packed parameter vector.
    pub fn param_len(&self) -> usize {
        self.dirs * self.dir_param_len()
    }

    fn time(&self, dir: usize, step: usize) -> usize {
        if dir == 0 {
            step
        } else {
            self.steps - 1 - step
        }
    }
}

/// One direction's slice of the packed parameters (or of their gradient).
struct DirParams<T> {
    w_ih: T,
    w_hh: T,
    b_ih: T,
    b_hh: T,
}

fn split_params<'a>(d: &Dims, params: &'a [f32], dir: usize) -> DirParams<&'a [f32]> {
    let gh = d.gate_width();
    let p = &params[dir * d.dir_param_len()..(dir + 1) * d.dir_param_len()];
    let (w_ih, rest) = p.split_at(gh * d.input);
    let (w_hh, rest) = rest.split_at(gh * d.units);
    let (b_ih, b_hh) = rest.split_at(gh);
    DirParams {
        w_ih,
        w_hh,
        b_ih,
        b_hh,
    }
}

fn split_params_mut<'a>(d: &Dims, params: &'a mut [f32], dir: usize) -> DirParams<&'a mut [f32]> {
    let gh = d.gate_width();
    let len = d.dir_param_len();
    let p = &mut params[dir * len..(dir + 1) * len];
    let (w_ih, rest) = p.split_at_mut(gh * d.input);
    let (w_hh, rest) = rest.split_at_mut(gh * d.units);
    let (b_ih, b_hh) = rest.split_at_mut(gh);
    DirParams {
        w_ih,
        w_hh,
        b_ih,
        b_hh,
    }
}

/// One direction's weights laid out for the forward's products: the
/// transposes `W_ih^T` [I, G*H] and `W_hh^T` [H, G*H] (gate columns
/// contiguous, the layout gemm reads fastest), and the biases.
struct PreparedDir {
    w_ih_t: Vec<f32>,
    w_hh_t: Vec<f32>,
    /// Added to the input projection: `b_ih + b_hh` (LSTM, RNN) or `b_ih`
    /// (GRU, whose `b_hh` stays inside the reset gate's product).
    projection_bias: Vec<f32>,
    b_hh: Vec<f32>,
}

/// A layer's weights prepared for [`forward`]; the inference engine keeps
/// them, training prepares them each step (a copy of the weights, small
/// beside the products).
pub struct Prepared {
    dirs: Vec<PreparedDir>,
}

/// `out[c, r] = m[r, c]` for a [rows, cols] matrix: eight rows at a time,
/// read as eight sequential streams, written as runs of eight.
pub fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    assert_eq!(m.len(), rows * cols);
    let mut out = vec![0.0f32; rows * cols];
    let mut r = 0;
    while r + 8 <= rows {
        let src: [&[f32]; 8] = std::array::from_fn(|i| &m[(r + i) * cols..(r + i + 1) * cols]);
        for c in 0..cols {
            let dst = &mut out[c * rows + r..c * rows + r + 8];
            for (d, s) in dst.iter_mut().zip(&src) {
                *d = s[c];
            }
        }
        r += 8;
    }
    for r in r..rows {
        for c in 0..cols {
            out[c * rows + r] = m[r * cols + c];
        }
    }
    out
}

pub fn prepare(d: &Dims, params: &[f32]) -> Prepared {
    assert_eq!(params.len(), d.param_len(), "packed parameters");
    let gh = d.gate_width();
    let dirs = (0..d.dirs)
        .map(|dir| {
            let p = split_params(d, params, dir);
            let mut projection_bias = p.b_ih.to_vec();
            if d.cell != Cell::Gru {
                projection_bias
                    .iter_mut()
                    .zip(p.b_hh)
                    .for_each(|(a, b)| *a += b);
            }
            PreparedDir {
                w_ih_t: transpose(p.w_ih, gh, d.input),
                w_hh_t: transpose(p.w_hh, gh, d.units),
                projection_bias,
                b_hh: p.b_hh.to_vec(),
            }
        })
        .collect();
    Prepared { dirs }
}

/// What the forward keeps for the backward; reused between calls where
/// the caller keeps it (inference).
#[derive(Default)]
pub struct State {
    /// Per direction [T, B, G*H]: activated gates after the forward, the
    /// pre-activation gradient after the backward.
    pub gates: Vec<Vec<f32>>,
    /// Per direction [T, B, extra_width]: cell states and their tanh (LSTM),
    /// `h_n` (GRU).
    pub extra: Vec<Vec<f32>>,
    /// [T, B, W]: the hidden states.
    pub h: Vec<f32>,
}

impl State {
    /// Floats the buffers can hold without reallocating.
    pub fn capacity(&self) -> usize {
        let inner: usize = self
            .gates
            .iter()
            .chain(&self.extra)
            .map(Vec::capacity)
            .sum();
        inner + self.h.capacity()
    }
}

#[derive(Clone, Copy)]
struct Ptr(*mut f32);
// SAFETY: workers write disjoint rows of the buffers these point into.
unsafe impl Send for Ptr {}
unsafe impl Sync for Ptr {}

/// How [`forward`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Training: the kernel pool, and the fastest product for each size.
    Train,
    /// Inference: every product sums each row in one fixed order, so a
    /// sequence gets bit-for-bit the same result alone or in any batch;
    /// with `threads` > 1, directions and the columns of large products
    /// are spread over that many workers.
    Infer { threads: usize },
}

/// A unidirectional layer's state to continue from: `h` and, for LSTMs,
/// `c`, each [B, H].
#[derive(Clone, Copy)]
pub struct Initial<'a> {
    pub h: &'a [f32],
    pub c: Option<&'a [f32]>,
}

/// Runs the layer forward from zero states.
pub fn forward(d: &Dims, x: &[f32], weights: &Prepared, state: &mut State, mode: Mode) {
    forward_from(d, x, weights, state, mode, None)
}

/// Runs the layer forward from `init` (zeros when None; unidirectional
/// layers only).
pub fn forward_from(
    d: &Dims,
    x: &[f32],
    weights: &Prepared,
    state: &mut State,
    mode: Mode,
    init: Option<Initial>,
) {
    if let Some(i) = &init {
        assert_eq!(d.dirs, 1, "only a unidirectional layer carries state");
        assert_eq!(i.h.len(), d.batch * d.units, "h is [B, H]");
        if d.cell == Cell::Lstm {
            assert_eq!(
                i.c.map(<[f32]>::len),
                Some(d.batch * d.units),
                "c is [B, H]"
            );
        }
    }
    let parallel = mode == Mode::Train;
    let infer_threads = match mode {
        Mode::Train => 1,
        Mode::Infer { threads } => threads.max(1),
    };
    let (t_len, b, gh, h) = (d.steps, d.batch, d.gate_width(), d.units);
    let tb = t_len * b;
    assert_eq!(x.len(), tb * d.input, "input is [T, B, I]");
    assert_eq!(weights.dirs.len(), d.dirs, "prepared weights");
    state.gates.resize_with(d.dirs, Vec::new);
    state.extra.resize_with(d.dirs, Vec::new);
    state.h.resize(tb * d.width(), 0.0);
    for dir in 0..d.dirs {
        state.gates[dir].resize(tb * gh, 0.0);
        state.extra[dir].resize(tb * d.extra_width(), 0.0);
    }

    // Input projection of every step, biases folded in.
    let gate_ptrs: Vec<Ptr> = state
        .gates
        .iter_mut()
        .map(|g| Ptr(g.as_mut_ptr()))
        .collect();
    let project = |dir: usize, threads: usize| {
        let p = &weights.dirs[dir];
        // SAFETY: each direction writes only its own gates buffer.
        let gates = unsafe { std::slice::from_raw_parts_mut(gate_ptrs[dir].0, tb * gh) };
        for row in gates.chunks_exact_mut(gh) {
            row.copy_from_slice(&p.projection_bias);
        }
        let (dst, a, b) = (
            MatMut::rows(gates, gh),
            Mat::rows(x, d.input),
            Mat::rows(&p.w_ih_t, gh),
        );
        unsafe {
            if parallel {
                product(tb, gh, d.input, dst, true, a, b, threads)
            } else {
                product_rowwise(tb, gh, d.input, dst, true, a, b, threads)
            }
        }
    };
    let available = if parallel {
        threads::threads()
    } else {
        infer_threads
    };
    let gemm_threads = threads_for(tb, gh, d.input, available);
    if available > 1 && d.dirs > 1 && gemm_threads < d.dirs {
        threads::for_each(d.dirs, |dir| project(dir, 1));
    } else {
        (0..d.dirs).for_each(|dir| project(dir, gemm_threads));
    }

    // The recurrent loop: (direction, block of rows) items, independent.
    let blocks = if parallel {
        threads::row_blocks(b, d.dirs)
    } else {
        vec![(0, b)]
    };
    let items: Vec<(usize, usize, usize)> = (0..d.dirs)
        .flat_map(|dir| blocks.iter().map(move |&(r0, r1)| (dir, r0, r1)))
        .collect();
    let extra_ptrs: Vec<Ptr> = state
        .extra
        .iter_mut()
        .map(|e| Ptr(e.as_mut_ptr()))
        .collect();
    let h_ptr = Ptr(state.h.as_mut_ptr());
    let zeros = vec![0.0f32; h];
    let route = if parallel {
        Route::Fast(step_threads(items.len()))
    } else {
        Route::RowWise((infer_threads / items.len()).max(1))
    };
    let run = |i: usize| {
        let (dir, r0, r1) = items[i];
        // SAFETY: items cover disjoint (direction, rows) blocks.
        unsafe {
            forward_block(
                d,
                dir,
                r0,
                r1,
                route,
                &weights.dirs[dir],
                gate_ptrs[dir],
                extra_ptrs[dir],
                h_ptr,
                &zeros,
                init,
            )
        }
    };
    if available > 1 {
        threads::for_each(items.len(), run);
    } else {
        (0..items.len()).for_each(run);
    }
}

#[allow(clippy::too_many_arguments)]
unsafe fn forward_block(
    d: &Dims,
    dir: usize,
    r0: usize,
    r1: usize,
    route: Route,
    p: &PreparedDir,
    gates: Ptr,
    extra: Ptr,
    hs: Ptr,
    zeros: &[f32],
    init: Option<Initial>,
) {
    let (b, gh, h, w, eh) = (d.batch, d.gate_width(), d.units, d.width(), d.extra_width());
    let rows = r1 - r0;
    let w_hh_t = Mat::rows(&p.w_hh_t, gh);
    let mut hw = if d.cell == Cell::Gru {
        vec![0.0f32; rows * gh]
    } else {
        Vec::new()
    };
    for s in 0..d.steps {
        let t = d.time(dir, s);
        let prev = (s > 0).then(|| d.time(dir, s - 1));
        let a = gates.0.add((t * b + r0) * gh);
        let out = hs.0.add((t * b + r0) * w + dir * h);
        // The previous h (and c) with their row strides: the last step's,
        // the carried state's at the first step, or none (zeros).
        let h_prev: Option<(*const f32, usize)> = match prev {
            Some(tp) => Some((hs.0.add((tp * b + r0) * w + dir * h) as *const f32, w)),
            None => init.map(|i| (i.h.as_ptr().add(r0 * h), h)),
        };
        match d.cell {
            Cell::Lstm => {
                if let Some((hp, ld)) = h_prev {
                    forward_product(
                        route,
                        rows,
                        gh,
                        h,
                        MatMut { ptr: a, ld: gh },
                        true,
                        Mat::raw(hp, ld),
                        w_hh_t,
                    );
                }
                let (c_prev, c_ld) = match (prev, init.and_then(|i| i.c)) {
                    (Some(tp), _) => (extra.0.add((tp * b + r0) * eh) as *const f32, eh),
                    (None, Some(c)) => (c.as_ptr().add(r0 * h), h),
                    (None, None) => (zeros.as_ptr(), 0),
                };
                let e = extra.0.add((t * b + r0) * eh);
                lstm::forward_rows(rows, h, a, gh, c_prev, c_ld, e, eh, out, w);
            }
            Cell::Gru => {
                for row in hw.chunks_exact_mut(gh) {
                    row.copy_from_slice(&p.b_hh);
                }
                let (hp, hp_ld) = match h_prev {
                    Some((hp, ld)) => {
                        forward_product(
                            route,
                            rows,
                            gh,
                            h,
                            MatMut::rows(&mut hw, gh),
                            true,
                            Mat::raw(hp, ld),
                            w_hh_t,
                        );
                        (hp, ld)
                    }
                    None => (zeros.as_ptr(), 0),
                };
                let e = extra.0.add((t * b + r0) * eh);
                gru::forward_rows(rows, h, a, gh, hw.as_ptr(), gh, hp, hp_ld, e, eh, out, w);
            }
            Cell::Rnn => {
                if let Some((hp, ld)) = h_prev {
                    forward_product(
                        route,
                        rows,
                        gh,
                        h,
                        MatMut { ptr: a, ld: gh },
                        true,
                        Mat::raw(hp, ld),
                        w_hh_t,
                    );
                }
                rnn::forward_rows(rows, h, a, gh, out, w);
            }
        }
    }
}

/// The output of a layer that returns only its final state: [B, W], the
/// forward direction after the last step, the reverse after the first.
pub fn last_states(d: &Dims, hs: &[f32], out: &mut Vec<f32>) {
    let (b, h, w) = (d.batch, d.units, d.width());
    out.resize(b * w, 0.0);
    for dir in 0..d.dirs {
        let t = d.time(dir, d.steps - 1);
        for r in 0..b {
            let src = &hs[(t * b + r) * w + dir * h..][..h];
            out[r * w + dir * h..][..h].copy_from_slice(src);
        }
    }
}

/// Backward of [`forward_from`]. `hs` is the forward's hidden states [T,
/// B, W]; `dy` the output gradient, [T, B, W] when `dy_seq`, else [B, W]
/// (final states); `init` the state the forward started from (a constant:
/// no gradient flows into it, truncated BPTT). Consumes `state`'s gates and
/// extra (they become gradients). Writes `dx` [T, B, I] and `dparams`
/// (packed like the parameters).
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
    let (t_len, b, gh, h, w, eh) = (
        d.steps,
        d.batch,
        d.gate_width(),
        d.units,
        d.width(),
        d.extra_width(),
    );
    let tb = t_len * b;
    assert_eq!(hs.len(), tb * w);
    assert_eq!(dy.len(), if dy_seq { tb * w } else { b * w });
    assert_eq!(dx.len(), tb * d.input);
    assert_eq!(dparams.len(), d.param_len());

    let blocks = threads::row_blocks(b, d.dirs);
    let items: Vec<(usize, usize, usize)> = (0..d.dirs)
        .flat_map(|dir| blocks.iter().map(move |&(r0, r1)| (dir, r0, r1)))
        .collect();
    let gate_ptrs: Vec<Ptr> = state
        .gates
        .iter_mut()
        .map(|g| Ptr(g.as_mut_ptr()))
        .collect();
    let extra_ptrs: Vec<Ptr> = state
        .extra
        .iter_mut()
        .map(|e| Ptr(e.as_mut_ptr()))
        .collect();
    let zeros = vec![0.0f32; h];
    let per_step = step_threads(items.len());
    threads::for_each(items.len(), |i| {
        let (dir, r0, r1) = items[i];
        // SAFETY: items cover disjoint (direction, rows) blocks.
        unsafe {
            backward_block(
                d,
                dir,
                r0,
                r1,
                per_step,
                split_params(d, params, dir),
                gate_ptrs[dir],
                extra_ptrs[dir],
                hs,
                dy,
                dy_seq,
                &zeros,
                init,
            )
        }
    });

    // Weight and bias gradients, and dx, from whole-sequence products.
    let all = threads::threads();
    // SAFETY (products below): every view covers the shape it is given,
    // and destinations overlap no operand.
    for dir in 0..d.dirs {
        let p = split_params(d, params, dir);
        let gates = &state.gates[dir];
        let extra = &state.extra[dir];
        let g = split_params_mut(d, dparams, dir);
        let da = Mat::rows(gates, gh);
        unsafe {
            product(
                gh,
                d.input,
                tb,
                MatMut::rows(g.w_ih, d.input),
                false,
                da.t(),
                Mat::rows(x, d.input),
                threads_for(gh, d.input, tb, all),
            );
        }
        // Pairs (step s, state of step s-1): for the forward direction
        // gradients at times 1.. with states at times ..T-1; for the
        // reverse, gradients at times ..T-1 with states at times 1...
        let k = (t_len - 1) * b;
        if k == 0 {
            g.w_hh.fill(0.0);
        } else {
            let (a_row, h_row) = if dir == 0 { (b, 0) } else { (0, b) };
            let h_prev = Mat::raw(hs[h_row * w + dir * h..].as_ptr(), w);
            let kt = threads_for(gh, h, k, all);
            let da_pairs = Mat::raw(gates[a_row * gh..].as_ptr(), gh).t();
            if d.cell == Cell::Gru {
                // Rows r, z from the gate gradients; row n from h_n's.
                let two = 2 * h;
                let (w_rz, w_n) = g.w_hh.split_at_mut(two * h);
                let dn_pairs = Mat::raw(extra[a_row * eh..].as_ptr(), eh).t();
                unsafe {
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
                }
            } else {
                unsafe {
                    product(
                        gh,
                        h,
                        k,
                        MatMut::rows(g.w_hh, h),
                        false,
                        da_pairs,
                        h_prev,
                        kt,
                    );
                }
            }
        }
        if let Some(i) = init {
            // The first step pairs with the carried state.
            first_step_w_hh(d, gates, extra, i.h, g.w_hh, all);
        }
        column_sums(gates, gh, g.b_ih);
        match d.cell {
            Cell::Gru => {
                g.b_hh[..2 * h].copy_from_slice(&g.b_ih[..2 * h]);
                column_sums(extra, eh, &mut g.b_hh[2 * h..]);
            }
            _ => g.b_hh.copy_from_slice(g.b_ih),
        }
        unsafe {
            product(
                tb,
                d.input,
                gh,
                MatMut::rows(dx, d.input),
                dir > 0,
                da,
                Mat::rows(p.w_ih, d.input),
                threads_for(tb, d.input, gh, all),
            );
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

#[allow(clippy::too_many_arguments)]
unsafe fn backward_block(
    d: &Dims,
    dir: usize,
    r0: usize,
    r1: usize,
    per_step: usize,
    p: DirParams<&[f32]>,
    gates: Ptr,
    extra: Ptr,
    hs: &[f32],
    dy: &[f32],
    dy_seq: bool,
    zeros: &[f32],
    init: Option<Initial>,
) {
    let (b, gh, h, w, eh) = (d.batch, d.gate_width(), d.units, d.width(), d.extra_width());
    let rows = r1 - r0;
    let mut dh = vec![0.0f32; rows * h];
    let mut dc = if d.cell == Cell::Lstm {
        vec![0.0f32; rows * h]
    } else {
        Vec::new()
    };
    let w_hh = Mat::rows(p.w_hh, h);
    for s in (0..d.steps).rev() {
        let t = d.time(dir, s);
        let prev = (s > 0).then(|| d.time(dir, s - 1));
        let (dyp, dy_ld) = if dy_seq {
            (dy[(t * b + r0) * w + dir * h..].as_ptr(), w)
        } else if s == d.steps - 1 {
            (dy[r0 * w + dir * h..].as_ptr(), w)
        } else {
            (zeros.as_ptr(), 0)
        };
        let a = gates.0.add((t * b + r0) * gh);
        let e = extra.0.add((t * b + r0) * eh);
        match d.cell {
            Cell::Lstm => {
                let (c_prev, c_ld) = match (prev, init.and_then(|i| i.c)) {
                    (Some(tp), _) => (extra.0.add((tp * b + r0) * eh) as *const f32, eh),
                    (None, Some(c)) => (c.as_ptr().add(r0 * h), h),
                    (None, None) => (zeros.as_ptr(), 0),
                };
                lstm::backward_rows(
                    rows,
                    h,
                    a,
                    gh,
                    c_prev,
                    c_ld,
                    e,
                    eh,
                    dh.as_ptr(),
                    dyp,
                    dy_ld,
                    dc.as_mut_ptr(),
                );
                if s > 0 {
                    product(
                        rows,
                        h,
                        gh,
                        MatMut::rows(&mut dh, h),
                        false,
                        Mat::raw(a, gh),
                        w_hh,
                        per_step,
                    );
                }
            }
            Cell::Gru => {
                let (hp, hp_ld) = match (prev, init) {
                    (Some(tp), _) => (hs[(tp * b + r0) * w + dir * h..].as_ptr(), w),
                    (None, Some(i)) => (i.h.as_ptr().add(r0 * h), h),
                    (None, None) => (zeros.as_ptr(), 0),
                };
                gru::backward_rows(
                    rows,
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
                if s > 0 {
                    let two = 2 * h;
                    product(
                        rows,
                        h,
                        two,
                        MatMut::rows(&mut dh, h),
                        true,
                        Mat::raw(a, gh),
                        w_hh,
                        per_step,
                    );
                    product(
                        rows,
                        h,
                        h,
                        MatMut::rows(&mut dh, h),
                        true,
                        Mat::raw(e, eh),
                        Mat::rows(&p.w_hh[two * h..], h),
                        per_step,
                    );
                }
            }
            Cell::Rnn => {
                rnn::backward_rows(rows, h, a, gh, dh.as_ptr(), dyp, dy_ld);
                if s > 0 {
                    product(
                        rows,
                        h,
                        gh,
                        MatMut::rows(&mut dh, h),
                        false,
                        Mat::raw(a, gh),
                        w_hh,
                        per_step,
                    );
                }
            }
        }
    }
}

/// How a recurrent loop runs its per-step products.
#[derive(Clone, Copy)]
enum Route {
    /// The fastest kernel for the size, split by rows over this many
    /// threads.
    Fast(usize),
    /// The row-wise kernel (see [`Mode::Infer`]), large products split by
    /// columns over this many threads.
    RowWise(usize),
}

/// Threads for each per-step product when `items` loop items share the
/// workers: more than one only when the batch is not split over them
/// (few rows, or batch splitting off), so each step's products are.
fn step_threads(items: usize) -> usize {
    (threads::threads() / items.max(1)).max(1)
}

/// A per-step product of the forward.
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn forward_product(
    route: Route,
    m: usize,
    n: usize,
    k: usize,
    dst: MatMut,
    accumulate: bool,
    a: Mat,
    b: Mat,
) {
    match route {
        Route::Fast(threads) => product(m, n, k, dst, accumulate, a, b, threads),
        Route::RowWise(threads) => product_rowwise(m, n, k, dst, accumulate, a, b, threads),
    }
}

/// `out[c] = Σ_r m[r, c]` over a contiguous [rows, cols] matrix.
fn column_sums(m: &[f32], cols: usize, out: &mut [f32]) {
    out.fill(0.0);
    for row in m.chunks_exact(cols) {
        out.iter_mut().zip(row).for_each(|(o, v)| *o += v);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn transpose_swaps_rows_and_columns() {
        for (rows, cols) in [(1, 1), (3, 5), (8, 2), (19, 7), (256, 64)] {
            let m: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let t = super::transpose(&m, rows, cols);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(t[c * rows + r], m[r * cols + c]);
                }
            }
        }
    }
}
