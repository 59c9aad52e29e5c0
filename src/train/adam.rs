//! Adam with its state in plain tensors (moments and step), so a run can be
//! checkpointed and resumed; candle-nn's AdamW cannot export its state.
//!
//! On the CPU in f32 each parameter takes one fused pass: the moments and
//! the parameter are updated together, the parameter in place. Elsewhere
//! it takes candle tensor ops (the same formula).
use std::sync::Mutex;

use candle_core::{
    backprop::GradStore, bail, CpuStorage, DType, InplaceOp1, Layout, Result, Tensor, Var,
};

use crate::nn::fused::{self, simd::multiversion};

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
            if fused::supported(p.as_tensor()) && g.dtype() == DType::F32 {
                let (m, v) = fused_update(
                    p,
                    g,
                    &self.m[i],
                    &self.v[i],
                    Coefficients {
                        beta1: self.beta1 as f32,
                        beta2: self.beta2 as f32,
                        step_size: (self.learning_rate / bc1) as f32,
                        inv_bc2: (1.0 / bc2) as f32,
                        epsilon: self.epsilon as f32,
                    },
                )?;
                self.m[i] = m;
                self.v[i] = v;
                continue;
            }
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

/// Updates `p` in place and returns the new moments, in one pass.
fn fused_update(
    p: &Var,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    c: Coefficients,
) -> Result<(Tensor, Tensor)> {
    let n = p.elem_count();
    let (g, m, v) = (g.contiguous()?, m.contiguous()?, v.contiguous()?);
    let op = AdamUpdate {
        grad: g,
        m,
        v,
        c,
        moments: Mutex::new((Vec::new(), Vec::new())),
    };
    p.as_tensor().inplace_op1(&op)?;
    let (m_new, v_new) = op.moments.into_inner().unwrap_or_else(|e| e.into_inner());
    if m_new.len() != n {
        bail!("adam: the fused update did not run");
    }
    let dev = p.device();
    Ok((
        Tensor::from_vec(m_new, p.shape(), dev)?,
        Tensor::from_vec(v_new, p.shape(), dev)?,
    ))
}

struct AdamUpdate {
    grad: Tensor,
    m: Tensor,
    v: Tensor,
    c: Coefficients,
    moments: Mutex<(Vec<f32>, Vec<f32>)>,
}

impl InplaceOp1 for AdamUpdate {
    fn name(&self) -> &'static str {
        "fused-adam"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let CpuStorage::F32(p) = storage else {
            bail!("adam: fused update takes f32 parameters");
        };
        let Some((a, b)) = layout.contiguous_offsets() else {
            bail!("adam: fused update takes contiguous parameters");
        };
        let p = &mut p[a..b];
        let c = self.c;
        fused::op::with_f32(&self.grad, |g| {
            fused::op::with_f32(&self.m, |m| {
                fused::op::with_f32(&self.v, |v| {
                    if g.len() != p.len() || m.len() != p.len() || v.len() != p.len() {
                        bail!("adam: gradient or moments do not match the parameter");
                    }
                    let mut m_new = vec![0.0f32; p.len()];
                    let mut v_new = vec![0.0f32; p.len()];
                    // SAFETY: all six buffers hold p.len() floats.
                    unsafe {
                        update(
                            p.len(),
                            p.as_mut_ptr(),
                            g.as_ptr(),
                            m.as_ptr(),
                            v.as_ptr(),
                            m_new.as_mut_ptr(),
                            v_new.as_mut_ptr(),
                            c,
                        )
                    };
                    *self.moments.lock().unwrap_or_else(|e| e.into_inner()) = (m_new, v_new);
                    Ok(())
                })
            })
        })
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn update_impl<const FMA: bool>(
    n: usize,
    p: *mut f32,
    g: *const f32,
    m: *const f32,
    v: *const f32,
    m_new: *mut f32,
    v_new: *mut f32,
    c: Coefficients,
) {
    // SAFETY: the caller passes n-element buffers; `p`, `m_new` and `v_new`
    // are written and overlap nothing.
    unsafe {
        update_kernel(
            std::slice::from_raw_parts_mut(p, n),
            std::slice::from_raw_parts(g, n),
            std::slice::from_raw_parts(m, n),
            std::slice::from_raw_parts(v, n),
            std::slice::from_raw_parts_mut(m_new, n),
            std::slice::from_raw_parts_mut(v_new, n),
            c,
        )
    }
}

#[inline(always)]
fn update_kernel(
    p: &mut [f32],
    g: &[f32],
    m: &[f32],
    v: &[f32],
    m_new: &mut [f32],
    v_new: &mut [f32],
    c: Coefficients,
) {
    let n = p.len();
    let (g, m, v, m_new, v_new) = (&g[..n], &m[..n], &v[..n], &mut m_new[..n], &mut v_new[..n]);
    for i in 0..n {
        let mi = c.beta1 * m[i] + (1.0 - c.beta1) * g[i];
        let vi = c.beta2 * v[i] + (1.0 - c.beta2) * g[i] * g[i];
        m_new[i] = mi;
        v_new[i] = vi;
        p[i] -= c.step_size * mi / ((vi * c.inv_bc2).sqrt() + c.epsilon);
    }
}

multiversion! {
    /// One Adam update of n parameters.
    fn update(
        n: usize,
        p: *mut f32,
        g: *const f32,
        m: *const f32,
        v: *const f32,
        m_new: *mut f32,
        v_new: *mut f32,
        c: Coefficients,
    ) => update_impl
}
