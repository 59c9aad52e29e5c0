//! Checkpoints: everything a run needs to continue after a crash — weights,
//! Adam moments and step, the best weights so far, callback state and the
//! history — in one safetensors file, written atomically by the caller.
//! The shuffle and dropout streams are derived from (seed, epoch), so the
//! epoch number is the whole RNG state.
use std::collections::HashMap;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::adam::AdamState;
use crate::nn::metadata::EpochMetrics;

const META_KEY: &str = "lstmd-checkpoint";

/// The scalar state of a run at an epoch boundary.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Epochs completed.
    pub epoch: u32,
    pub learning_rate: f64,
    pub history: Vec<EpochMetrics>,
    pub adam_step: u64,
    /// Best epoch by the config's best monitor, and its value.
    pub best_epoch: Option<u32>,
    pub best_value: Option<f64>,
    pub early_stopping_best: Option<f64>,
    pub early_stopping_wait: u32,
    pub plateau_best: Option<f64>,
    pub plateau_wait: u32,
    /// Set when early stopping ended the run at this epoch.
    pub stopped_early: bool,
}

#[derive(Clone, Debug)]
pub struct Checkpoint {
    pub state: RunState,
    pub parameters: Vec<(String, Tensor)>,
    pub adam: AdamState,
    pub best_parameters: Option<Vec<(String, Tensor)>>,
}

#[derive(Debug, thiserror::Error)]
#[error("checkpoint is unreadable: {0}")]
pub struct CheckpointError(pub String);

impl Checkpoint {
    pub fn to_bytes(&self) -> Result<Vec<u8>, CheckpointError> {
        let mut named: Vec<(String, &Tensor)> = Vec::new();
        for (i, (name, t)) in self.parameters.iter().enumerate() {
            named.push((format!("param/{name}"), t));
            named.push((format!("adam.m/{name}"), &self.adam.m[i]));
            named.push((format!("adam.v/{name}"), &self.adam.v[i]));
        }
        for (name, t) in self.best_parameters.iter().flatten() {
            named.push((format!("best/{name}"), t));
        }
        let meta = HashMap::from([(
            META_KEY.to_string(),
            serde_json::to_string(&self.state).expect("run state serializes"),
        )]);
        safetensors::serialize(named.iter().map(|(n, t)| (n.as_str(), *t)), Some(meta))
            .map_err(|e| CheckpointError(e.to_string()))
    }

    /// Reads a checkpoint; `names` gives the parameter order of the spec.
    pub fn from_bytes(
        bytes: &[u8],
        names: &[String],
        device: &Device,
    ) -> Result<Self, CheckpointError> {
        let err = |e: &dyn std::fmt::Display| CheckpointError(e.to_string());
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| err(&e))?;
        let state: RunState = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get(META_KEY))
            .ok_or_else(|| CheckpointError("no run state".into()))
            .and_then(|s| serde_json::from_str(s).map_err(|e| err(&e)))?;
        let mut tensors =
            candle_core::safetensors::load_buffer(bytes, device).map_err(|e| err(&e))?;
        let has_best = names
            .first()
            .is_some_and(|n| tensors.contains_key(&format!("best/{n}")));
        let mut take = |key: String| -> Result<Tensor, CheckpointError> {
            tensors
                .remove(&key)
                .ok_or_else(|| CheckpointError(format!("tensor {key:?} is missing")))
        };
        let mut parameters = Vec::new();
        let (mut m, mut v) = (Vec::new(), Vec::new());
        for name in names {
            parameters.push((name.clone(), take(format!("param/{name}"))?));
            m.push(take(format!("adam.m/{name}"))?);
            v.push(take(format!("adam.v/{name}"))?);
        }
        let best_parameters = if has_best {
            Some(
                names
                    .iter()
                    .map(|n| Ok((n.clone(), take(format!("best/{n}"))?)))
                    .collect::<Result<_, CheckpointError>>()?,
            )
        } else {
            None
        };
        Ok(Self {
            adam: AdamState {
                step: state.adam_step,
                m,
                v,
            },
            state,
            parameters,
            best_parameters,
        })
    }
}
