//! Training: config, optimizer, checkpoints, the loop and its events.
pub mod adam;
mod batches;
mod callbacks;
pub mod checkpoint;
pub mod config;
mod evaluate;
mod parameters;
mod split;
mod tally;
pub mod trainer;

pub use checkpoint::{Checkpoint, CheckpointError, RunState};
pub use config::{TrainConfig, TrainConfigRequest, TrainLimits};
pub use trainer::{
    train, BatchProgress, StopReason, TrainEvent, TrainInput, TrainObserver, Trained,
};

use crate::nn::NnError;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("cancelled")]
    Cancelled,
    #[error("numerical failure at epoch {epoch}, batch {batch}: {what}")]
    NonFinite {
        epoch: u32,
        batch: u32,
        what: String,
    },
    #[error("{0}")]
    NoData(String),
    #[error("writing the checkpoint failed: {0}")]
    Checkpoint(String),
    #[error("resuming from a checkpoint failed: {0}")]
    Resume(String),
    #[error("saving the model failed: {0}")]
    Register(crate::store::StoreError),
    #[error("serializing the weights failed: {0}")]
    Serialize(#[from] safetensors::SafeTensorError),
    #[error(transparent)]
    Nn(#[from] NnError),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Serializes named tensors as a safetensors file.
pub fn to_safetensors(parameters: &[(String, candle_core::Tensor)]) -> Result<Vec<u8>, TrainError> {
    safetensors::serialize(parameters.iter().map(|(n, t)| (n.as_str(), t)), None)
        .map_err(TrainError::Serialize)
}
