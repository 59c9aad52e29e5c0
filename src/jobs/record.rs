//! Job records and the events a job emits.
use serde::{Deserialize, Serialize};

use crate::nn::metadata::EpochMetrics;
use crate::nn::ModelSpec;
use crate::train::{BatchProgress, TrainConfig};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRef {
    pub name: String,
    pub version: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub enum EventKind {
    State {
        state: JobState,
        message: String,
    },
    Batch(BatchProgress),
    Epoch {
        metrics: EpochMetrics,
        epochs: u32,
        eta_seconds: f64,
    },
    /// The terminal event.
    Finished {
        state: JobState,
        reason: String,
        model: Option<ModelRef>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct JobEvent {
    /// 1, 2, 3, ... per job.
    pub seq: u64,
    pub job_id: String,
    pub time_ms: u64,
    pub kind: EventKind,
}

impl JobEvent {
    pub fn is_terminal(&self) -> bool {
        matches!(self.kind, EventKind::Finished { .. })
    }
}

/// What a client asked to train, after validation.
#[derive(Clone, Debug)]
pub struct TrainingRequest {
    pub model_name: String,
    pub dataset_id: String,
    pub spec: ModelSpec,
    pub config: TrainConfig,
}

#[derive(Clone, Debug)]
pub struct JobRecord {
    pub id: String,
    pub state: JobState,
    pub request: TrainingRequest,
    pub created_at_ms: u64,
    pub started_at_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
    pub latest_progress: Option<JobEvent>,
    pub model: Option<ModelRef>,
    pub error: Option<String>,
    pub history: Vec<EpochMetrics>,
}
