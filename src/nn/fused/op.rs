//! The fused recurrent layer as a candle custom op, so `loss.backward()`
//! reaches it: arguments are the time-major input [T, B, I] and the
//! layer's parameters packed into one vector (a `cat` of the named
//! tensors, whose backward hands each its gradient).
use std::sync::Mutex;

use candle_core::{bail, CpuStorage, CustomOp2, Device, Layout, Result, Shape, Storage, Tensor};

use super::sequence::{self, Dims, State};
use crate::nn::recurrent::RecurrentLayer;
use crate::nn::spec::Cell;

/// The layer's parameters in the packed order `sequence` expects.
pub fn pack_parameters(layer: &RecurrentLayer) -> Result<Tensor> {
    let mut parts = Vec::with_capacity(8);
    for w in std::iter::once(&layer.forward).chain(layer.reverse.as_ref()) {
        parts.push(w.weight_ih.flatten_all()?);
        parts.push(w.weight_hh.flatten_all()?);
        parts.push(w.bias_ih.clone());
        parts.push(w.bias_hh.clone());
    }
    Tensor::cat(&parts, 0)
}

/// Runs `layer` over the time-major input `x` [T, B, I]: [T, B, W] with
/// `return_sequences`, else [B, W] (the final states, as the composed
/// layer returns them).
pub fn layer_forward(layer: &RecurrentLayer, x: &Tensor, return_sequences: bool) -> Result<Tensor> {
    let params = pack_parameters(layer)?;
    x.contiguous()?.apply_op2(
        &params,
        LayerOp {
            cell: layer.spec.cell,
            units: layer.spec.units,
            dirs: layer.spec.directions(),
            return_sequences,
            state: Mutex::new(None),
        },
    )
}

/// Buffers of finished backward passes, for the next forwards: saves
/// allocating (and the kernel zeroing fresh pages for) every step's
/// activations. Only small states are kept; large models are dominated
/// by arithmetic anyway.
static SPARE: Mutex<Vec<State>> = Mutex::new(Vec::new());
const SPARE_STATES: usize = 8;
const SPARE_FLOATS: usize = 1 << 22;

fn spare_state() -> State {
    SPARE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .pop()
        .unwrap_or_default()
}

fn recycle(state: State) {
    if state.capacity() <= SPARE_FLOATS {
        let mut spare = SPARE.lock().unwrap_or_else(|e| e.into_inner());
        if spare.len() < SPARE_STATES {
            spare.push(state);
        }
    }
}

struct LayerOp {
    cell: Cell,
    units: usize,
    dirs: usize,
    return_sequences: bool,
    /// Kept from the forward: gates, cell states, and (when the output is
    /// only the final states) the hidden states.
    state: Mutex<Option<State>>,
}

impl LayerOp {
    fn dims(&self, x: &Layout) -> Result<Dims> {
        let (steps, batch, input) = x.shape().dims3()?;
        if steps == 0 {
            bail!("fused recurrent layer: the sequence is empty");
        }
        Ok(Dims {
            cell: self.cell,
            steps,
            batch,
            input,
            units: self.units,
            dirs: self.dirs,
        })
    }
}

/// The f32 elements of a contiguous CPU storage.
pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        bail!("fused kernels take f32 tensors");
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => bail!("fused kernels take contiguous tensors"),
    }
}

/// Runs `f` on a CPU tensor's f32 elements (made contiguous first).
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => f(f32_slice(cpu, layout)?),
        _ => bail!("fused kernels run on the CPU"),
    }
}

impl CustomOp2 for LayerOp {
    fn name(&self) -> &'static str {
        "fused-recurrent-layer"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = self.dims(l1)?;
        let x = f32_slice(s1, l1)?;
        let params = f32_slice(s2, l2)?;
        if params.len() != d.param_len() {
            bail!(
                "fused recurrent layer: {} parameters, the layer needs {}",
                params.len(),
                d.param_len()
            );
        }
        let mut state = spare_state();
        let weights = sequence::prepare(&d, params);
        sequence::forward(&d, x, &weights, &mut state, true);
        let (out, shape) = if self.return_sequences {
            (
                std::mem::take(&mut state.h),
                Shape::from((d.steps, d.batch, d.width())),
            )
        } else {
            let mut out = Vec::new();
            sequence::last_states(&d, &state.h, &mut out);
            (out, Shape::from((d.batch, d.width())))
        };
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = Some(state);
        Ok((CpuStorage::F32(out), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        params: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let Some(mut state) = self.state.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            bail!("fused recurrent layer: backward ran twice over one forward");
        };
        let d = self.dims(x.layout())?;
        let mut dx = vec![0.0f32; x.elem_count()];
        let mut dp = vec![0.0f32; params.elem_count()];
        let kept_h = std::mem::take(&mut state.h);
        with_f32(x, |xs| {
            with_f32(params, |ps| {
                with_f32(grad, |dy| {
                    let mut run = |hs: &[f32]| {
                        let seq = self.return_sequences;
                        sequence::backward(&d, xs, ps, &mut state, hs, dy, seq, &mut dx, &mut dp);
                        Ok(())
                    };
                    if self.return_sequences {
                        with_f32(res, run)
                    } else {
                        run(&kept_h)
                    }
                })
            })
        })?;
        state.h = kept_h;
        recycle(state);
        let dev = Device::Cpu;
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), &dev)?),
            Some(Tensor::from_vec(dp, params.shape(), &dev)?),
        ))
    }
}
