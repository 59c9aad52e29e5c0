//! Recurrent layers composed from candle tensor ops (autograd-tracked), with
//! PyTorch's gate layouts and formulas. This path runs on any candle device
//! and is the oracle for faster kernels.
use candle_core::{Result, Tensor};
use candle_nn::ops::sigmoid;

use super::spec::{Cell, LayerSpec};

/// One direction's tensors, PyTorch layout: `weight_ih` [G*H, I],
/// `weight_hh` [G*H, H], biases [G*H].
#[derive(Clone, Debug)]
pub struct DirectionWeights {
    pub weight_ih: Tensor,
    pub weight_hh: Tensor,
    pub bias_ih: Tensor,
    pub bias_hh: Tensor,
}

#[derive(Clone, Debug)]
pub struct RecurrentLayer {
    pub spec: LayerSpec,
    pub forward: DirectionWeights,
    pub reverse: Option<DirectionWeights>,
}

impl RecurrentLayer {
    /// `x`: [B, T, I]. With `return_sequences` the output is [B, T, W] (every
    /// step, directions concatenated); otherwise [B, W]: the forward state
    /// after the last step and the reverse state after the first, like Keras'
    /// `Bidirectional(merge_mode="concat")`.
    pub fn forward(&self, x: &Tensor, return_sequences: bool) -> Result<Tensor> {
        let (fwd, _) = run_direction(self.spec.cell, &self.forward, x, false, None)?;
        let bwd = match &self.reverse {
            Some(w) => Some(run_direction(self.spec.cell, w, x, true, None)?.0),
            None => None,
        };
        if return_sequences {
            let f = Tensor::stack(&fwd, 1)?;
            match bwd {
                Some(b) => Tensor::cat(&[f, Tensor::stack(&b, 1)?], 2),
                None => Ok(f),
            }
        } else {
            let last = fwd.last().expect("sequence has at least one step").clone();
            match bwd {
                Some(b) => Tensor::cat(&[last, b[0].clone()], 1),
                None => Ok(last),
            }
        }
    }
}

/// The recurrent state of a unidirectional layer after some tokens: h, and
/// c for an LSTM. Sessions keep it between calls.
#[derive(Clone, Debug)]
pub struct LayerState {
    pub h: Tensor,
    pub c: Option<Tensor>,
}

impl RecurrentLayer {
    /// Like `forward` for a unidirectional layer, continuing from `state`
    /// (zeros when None) and returning the state after the last step.
    pub fn forward_from(
        &self,
        x: &Tensor,
        state: Option<&LayerState>,
        return_sequences: bool,
    ) -> Result<(Tensor, LayerState)> {
        if self.reverse.is_some() {
            candle_core::bail!("a bidirectional layer has no state to carry forward");
        }
        let (states, last) = run_direction(self.spec.cell, &self.forward, x, false, state)?;
        let out = if return_sequences {
            Tensor::stack(&states, 1)?
        } else {
            last.h.clone()
        };
        Ok((out, last))
    }
}

/// Runs one direction over the sequence from `init` (zeros when None);
/// returns the hidden state at every position, in time order (for the
/// reverse direction, position t holds the state after consuming tokens
/// T-1 down to t), and the state after the last step.
fn run_direction(
    cell: Cell,
    w: &DirectionWeights,
    x: &Tensor,
    reverse: bool,
    init: Option<&LayerState>,
) -> Result<(Vec<Tensor>, LayerState)> {
    let (batch, steps, input) = x.dims3()?;
    let rows = w.weight_ih.dim(0)?;
    let units = rows / cell.gates();
    // Input projection of every step in one matmul. LSTM and RNN fold both
    // biases in here; GRU needs bias_hh inside the reset gate product.
    let bias = match cell {
        Cell::Gru => w.bias_ih.clone(),
        _ => (&w.bias_ih + &w.bias_hh)?,
    };
    let projected = x
        .reshape((batch * steps, input))?
        .matmul(&w.weight_ih.t()?)?
        .broadcast_add(&bias)?
        .reshape((batch, steps, rows))?;
    let weight_hh_t = w.weight_hh.t()?;
    let mut states: Vec<Option<Tensor>> = vec![None; steps];
    let mut h: Option<Tensor> = init.map(|s| s.h.clone());
    let mut c: Option<Tensor> = init.and_then(|s| s.c.clone());
    for step in 0..steps {
        let t = if reverse { steps - 1 - step } else { step };
        let xt = projected.narrow(1, t, 1)?.squeeze(1)?;
        let next = match cell {
            Cell::Lstm => {
                // h0 = c0 = 0, so the first step skips the recurrent matmul.
                let gates = match &h {
                    Some(h) => (xt + h.matmul(&weight_hh_t)?)?,
                    None => xt,
                };
                let g = gates.chunk(4, 1)?;
                let i = sigmoid(&g[0])?;
                let f = sigmoid(&g[1])?;
                let cand = g[2].tanh()?;
                let o = sigmoid(&g[3])?;
                let c_next = match &c {
                    Some(c) => ((f * c)? + (i * cand)?)?,
                    None => (i * cand)?,
                };
                let h_next = (o * c_next.tanh()?)?;
                c = Some(c_next);
                h_next
            }
            Cell::Gru => {
                let gh = match &h {
                    Some(h) => h.matmul(&weight_hh_t)?.broadcast_add(&w.bias_hh)?,
                    None => w
                        .bias_hh
                        .unsqueeze(0)?
                        .broadcast_as((batch, rows))?
                        .contiguous()?,
                };
                let xg = xt.chunk(3, 1)?;
                let hg = gh.chunk(3, 1)?;
                let r = sigmoid(&(&xg[0] + &hg[0])?)?;
                let z = sigmoid(&(&xg[1] + &hg[1])?)?;
                let n = (&xg[2] + (r * &hg[2])?)?.tanh()?;
                // h' = (1 - z) * n + z * h  =  n + z * (h - n)
                match &h {
                    Some(h) => (&n + (z * (h - &n)?)?)?,
                    None => (&n - (z * &n)?)?,
                }
            }
            Cell::Rnn => match &h {
                Some(h) => (xt + h.matmul(&weight_hh_t)?)?.tanh()?,
                None => xt.tanh()?,
            },
        };
        debug_assert_eq!(next.dims(), &[batch, units]);
        states[t] = Some(next.clone());
        h = Some(next);
    }
    let last = LayerState {
        h: h.expect("sequence has at least one step"),
        c,
    };
    let states = states
        .into_iter()
        .map(|s| s.expect("every step ran"))
        .collect();
    Ok((states, last))
}
