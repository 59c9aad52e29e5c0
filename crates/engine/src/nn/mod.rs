//! candle models: spec -> network, recurrent layers, summary, weight naming.
//! Knows nothing of gRPC.
pub mod context;
pub mod fused;
pub mod naming;
pub mod network;
pub mod recurrent;
pub mod spec;
pub mod summary;
pub mod validation;

pub use context::{InferenceContext, LossPositions};
pub use network::{initial_parameters, Dropout, Network};
pub use recurrent::LayerState;
pub use spec::{Cell, LayerSpec, ModelSpec};
pub use validation::{SpecLimits, SpecRequest};

#[derive(Debug, thiserror::Error)]
pub enum NnError {
    #[error("weights lack tensor {0:?}")]
    MissingTensor(String),
    #[error("tensor {name:?} has shape {got:?}, the spec needs {expected:?}")]
    ShapeMismatch {
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("weights hold tensor {0:?}, which the spec has no place for")]
    UnexpectedTensor(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}
pub mod metadata;

/// Whether every element of `t` is finite. (0 * x is NaN exactly where x is
/// NaN or infinite; a sum of |x| could overflow for large finite values.)
pub fn is_finite(t: &candle_core::Tensor) -> candle_core::Result<bool> {
    let probe = t
        .affine(0.0, 0.0)?
        .sum_all()?
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()?;
    Ok(probe.is_finite())
}
