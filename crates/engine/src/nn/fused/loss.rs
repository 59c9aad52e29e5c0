//! Softmax cross-entropy (mean over the batch) as one fused op: the
//! forward keeps the softmax, the backward is `(softmax - onehot) / B`.
use std::sync::Mutex;

use candle_core::{bail, CpuStorage, CustomOp2, Device, Layout, Result, Shape, Tensor};

use super::op::f32_slice;
use super::simd::{exp, multiversion};

/// Mean softmax cross-entropy of `logits` [B, V] against class ids
/// `targets` [B]; fused on the CPU for f32, candle-nn's otherwise.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if super::supported(logits) && logits.rank() == 2 {
        logits.contiguous()?.apply_op2(
            &targets.contiguous()?,
            CrossEntropy {
                probs: Mutex::new(Vec::new()),
            },
        )
    } else {
        candle_nn::loss::cross_entropy(logits, targets)
    }
}

struct CrossEntropy {
    probs: Mutex<Vec<f32>>,
}

fn target_ids(s: &CpuStorage, l: &Layout) -> Result<Vec<usize>> {
    let Some((a, b)) = l.contiguous_offsets() else {
        bail!("cross-entropy: targets must be contiguous");
    };
    Ok(match s {
        CpuStorage::U32(v) => v[a..b].iter().map(|&i| i as usize).collect(),
        CpuStorage::I64(v) => v[a..b].iter().map(|&i| i as usize).collect(),
        CpuStorage::U8(v) => v[a..b].iter().map(|&i| i as usize).collect(),
        _ => bail!("cross-entropy: targets must be integer class ids"),
    })
}

#[inline(always)]
fn softmax_row_impl<const FMA: bool>(row: *const f32, out: *mut f32, n: usize) {
    // SAFETY: the caller passes n-element rows.
    let (row, out) = unsafe {
        (
            std::slice::from_raw_parts(row, n),
            std::slice::from_raw_parts_mut(out, n),
        )
    };
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0.0f32;
    for (o, &v) in out.iter_mut().zip(row) {
        let e = exp::<FMA>(v - max);
        *o = e;
        sum += e;
    }
    let inv = 1.0 / sum;
    out.iter_mut().for_each(|o| *o *= inv);
}

multiversion! {
    /// `out = softmax(row)` over n floats.
    pub fn softmax_row(row: *const f32, out: *mut f32, n: usize) => softmax_row_impl
}

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "fused-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, v) = l1.shape().dims2()?;
        let logits = f32_slice(s1, l1)?;
        let targets = target_ids(s2, l2)?;
        if targets.len() != b {
            bail!("cross-entropy: {} targets for {b} rows", targets.len());
        }
        let mut probs = vec![0.0f32; b * v];
        let mut loss = 0.0f64;
        for (r, &t) in targets.iter().enumerate() {
            if t >= v {
                bail!("cross-entropy: target {t} is not below {v} classes");
            }
            let p = &mut probs[r * v..(r + 1) * v];
            // SAFETY: both rows hold v floats.
            unsafe { softmax_row(logits[r * v..].as_ptr(), p.as_mut_ptr(), v) };
            loss -= (p[t].max(f32::MIN_POSITIVE) as f64).ln();
        }
        *self.probs.lock().unwrap_or_else(|e| e.into_inner()) = probs;
        let mean = if b == 0 { 0.0 } else { loss / b as f64 };
        Ok((CpuStorage::F32(vec![mean as f32]), Shape::from(())))
    }

    fn bwd(
        &self,
        _logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
        let mut probs = std::mem::take(&mut *self.probs.lock().unwrap_or_else(|e| e.into_inner()));
        let targets: Vec<u32> = targets.to_dtype(candle_core::DType::U32)?.to_vec1()?;
        let b = targets.len();
        if b == 0 || !probs.len().is_multiple_of(b) {
            bail!("cross-entropy: backward without its forward");
        }
        let v = probs.len() / b;
        let scale = g / b as f32;
        for (row, &t) in probs.chunks_exact_mut(v).zip(&targets) {
            row[t as usize] -= 1.0;
            row.iter_mut().for_each(|p| *p *= scale);
        }
        Ok((Some(Tensor::from_vec(probs, (b, v), &Device::Cpu)?), None))
    }
}
