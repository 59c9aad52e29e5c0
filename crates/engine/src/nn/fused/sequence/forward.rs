//! The layer's forward: the input projection of every step in one
//! product, then the recurrent loop over blocks of rows.
use super::layout::{Dims, Prepared, PreparedDir};
use super::{items, pointers, step_threads, Block, Buffers, Initial, Mode, Ptr, State};
use crate::nn::fused::matmul::{product, product_rowwise, threads_for, Mat, MatMut};
use crate::nn::fused::{gru, lstm, rnn, threads};
use crate::nn::spec::Cell;

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
        check_initial(d, i);
    }
    assert_eq!(x.len(), d.steps * d.batch * d.input, "input is [T, B, I]");
    assert_eq!(weights.dirs.len(), d.dirs, "prepared weights");
    size_state(d, state);
    let budget = Budget::of(mode);
    project_inputs(d, x, weights, state, budget);
    recur(d, weights, state, budget, init);
}

fn check_initial(d: &Dims, i: &Initial) {
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

/// Sizes the state's buffers for `d`, keeping their allocations.
fn size_state(d: &Dims, state: &mut State) {
    let tb = d.steps * d.batch;
    state.gates.resize_with(d.dirs, Vec::new);
    state.extra.resize_with(d.dirs, Vec::new);
    state.h.resize(tb * d.width(), 0.0);
    for dir in 0..d.dirs {
        state.gates[dir].resize(tb * d.gate_width(), 0.0);
        state.extra[dir].resize(tb * d.extra_width(), 0.0);
    }
}

/// The threads a forward may use, from its mode.
#[derive(Clone, Copy)]
struct Budget {
    /// Training: the kernel pool, rows split over it.
    parallel: bool,
    /// Inference's thread count (1 when training).
    infer_threads: usize,
    /// Workers in all.
    available: usize,
}

impl Budget {
    fn of(mode: Mode) -> Self {
        let parallel = mode == Mode::Train;
        let infer_threads = match mode {
            Mode::Train => 1,
            Mode::Infer { threads } => threads.max(1),
        };
        let available = if parallel {
            threads::threads()
        } else {
            infer_threads
        };
        Budget {
            parallel,
            infer_threads,
            available,
        }
    }
}

/// Every step's input projection `x W_ih^T`, biases folded in, into the
/// gates: one product a direction, or the directions side by side when
/// one product would not use the workers.
fn project_inputs(d: &Dims, x: &[f32], weights: &Prepared, state: &mut State, budget: Budget) {
    let (tb, gh) = (d.steps * d.batch, d.gate_width());
    let gate_ptrs = pointers(&mut state.gates);
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
            if budget.parallel {
                product(tb, gh, d.input, dst, true, a, b, threads)
            } else {
                product_rowwise(tb, gh, d.input, dst, true, a, b, threads)
            }
        }
    };
    let gemm_threads = threads_for(tb, gh, d.input, budget.available);
    if budget.available > 1 && d.dirs > 1 && gemm_threads < d.dirs {
        threads::for_each(d.dirs, |dir| project(dir, 1));
    } else {
        (0..d.dirs).for_each(|dir| project(dir, gemm_threads));
    }
}

/// The recurrent loop: (direction, block of rows) items, independent.
fn recur(d: &Dims, weights: &Prepared, state: &mut State, budget: Budget, init: Option<Initial>) {
    let blocks = if budget.parallel {
        threads::row_blocks(d.batch, d.dirs)
    } else {
        vec![(0, d.batch)]
    };
    let items = items(d, &blocks);
    let h_ptr = Ptr(state.h.as_mut_ptr());
    let buffers = Buffers::new(d, state, h_ptr);
    let route = if budget.parallel {
        Route::Fast(step_threads(items.len()))
    } else {
        Route::RowWise((budget.infer_threads / items.len()).max(1))
    };
    let run = |i: usize| {
        let at = buffers.block(d, items[i], init);
        let block = ForwardBlock {
            p: &weights.dirs[at.dir],
            at,
            route,
        };
        // SAFETY: items cover disjoint (direction, rows) blocks.
        unsafe { block.run() }
    };
    if budget.available > 1 {
        threads::for_each(items.len(), run);
    } else {
        (0..items.len()).for_each(run);
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

/// One block's forward, step by step in its direction's order.
struct ForwardBlock<'a> {
    at: Block<'a>,
    route: Route,
    p: &'a PreparedDir,
}

impl ForwardBlock<'_> {
    unsafe fn run(&self) {
        let (d, dir) = (self.at.d, self.at.dir);
        // The GRU's `h_prev W_hh^T + b_hh`, kept apart for its reset gate.
        let mut hw = if d.cell == Cell::Gru {
            vec![0.0f32; self.at.rows * d.gate_width()]
        } else {
            Vec::new()
        };
        for s in 0..d.steps {
            let t = d.time(dir, s);
            let prev = (s > 0).then(|| d.time(dir, s - 1));
            match d.cell {
                Cell::Lstm => self.lstm_step(t, prev),
                Cell::Gru => self.gru_step(t, prev, &mut hw),
                Cell::Rnn => self.rnn_step(t, prev),
            }
        }
    }

    /// `dst += h_prev W_hh^T` over the block's rows.
    unsafe fn recurrent_product(&self, dst: MatMut, (hp, ld): (*const f32, usize)) {
        let (rows, gh, h) = (self.at.rows, self.at.d.gate_width(), self.at.d.units);
        let (a, b) = (Mat::raw(hp, ld), Mat::rows(&self.p.w_hh_t, gh));
        match self.route {
            Route::Fast(threads) => product(rows, gh, h, dst, true, a, b, threads),
            Route::RowWise(threads) => product_rowwise(rows, gh, h, dst, true, a, b, threads),
        }
    }

    unsafe fn lstm_step(&self, t: usize, prev: Option<usize>) {
        let d = self.at.d;
        let (gh, a) = (d.gate_width(), self.at.gates_at(t));
        if let Some(hp) = self.at.h_prev(prev) {
            self.recurrent_product(MatMut { ptr: a, ld: gh }, hp);
        }
        let (c_prev, c_ld) = self.at.c_prev(prev);
        lstm::forward_rows(
            self.at.rows,
            d.units,
            a,
            gh,
            c_prev,
            c_ld,
            self.at.extra_at(t),
            d.extra_width(),
            self.at.h_at(t),
            d.width(),
        );
    }

    unsafe fn gru_step(&self, t: usize, prev: Option<usize>, hw: &mut [f32]) {
        let d = self.at.d;
        let gh = d.gate_width();
        for row in hw.chunks_exact_mut(gh) {
            row.copy_from_slice(&self.p.b_hh);
        }
        if let Some(hp) = self.at.h_prev(prev) {
            self.recurrent_product(MatMut::rows(hw, gh), hp);
        }
        let (hp, hp_ld) = self.at.h_prev_or_zeros(prev);
        gru::forward_rows(
            self.at.rows,
            d.units,
            self.at.gates_at(t),
            gh,
            hw.as_ptr(),
            gh,
            hp,
            hp_ld,
            self.at.extra_at(t),
            d.extra_width(),
            self.at.h_at(t),
            d.width(),
        );
    }

    unsafe fn rnn_step(&self, t: usize, prev: Option<usize>) {
        let d = self.at.d;
        let (gh, a) = (d.gate_width(), self.at.gates_at(t));
        if let Some(hp) = self.at.h_prev(prev) {
            self.recurrent_product(MatMut { ptr: a, ld: gh }, hp);
        }
        rnn::forward_rows(self.at.rows, d.units, a, gh, self.at.h_at(t), d.width());
    }
}
