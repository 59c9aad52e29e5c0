//! What a model file carries beside its weights (metadata.json): the spec,
//! the vocabulary, how it was trained and its per-epoch history.
use serde::{Deserialize, Serialize};

use super::context::InferenceContext;
use super::spec::ModelSpec;
use crate::vocabulary::Vocabulary;

pub const FORMAT: &str = "lstmd-model/1";

/// Metrics of one finished epoch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based.
    pub epoch: u32,
    pub loss: f64,
    pub accuracy: f64,
    #[serde(default)]
    pub top5_accuracy: f64,
    /// exp(loss).
    #[serde(default)]
    pub perplexity: f64,
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
    #[serde(default)]
    pub val_top5_accuracy: Option<f64>,
    #[serde(default)]
    pub val_perplexity: Option<f64>,
    pub learning_rate: f64,
    pub samples_per_second: f64,
    pub elapsed_seconds: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelInfo {
    pub format: String,
    pub created_at_ms: u64,
    pub spec: ModelSpec,
    pub vocabulary: Option<crate::vocabulary::Vocabulary>,
    /// The resolved training config, as the training layer wrote it.
    pub training: serde_json::Value,
    pub history: Vec<EpochMetrics>,
    pub dataset_id: String,
    pub job_id: String,
    /// For a tuning job's model: the search, the winning trial and its
    /// hyperparameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuning: Option<serde_json::Value>,
}

impl ModelInfo {
    /// The fields, plus `context`: which context the model expects (derived
    /// from the training config, so readers need not know the config).
    pub fn to_map(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut map = match serde_json::to_value(self).expect("metadata serializes") {
            serde_json::Value::Object(map) => map,
            _ => unreachable!("a struct serializes to an object"),
        };
        map.insert(
            "context".into(),
            serde_json::to_value(self.context()).expect("context serializes"),
        );
        map
    }

    /// Which context the model answers from.
    pub fn context(&self) -> InferenceContext {
        InferenceContext::of_training(self.spec.window, &self.training)
    }

    pub fn from_map(map: &serde_json::Map<String, serde_json::Value>) -> Result<Self, String> {
        serde_json::from_value(serde_json::Value::Object(map.clone())).map_err(|e| e.to_string())
    }

    pub fn vocabulary(&self) -> Option<&Vocabulary> {
        self.vocabulary.as_ref()
    }
}

/// Why an imported model was refused.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("metadata.json is not lstmd model metadata: {0}")]
    Metadata(String),
    #[error("metadata.json spec is invalid: {0}")]
    Spec(crate::error::InvalidField),
    #[error("model.safetensors is unreadable: {0}")]
    Weights(String),
    #[error("model.safetensors does not fit the spec: {0}")]
    Mismatch(super::NnError),
    #[error("model.safetensors tensor {0:?} holds NaN or infinite values")]
    NonFinite(String),
    #[error("model.safetensors tensor {name:?} is {dtype:?}; lstmd models are F32")]
    DType {
        name: String,
        dtype: candle_core::DType,
    },
}

/// Checks an imported model: the metadata parses and its spec is valid
/// under `limits`, the weights are exactly the spec's tensors (names and
/// shapes), F32, and finite.
pub fn validate_import(
    metadata: &[u8],
    weights: &[u8],
    limits: &super::SpecLimits,
) -> Result<ModelInfo, ImportError> {
    let value: serde_json::Value =
        serde_json::from_slice(metadata).map_err(|e| ImportError::Metadata(e.to_string()))?;
    let info: ModelInfo =
        serde_json::from_value(value).map_err(|e| ImportError::Metadata(e.to_string()))?;
    info.spec.validate(limits).map_err(ImportError::Spec)?;
    if let Some(v) = &info.vocabulary {
        // Each output id is one vocabulary entry: sizes must agree exactly.
        if v.size() != info.spec.vocab_size {
            return Err(ImportError::Metadata(format!(
                "vocabulary has {} tokens but spec.vocab_size is {}: they must be equal",
                v.size(),
                info.spec.vocab_size
            )));
        }
    }
    let tensors = candle_core::safetensors::load_buffer(weights, &candle_core::Device::Cpu)
        .map_err(|e| ImportError::Weights(e.to_string()))?;
    for (name, t) in &tensors {
        if t.dtype() != candle_core::DType::F32 {
            return Err(ImportError::DType {
                name: name.clone(),
                dtype: t.dtype(),
            });
        }
        if !super::is_finite(t).map_err(|e| ImportError::Weights(e.to_string()))? {
            return Err(ImportError::NonFinite(name.clone()));
        }
    }
    super::Network::from_tensors(&info.spec, &tensors).map_err(ImportError::Mismatch)?;
    Ok(info)
}
