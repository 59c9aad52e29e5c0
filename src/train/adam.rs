//! Adam with its state in plain tensors (moments and step), so a run can be
//! checkpointed and resumed; candle-nn's AdamW cannot export its state.
use candle_core::{backprop::GradStore, Result, Tensor, Var};

pub struct Adam {
    params: Vec<Var>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    step: u64,
    pub learning_rate: f64,
    beta1: f64,
    beta2: f64,
    epsilon: f64,
}

impl Adam {
    pub fn new(
        params: Vec<Var>,
        learning_rate: f64,
        beta1: f64,
        beta2: f64,
        epsilon: f64,
    ) -> Result<Self> {
        let zeros = |p: &Var| p.as_tensor().zeros_like();
        Ok(Self {
            m: params.iter().map(zeros).collect::<Result<_>>()?,
            v: params.iter().map(zeros).collect::<Result<_>>()?,
            params,
            step: 0,
            learning_rate,
            beta1,
            beta2,
            epsilon,
        })
    }

    /// One update, PyTorch's formula:
    /// p -= lr * m_hat / (sqrt(v_hat) + eps).
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step += 1;
        let bc1 = 1.0 - self.beta1.powi(self.step as i32);
        let bc2 = 1.0 - self.beta2.powi(self.step as i32);
        for (i, p) in self.params.iter().enumerate() {
            let Some(g) = grads.get(p.as_tensor()) else {
                continue;
            };
            let m = (self.m[i].affine(self.beta1, 0.0)? + g.affine(1.0 - self.beta1, 0.0)?)?;
            let v =
                (self.v[i].affine(self.beta2, 0.0)? + g.sqr()?.affine(1.0 - self.beta2, 0.0)?)?;
            let denom = v
                .affine(1.0 / bc2, 0.0)?
                .sqrt()?
                .affine(1.0, self.epsilon)?;
            let update = (m.affine(self.learning_rate / bc1, 0.0)? / denom)?;
            p.set(&(p.as_tensor() - update)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }
}
