//! Adam / AdamW with their state in plain tensors (moments and step), so a
//! run can be checkpointed and resumed; candle-nn's AdamW cannot export its
//! state.
use candle_core::{backprop::GradStore, Result, Tensor, Var};

use super::config::Optimizer;

#[derive(Clone, Copy, Debug)]
pub struct AdamSettings {
    pub optimizer: Optimizer,
    pub learning_rate: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub epsilon: f64,
    pub weight_decay: f64,
}

/// The optimizer state a checkpoint carries, one moment per parameter.
#[derive(Clone, Debug)]
pub struct AdamState {
    pub step: u64,
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
}

pub struct Adam {
    params: Vec<Var>,
    state: AdamState,
    pub settings: AdamSettings,
}

impl Adam {
    pub fn new(params: Vec<Var>, settings: AdamSettings) -> Result<Self> {
        let zeros = |p: &Var| p.as_tensor().zeros_like();
        Ok(Self {
            state: AdamState {
                step: 0,
                m: params.iter().map(zeros).collect::<Result<_>>()?,
                v: params.iter().map(zeros).collect::<Result<_>>()?,
            },
            params,
            settings,
        })
    }

    pub fn state(&self) -> &AdamState {
        &self.state
    }

    /// Puts back a checkpointed state; shapes must match the parameters.
    pub fn restore(&mut self, state: AdamState) -> Result<()> {
        for (i, p) in self.params.iter().enumerate() {
            for t in [&state.m[i], &state.v[i]] {
                if t.dims() != p.dims() {
                    candle_core::bail!(
                        "optimizer state {i} has shape {:?}, parameter has {:?}",
                        t.dims(),
                        p.dims()
                    );
                }
            }
        }
        self.state = state;
        Ok(())
    }

    /// One update with gradients multiplied by `grad_scale` (for clipping),
    /// PyTorch's formulas: Adam adds `weight_decay * p` to the gradient,
    /// AdamW shrinks `p` by `lr * weight_decay` first; then
    /// p -= lr * m_hat / (sqrt(v_hat) + eps).
    pub fn step(&mut self, grads: &GradStore, grad_scale: f64) -> Result<()> {
        let s = self.settings;
        self.state.step += 1;
        let t = self.state.step as i32;
        let bc1 = 1.0 - s.beta1.powi(t);
        let bc2 = 1.0 - s.beta2.powi(t);
        for (i, p) in self.params.iter().enumerate() {
            let Some(g) = grads.get(p.as_tensor()) else {
                continue;
            };
            let mut g = if grad_scale != 1.0 {
                g.affine(grad_scale, 0.0)?
            } else {
                g.clone()
            };
            let mut current = p.as_tensor().clone();
            if s.weight_decay > 0.0 {
                match s.optimizer {
                    Optimizer::Adam => g = (g + current.affine(s.weight_decay, 0.0)?)?,
                    Optimizer::AdamW => {
                        current = current.affine(1.0 - s.learning_rate * s.weight_decay, 0.0)?
                    }
                }
            }
            let m = (self.state.m[i].affine(s.beta1, 0.0)? + g.affine(1.0 - s.beta1, 0.0)?)?;
            let v =
                (self.state.v[i].affine(s.beta2, 0.0)? + g.sqr()?.affine(1.0 - s.beta2, 0.0)?)?;
            let denom = v.affine(1.0 / bc2, 0.0)?.sqrt()?.affine(1.0, s.epsilon)?;
            // lr last: lr / bc1 alone can overflow f32 for huge rates.
            let update = (m.affine(1.0 / bc1, 0.0)? / denom)?.affine(s.learning_rate, 0.0)?;
            p.set(&(current - update)?)?;
            self.state.m[i] = m;
            self.state.v[i] = v;
        }
        Ok(())
    }
}
