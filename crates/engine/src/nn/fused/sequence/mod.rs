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
//!
//! This file holds what both passes share: the state the forward keeps for
//! the backward, and the blocks of rows the recurrent loops hand out.
mod backward;
mod forward;
mod layout;

pub use backward::backward;
pub use forward::{forward, forward_from};
pub use layout::{last_states, prepare, transpose, Dims, Prepared};

use super::threads;
use crate::nn::spec::Cell;

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

#[derive(Clone, Copy)]
struct Ptr(*mut f32);
// SAFETY: workers write disjoint rows of the buffers these point into.
unsafe impl Send for Ptr {}
unsafe impl Sync for Ptr {}

/// A pointer to each buffer, for workers that write disjoint rows of them.
fn pointers(buffers: &mut [Vec<f32>]) -> Vec<Ptr> {
    buffers.iter_mut().map(|b| Ptr(b.as_mut_ptr())).collect()
}

/// The recurrent loop's work items, `(direction, first row, end row)`:
/// every direction's rows split into `blocks`.
fn items(d: &Dims, blocks: &[(usize, usize)]) -> Vec<(usize, usize, usize)> {
    (0..d.dirs)
        .flat_map(|dir| blocks.iter().map(move |&(r0, r1)| (dir, r0, r1)))
        .collect()
}

/// Threads for each per-step product when `items` loop items share the
/// workers: more than one only when the batch is not split over them
/// (few rows, or batch splitting off), so each step's products are.
fn step_threads(items: usize) -> usize {
    (threads::threads() / items.max(1)).max(1)
}

/// What every block of a recurrent loop points into: a state's gates and
/// extra per direction, the hidden states, and H zeros.
struct Buffers {
    gates: Vec<Ptr>,
    extra: Vec<Ptr>,
    hs: Ptr,
    zeros: Vec<f32>,
}

impl Buffers {
    fn new(d: &Dims, state: &mut State, hs: Ptr) -> Self {
        Buffers {
            gates: pointers(&mut state.gates),
            extra: pointers(&mut state.extra),
            hs,
            zeros: vec![0.0f32; d.units],
        }
    }

    /// The block of loop item `(dir, r0, r1)`.
    fn block<'a>(
        &'a self,
        d: &'a Dims,
        (dir, r0, r1): (usize, usize, usize),
        init: Option<Initial<'a>>,
    ) -> Block<'a> {
        Block {
            d,
            dir,
            r0,
            rows: r1 - r0,
            gates: self.gates[dir],
            extra: self.extra[dir],
            hs: self.hs,
            zeros: &self.zeros,
            init,
        }
    }
}

/// One work item of a recurrent loop: direction `dir`, batch rows
/// `r0..r0 + rows`. It reads and writes only its own rows of the buffers.
#[derive(Clone, Copy)]
struct Block<'a> {
    d: &'a Dims,
    dir: usize,
    r0: usize,
    rows: usize,
    gates: Ptr,
    extra: Ptr,
    /// The hidden states [T, B, W]: written by the forward, read by the
    /// backward.
    hs: Ptr,
    /// H zeros, the state before the first step when none is carried.
    zeros: &'a [f32],
    init: Option<Initial<'a>>,
}

impl Block<'_> {
    /// The block's first row at time `t` in a [T, B, ...] buffer.
    fn row(&self, t: usize) -> usize {
        t * self.d.batch + self.r0
    }

    /// The block's gates at time `t` (row stride G*H).
    unsafe fn gates_at(&self, t: usize) -> *mut f32 {
        self.gates.0.add(self.row(t) * self.d.gate_width())
    }

    /// The block's extra at time `t` (row stride extra_width).
    unsafe fn extra_at(&self, t: usize) -> *mut f32 {
        self.extra.0.add(self.row(t) * self.d.extra_width())
    }

    /// The block's hidden states at time `t` (row stride W).
    unsafe fn h_at(&self, t: usize) -> *mut f32 {
        self.hs
            .0
            .add(self.row(t) * self.d.width() + self.dir * self.d.units)
    }

    /// The previous h with its row stride: the step before's (`prev` is its
    /// time), the carried state's at the first step, or None (zeros).
    unsafe fn h_prev(&self, prev: Option<usize>) -> Option<(*const f32, usize)> {
        match prev {
            Some(tp) => Some((self.h_at(tp) as *const f32, self.d.width())),
            None => self
                .init
                .map(|i| (i.h.as_ptr().add(self.r0 * self.d.units), self.d.units)),
        }
    }

    /// [`Self::h_prev`], zeros (stride 0) when there is none.
    unsafe fn h_prev_or_zeros(&self, prev: Option<usize>) -> (*const f32, usize) {
        self.h_prev(prev).unwrap_or((self.zeros.as_ptr(), 0))
    }

    /// The previous LSTM cell state with its row stride, as [`Self::h_prev`].
    unsafe fn c_prev(&self, prev: Option<usize>) -> (*const f32, usize) {
        debug_assert_eq!(self.d.cell, Cell::Lstm);
        match (prev, self.init.and_then(|i| i.c)) {
            (Some(tp), _) => (self.extra_at(tp) as *const f32, self.d.extra_width()),
            (None, Some(c)) => (c.as_ptr().add(self.r0 * self.d.units), self.d.units),
            (None, None) => (self.zeros.as_ptr(), 0),
        }
    }
}
