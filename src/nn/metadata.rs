//! What a model file carries beside its weights (metadata.json): the spec,
//! the vocabulary, how it was trained and its per-epoch history.
use serde::{Deserialize, Serialize};

use super::spec::ModelSpec;
use crate::data::Vocabulary;

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
    pub vocabulary: Option<crate::data::Vocabulary>,
    /// The resolved training config, as the training layer wrote it.
    pub training: serde_json::Value,
    pub history: Vec<EpochMetrics>,
    pub dataset_id: String,
    pub job_id: String,
}

impl ModelInfo {
    pub fn to_map(&self) -> serde_json::Map<String, serde_json::Value> {
        match serde_json::to_value(self).expect("metadata serializes") {
            serde_json::Value::Object(map) => map,
            _ => unreachable!("a struct serializes to an object"),
        }
    }

    pub fn from_map(map: &serde_json::Map<String, serde_json::Value>) -> Result<Self, String> {
        serde_json::from_value(serde_json::Value::Object(map.clone())).map_err(|e| e.to_string())
    }

    pub fn vocabulary(&self) -> Option<&Vocabulary> {
        self.vocabulary.as_ref()
    }
}
