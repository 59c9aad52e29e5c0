//! Adam / AdamW with their state in plain tensors (moments and step), so a
//! run can be checkpointed and resumed; candle-nn's AdamW cannot export its
//! state.
//!
//! On the CPU in f32 (no weight decay, no clipping scale, a finite step
//! size) each parameter takes one fused pass that updates the parameter and
//! both moments in place (no allocation). Otherwise it takes candle tensor
//! ops (the same formula), which replace the moment tensors.
use std::sync::Mutex;

use candle_core::{
    backprop::GradStore, bail, CpuStorage, DType, InplaceOp1, Layout, Result, Tensor, Var,
};

use crate::nn::fused::{self, simd::multiversion};

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
            let step_size = (s.learning_rate / bc1) as f32;
            if fused::supported(p.as_tensor())
                && g.dtype() == DType::F32
                && grad_scale == 1.0
                && s.weight_decay == 0.0
                && step_size.is_finite()
            {
                let c = Coefficients {
                    beta1: s.beta1 as f32,
                    beta2: s.beta2 as f32,
                    step_size,
                    inv_bc2: (1.0 / bc2) as f32,
                    epsilon: s.epsilon as f32,
                };
                let AdamState { m, v, .. } = &mut self.state;
                fused_update(p, g, &mut m[i], &mut v[i], c)?;
                continue;
            }
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

#[derive(Clone, Copy)]
struct Coefficients {
    beta1: f32,
    beta2: f32,
    /// lr / (1 - beta1^t)
    step_size: f32,
    /// 1 / (1 - beta2^t)
    inv_bc2: f32,
    epsilon: f32,
}

/// Updates `p`, `m` and `v` in place, in one pass. Moments that are not
/// contiguous f32 tensors of their own are first replaced by copies that
/// are (those `new` makes already are).
fn fused_update(
    p: &Var,
    g: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    c: Coefficients,
) -> Result<()> {
    for t in [&mut *m, &mut *v] {
        if !t.is_contiguous() || t.dtype() != DType::F32 || t.elem_count() != p.elem_count() {
            *t = t.to_dtype(DType::F32)?.contiguous()?.copy()?;
        }
    }
    let g = g.contiguous()?;
    fused::op::with_f32(&g, |g| {
        with_mut(v, |v| {
            with_mut(m, |m| {
                with_mut(p.as_tensor(), |p| {
                    let n = p.len();
                    if g.len() != n || m.len() != n || v.len() != n {
                        bail!("adam: gradient or moments do not match the parameter");
                    }
                    // SAFETY: all four buffers hold n floats; the three
                    // written ones are distinct tensors' storage.
                    unsafe {
                        update(
                            n,
                            p.as_mut_ptr(),
                            g.as_ptr(),
                            m.as_mut_ptr(),
                            v.as_mut_ptr(),
                            c,
                        )
                    };
                    Ok(())
                })
            })
        })
    })
}

/// Runs `f` on a CPU f32 tensor's elements, writable, through candle's
/// in-place op (which holds the tensor's write lock meanwhile).
fn with_mut(t: &Tensor, f: impl FnOnce(&mut [f32]) -> Result<()>) -> Result<()> {
    struct Mutate<F>(Mutex<Option<F>>);
    impl<F: FnOnce(&mut [f32]) -> Result<()>> InplaceOp1 for Mutate<F> {
        fn name(&self) -> &'static str {
            "fused-adam"
        }

        fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
            let CpuStorage::F32(data) = storage else {
                bail!("adam: the fused update takes f32 tensors");
            };
            let Some((a, b)) = layout.contiguous_offsets() else {
                bail!("adam: the fused update takes contiguous tensors");
            };
            let f = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
            match f {
                Some(f) => f(&mut data[a..b]),
                None => bail!("adam: the update ran twice"),
            }
        }
    }
    t.inplace_op1(&Mutate(Mutex::new(Some(f))))
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn update_impl<const FMA: bool>(
    n: usize,
    p: *mut f32,
    g: *const f32,
    m: *mut f32,
    v: *mut f32,
    c: Coefficients,
) {
    // SAFETY: the caller passes n-element buffers; `p`, `m` and `v` are
    // written and overlap nothing.
    unsafe {
        update_kernel(
            std::slice::from_raw_parts_mut(p, n),
            std::slice::from_raw_parts(g, n),
            std::slice::from_raw_parts_mut(m, n),
            std::slice::from_raw_parts_mut(v, n),
            c,
        )
    }
}

#[inline(always)]
fn update_kernel(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: Coefficients) {
    let n = p.len();
    let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
    for i in 0..n {
        let mi = c.beta1 * m[i] + (1.0 - c.beta1) * g[i];
        let vi = c.beta2 * v[i] + (1.0 - c.beta2) * g[i] * g[i];
        m[i] = mi;
        v[i] = vi;
        p[i] -= c.step_size * mi / ((vi * c.inv_bc2).sqrt() + c.epsilon);
    }
}

multiversion! {
    /// One Adam update of n parameters, moments in place.
    fn update(
        n: usize,
        p: *mut f32,
        g: *const f32,
        m: *mut f32,
        v: *mut f32,
        c: Coefficients,
    ) => update_impl
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The fused f32 update against the tensor-op one (in f64).
    #[test]
    fn fused_update_matches_tensor_ops() {
        let dev = Device::Cpu;
        let init: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin()).collect();
        let p32 = Var::from_vec(init.clone(), (37,), &dev).unwrap();
        let p64 = Var::from_tensor(&p32.to_dtype(DType::F64).unwrap()).unwrap();
        let settings = AdamSettings {
            optimizer: Optimizer::Adam,
            learning_rate: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-7,
            weight_decay: 0.0,
        };
        let mut a32 = Adam::new(vec![p32.clone()], settings).unwrap();
        let mut a64 = Adam::new(vec![p64.clone()], settings).unwrap();
        for step in 0..5 {
            let loss32 =
                (p32.as_tensor().sqr().unwrap().sum_all().unwrap() * (step + 1) as f64).unwrap();
            let loss64 =
                (p64.as_tensor().sqr().unwrap().sum_all().unwrap() * (step + 1) as f64).unwrap();
            a32.step(&loss32.backward().unwrap(), 1.0).unwrap();
            a64.step(&loss64.backward().unwrap(), 1.0).unwrap();
        }
        let got: Vec<f32> = p32.as_tensor().to_vec1().unwrap();
        let want: Vec<f64> = p64.as_tensor().to_vec1().unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!((*g as f64 - w).abs() < 1e-5, "{g} vs {w}");
        }
        let m: Vec<f32> = a32.state.m[0].to_vec1().unwrap();
        let m64: Vec<f64> = a64.state.m[0].to_vec1().unwrap();
        for (g, w) in m.iter().zip(&m64) {
            assert!(
                (*g as f64 - w).abs() < 1e-4 * w.abs().max(1.0),
                "{g} vs {w}"
            );
        }
    }
}
