//! The trained parameters as a run sees them: copies for checkpoints and
//! best weights, the gradient norm for clipping, the finiteness check.
use candle_core::{DType, Tensor, Var};

pub(super) fn snapshot(vars: &[(String, Var)]) -> candle_core::Result<Vec<(String, Tensor)>> {
    vars.iter()
        .map(|(n, v)| Ok((n.clone(), v.as_detached_tensor().copy()?)))
        .collect()
}

/// Global L2 norm of the gradients of `vars`.
pub(super) fn gradient_norm(
    grads: &candle_core::backprop::GradStore,
    vars: &[(String, Var)],
) -> candle_core::Result<f64> {
    let mut sum = 0f64;
    for (_, v) in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            let mut s = g
                .sqr()?
                .sum_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
            if s.is_infinite() {
                // Squares of huge but finite gradients overflow f32.
                s = g
                    .to_dtype(DType::F64)?
                    .sqr()?
                    .sum_all()?
                    .to_scalar::<f64>()?;
            }
            sum += s;
        }
    }
    Ok(sum.sqrt())
}

/// The first parameter holding a NaN or an infinity, if any.
pub(super) fn non_finite_parameter(vars: &[(String, Var)]) -> candle_core::Result<Option<String>> {
    for (name, v) in vars {
        if !crate::nn::is_finite(v.as_tensor())? {
            return Ok(Some(name.clone()));
        }
    }
    Ok(None)
}
