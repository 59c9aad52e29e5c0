//! Fused CPU kernels for the recurrent layers (LSTM, GRU, simple RNN),
//! forward and backward, plugged into candle's autograd as custom ops;
//! a fused softmax cross-entropy; and an inference engine without autograd.
//!
//! They run for f32 tensors on the CPU; everything else (CUDA, f64) takes
//! the composed path in [`super::recurrent`], which is also their test
//! oracle.
pub mod gru;
pub mod inference;
pub mod loss;
pub mod lstm;
pub mod machine;
pub mod matmul;
pub mod memory;
pub mod op;
pub mod rnn;
pub mod sequence;
pub mod simd;
pub mod threads;

pub use inference::{Engine, StepState};
pub use loss::cross_entropy;
pub use op::{network_forward, network_forward_carried, network_forward_every};

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Tensor};

static DISABLED: AtomicBool = AtomicBool::new(false);

/// Turns the fused path off (or back on) for the whole process.
pub fn set_enabled(enabled: bool) {
    DISABLED.store(!enabled, Ordering::Relaxed);
}

/// Whether the fused kernels take tensors like `t`: f32 on the CPU, and not
/// turned off by [`set_enabled`] or `LSTMD_FUSED=0`.
pub fn supported(t: &Tensor) -> bool {
    static ENV_OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let env_off = *ENV_OFF.get_or_init(|| std::env::var("LSTMD_FUSED").is_ok_and(|v| v == "0"));
    t.device().is_cpu() && t.dtype() == DType::F32 && !env_off && !DISABLED.load(Ordering::Relaxed)
}
