//! Job records and the events a job emits; both are stored as JSON records.
use serde::{Deserialize, Serialize};

use crate::nn::metadata::EpochMetrics;
use crate::nn::ModelSpec;
use crate::train::{BatchProgress, TrainConfig};
use crate::tune::{Hyperparameters, Objective, SearchSpace, Strategy};

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

/// The terminal event's content.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Finished {
    pub state: JobState,
    pub reason: String,
    pub model: Option<ModelRef>,
    pub best_epoch: Option<u32>,
    pub weights_epoch: Option<u32>,
    pub stopped_early: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
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
    Finished(Finished),
    /// A tuning job's trial started, reported, was stopped early or ended.
    Trial {
        what: String,
        trial: TrialRecord,
        leaderboard: Vec<TrialRecord>,
    },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    #[default]
    Training,
    Tuning,
}

/// What a tuning job searches, after validation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TuningRequest {
    pub space: SearchSpace,
    pub strategy: Strategy,
    pub max_trials: usize,
    pub parallel_trials: usize,
    pub objective: Objective,
    pub seed: u64,
    pub max_epochs: u32,
    pub reduction_factor: u32,
    pub keep_trial_models: bool,
    /// The trials' hyperparameters, planned at submission.
    pub plan: Vec<Hyperparameters>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrialRecord {
    /// 1-based.
    pub number: u32,
    pub hyperparameters: Hyperparameters,
    pub state: JobState,
    pub job_ids: Vec<String>,
    pub history: Vec<EpochMetrics>,
    pub score: Option<f64>,
    pub epochs: u32,
    pub stopped_early: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    /// 1, 2, 3, ... per job.
    pub seq: u64,
    pub job_id: String,
    pub time_ms: u64,
    pub kind: EventKind,
}

impl JobEvent {
    pub fn is_terminal(&self) -> bool {
        matches!(self.kind, EventKind::Finished(_))
    }
}

/// What a client asked to train, after validation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainingRequest {
    /// For a trial: its tuning job.
    #[serde(default)]
    pub parent: Option<String>,
    /// Continue from this job's checkpoint (a trial's next rung).
    #[serde(default)]
    pub resume_from: Option<String>,
    /// Keep the checkpoint after success (a trial may continue).
    #[serde(default)]
    pub keep_checkpoint: bool,
    pub model_name: String,
    pub dataset_id: String,
    pub validation_dataset_id: Option<String>,
    pub spec: ModelSpec,
    pub config: TrainConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    /// The last sequence number used (the next event gets `events + 1`).
    pub events: u64,
    /// Sequence numbers up to this one may have been shown to watchers
    /// before they were durable (batch progress); a restart continues after
    /// it, so a number a watcher saw never names another event.
    #[serde(default)]
    pub seq_reserved: u64,
    #[serde(default)]
    pub kind: JobKind,
    /// For tuning jobs: the search and its trials.
    #[serde(default)]
    pub tuning: Option<TuningState>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TuningState {
    pub request: TuningRequest,
    pub trials: Vec<TrialRecord>,
}

impl JobRecord {
    /// What an event changes in the record, at `now` (ms).
    pub fn apply(&mut self, kind: &EventKind, now: u64) {
        match kind {
            EventKind::State { state, .. } => {
                if *state == JobState::Running && self.state != JobState::Running {
                    self.started_at_ms = Some(now);
                }
                self.state = *state;
            }
            EventKind::Epoch { metrics, .. } => self.history.push(metrics.clone()),
            EventKind::Batch(_) => {}
            EventKind::Trial { trial, .. } => {
                if let Some(slot) = self
                    .tuning
                    .as_mut()
                    .and_then(|t| t.trials.get_mut(trial.number as usize - 1))
                {
                    *slot = trial.clone();
                }
            }
            EventKind::Finished(f) => {
                self.state = f.state;
                self.finished_at_ms = Some(now);
                self.model = f.model.clone();
                if f.state != JobState::Succeeded {
                    self.error = Some(f.reason.clone());
                }
            }
        }
    }
}
