//! An lstmd model in memory (metadata + named f32 tensors), read from and
//! written to lstmd's own two files, and the tensor reshuffles the other
//! formats need (transposes, gate-block reorders).
use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

use super::hdf5::Array;
use super::InteropError;
use crate::nn::metadata::ModelInfo;
use crate::nn::Network;

/// A complete lstmd model: what metadata.json and model.safetensors hold.
#[derive(Clone, Debug)]
pub struct LstmdModel {
    pub info: ModelInfo,
    pub tensors: HashMap<String, Tensor>,
}

impl LstmdModel {
    /// Parses a registered model's two files, checking the weights fit the
    /// spec.
    pub fn from_files(metadata: &[u8], weights: &[u8]) -> Result<Self, InteropError> {
        let info: ModelInfo = serde_json::from_slice(metadata)
            .map_err(|e| InteropError::Model(format!("metadata.json: {e}")))?;
        let tensors = candle_core::safetensors::load_buffer(weights, &Device::Cpu)
            .map_err(|e| InteropError::Model(format!("model.safetensors: {e}")))?;
        Network::from_tensors(&info.spec, &tensors)
            .map_err(|e| InteropError::Model(e.to_string()))?;
        Ok(Self { info, tensors })
    }

    /// The tensor called `name` (present: `from_files` checked).
    pub fn get(&self, name: &str) -> Result<&Tensor, InteropError> {
        self.tensors
            .get(name)
            .ok_or_else(|| InteropError::Model(format!("weights lack {name:?}")))
    }

    /// metadata.json and model.safetensors bytes.
    pub fn to_files(&self) -> Result<(Vec<u8>, Vec<u8>), InteropError> {
        let metadata = serde_json::to_vec_pretty(&self.info)
            .map_err(|e| InteropError::Model(e.to_string()))?;
        let mut named: Vec<(&String, &Tensor)> = self.tensors.iter().collect();
        named.sort_by(|a, b| a.0.cmp(b.0));
        let weights = safetensors::serialize(named.iter().map(|(n, t)| (n.as_str(), *t)), None)
            .map_err(|e| InteropError::Model(e.to_string()))?;
        Ok((metadata, weights))
    }
}

pub fn from_array(a: &Array) -> Result<Tensor, InteropError> {
    Ok(Tensor::from_vec(
        a.data.clone(),
        a.shape.as_slice(),
        &Device::Cpu,
    )?)
}

pub fn to_array(t: &Tensor) -> Result<Array, InteropError> {
    Ok(Array {
        shape: t.dims().to_vec(),
        data: t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
    })
}

/// Row-major f32 values, little-endian bytes (ONNX raw_data).
pub fn le_bytes(t: &Tensor) -> Result<Vec<u8>, InteropError> {
    let values = t.flatten_all()?.to_vec1::<f32>()?;
    Ok(values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

/// The transpose of a 2-D tensor, contiguous.
pub fn transpose(t: &Tensor) -> Result<Tensor, InteropError> {
    Ok(t.t()?.contiguous()?)
}

/// `t` split along `dim` into `order.len()` equal gate blocks, put back in
/// the order `order` names: block i of the result is block `order[i]` of
/// `t`.
pub fn reorder_blocks(t: &Tensor, dim: usize, order: &[usize]) -> Result<Tensor, InteropError> {
    let size = t.dim(dim)? / order.len();
    let blocks = order
        .iter()
        .map(|&b| t.narrow(dim, b * size, size))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::cat(&blocks, dim)?.contiguous()?)
}

pub fn zeros(len: usize) -> Result<Tensor, InteropError> {
    Ok(Tensor::zeros(len, DType::F32, &Device::Cpu)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_move_whole() {
        let t = Tensor::from_vec((0..6).map(|v| v as f32).collect(), (6,), &Device::Cpu).unwrap();
        let r = reorder_blocks(&t, 0, &[1, 0, 2]).unwrap();
        assert_eq!(r.to_vec1::<f32>().unwrap(), vec![2., 3., 0., 1., 4., 5.]);
        let m = Tensor::from_vec((0..8).map(|v| v as f32).collect(), (2, 4), &Device::Cpu).unwrap();
        let r = reorder_blocks(&m, 1, &[1, 0]).unwrap();
        assert_eq!(
            r.to_vec2::<f32>().unwrap(),
            vec![vec![2., 3., 0., 1.], vec![6., 7., 4., 5.]]
        );
    }
}
