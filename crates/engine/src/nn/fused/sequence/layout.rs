//! Where a layer's numbers live: its dimensions, the packed parameters
//! split per direction, and the weights laid out for the forward.
use super::super::{gru, lstm, rnn};
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

    pub(super) fn time(&self, dir: usize, step: usize) -> usize {
        if dir == 0 {
            step
        } else {
            self.steps - 1 - step
        }
    }
}

/// One direction's slice of the packed parameters (or of their gradient).
pub(super) struct DirParams<T> {
    pub(super) w_ih: T,
    pub(super) w_hh: T,
    pub(super) b_ih: T,
    pub(super) b_hh: T,
}

pub(super) fn split_params<'a>(d: &Dims, params: &'a [f32], dir: usize) -> DirParams<&'a [f32]> {
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

pub(super) fn split_params_mut<'a>(
    d: &Dims,
    params: &'a mut [f32],
    dir: usize,
) -> DirParams<&'a mut [f32]> {
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
pub(super) struct PreparedDir {
    pub(super) w_ih_t: Vec<f32>,
    pub(super) w_hh_t: Vec<f32>,
    /// Added to the input projection: `b_ih + b_hh` (LSTM, RNN) or `b_ih`
    /// (GRU, whose `b_hh` stays inside the reset gate's product).
    pub(super) projection_bias: Vec<f32>,
    pub(super) b_hh: Vec<f32>,
}

/// A layer's weights prepared for [`forward`]; the inference engine keeps
/// them, training prepares them each step (a copy of the weights, small
/// beside the products).
pub struct Prepared {
    pub(super) dirs: Vec<PreparedDir>,
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
