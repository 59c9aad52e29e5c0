//! proto <-> domain conversions shared by the services.
use crate::error::InvalidField;
use crate::jobs::{
    leaderboard, EventKind, JobEvent, JobKind, JobRecord, JobState, ModelRef, TrialRecord,
};
use crate::nn::metadata::EpochMetrics;
use crate::nn::{Cell, LayerSpec, ModelSpec, SpecRequest};
use crate::proto as pb;
use crate::train::config::{
    EarlyStoppingRequest, Mode, Monitor, MonitorRequest, Optimizer, ReduceLrRequest,
};
use crate::train::{TrainConfig, TrainConfigRequest};

/// Milliseconds since the Unix epoch as a proto timestamp.
pub fn timestamp(ms: u64) -> pbjson_types::Timestamp {
    pbjson_types::Timestamp {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

/// A proto cell kind as the domain's; `field` names it in the error.
pub fn cell_from_proto(field: String, value: i32) -> Result<Cell, InvalidField> {
    match pb::Cell::try_from(value) {
        Ok(pb::Cell::Lstm) => Ok(Cell::Lstm),
        Ok(pb::Cell::Gru) => Ok(Cell::Gru),
        Ok(pb::Cell::Rnn) => Ok(Cell::Rnn),
        _ => Err(InvalidField::new(
            field,
            format!("must be CELL_LSTM, CELL_GRU or CELL_RNN, got {value}"),
        )),
    }
}

/// A requested model spec as the domain's request (presets and defaults
/// are resolved later).
pub fn spec_request(spec: Option<pb::ModelSpec>) -> Result<SpecRequest, InvalidField> {
    let spec = spec.unwrap_or_default();
    let layers = spec
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let cell = cell_from_proto(format!("spec.layers[{i}].cell"), l.cell)?;
            Ok(LayerSpec {
                cell,
                units: l.units as usize,
                bidirectional: l.bidirectional,
                dropout: l.dropout,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SpecRequest {
        preset: (!spec.preset.is_empty()).then_some(spec.preset),
        vocab_size: spec.vocab_size.map(|v| v as usize),
        embedding_dim: spec.embedding_dim.map(|v| v as usize),
        window: spec.window.map(|v| v as usize),
        embedding_dropout: spec.embedding_dropout,
        layers: (!layers.is_empty()).then_some(layers),
    })
}

/// A resolved model spec as the proto's, every field filled.
pub fn spec_to_proto(spec: &ModelSpec) -> pb::ModelSpec {
    pb::ModelSpec {
        preset: String::new(),
        vocab_size: Some(spec.vocab_size as u32),
        embedding_dim: Some(spec.embedding_dim as u32),
        window: Some(spec.window as u32),
        embedding_dropout: Some(spec.embedding_dropout),
        layers: spec
            .layers
            .iter()
            .map(|l| pb::RecurrentLayer {
                cell: match l.cell {
                    Cell::Lstm => pb::Cell::Lstm,
                    Cell::Gru => pb::Cell::Gru,
                    Cell::Rnn => pb::Cell::Rnn,
                } as i32,
                units: l.units as u32,
                bidirectional: l.bidirectional,
                dropout: l.dropout,
            })
            .collect(),
    }
}

fn monitor_request(m: Option<pb::Monitor>) -> MonitorRequest {
    let m = m.unwrap_or_default();
    MonitorRequest {
        metric: m.metric,
        mode: m.mode,
        min_delta: m.min_delta,
    }
}

/// An f32 from the wire as the decimal the client wrote: `0.01f32` widened
/// to f64 is 0.009999999776482582, which metadata.json and the job would
/// then show; its shortest decimal, read as f64, is 0.01.
pub fn f32_as_written(v: f32) -> f64 {
    v.to_string().parse().unwrap_or_else(|_| f64::from(v))
}

/// A requested training config as the domain's request: fields the
/// client left unset stay None, so the defaults are chosen in one place.
pub fn config_request(config: Option<pb::TrainingConfig>) -> TrainConfigRequest {
    let c = config.unwrap_or_default();
    TrainConfigRequest {
        epochs: c.epochs,
        batch_size: c.batch_size.map(|v| v as usize),
        optimizer: (!c.optimizer.is_empty()).then_some(c.optimizer),
        learning_rate: c.learning_rate.map(f32_as_written),
        beta1: c.beta1.map(f32_as_written),
        beta2: c.beta2.map(f32_as_written),
        epsilon: c.epsilon.map(f32_as_written),
        weight_decay: c.weight_decay.map(f32_as_written),
        validation_split: c.validation_split.map(f32_as_written),
        seed: c.seed,
        shuffle: c.shuffle,
        clip_grad_norm: c.clip_grad_norm.map(f32_as_written),
        early_stopping: c.early_stopping.map(|e| EarlyStoppingRequest {
            monitor: monitor_request(e.monitor),
            patience: e.patience,
            restore_best_weights: e.restore_best_weights,
        }),
        reduce_lr_on_plateau: c.reduce_lr_on_plateau.map(|r| ReduceLrRequest {
            monitor: monitor_request(r.monitor),
            factor: r.factor,
            patience: r.patience,
            min_lr: r.min_lr,
        }),
        keep_best: c.keep_best,
        progress_every_batches: c.progress_every_batches,
        progress_every_seconds: c.progress_every_seconds.map(f32_as_written),
        loss_positions: (!c.loss_positions.is_empty()).then_some(c.loss_positions),
        stateful: c.stateful,
    }
}

fn monitor_to_proto(m: &Monitor) -> pb::Monitor {
    pb::Monitor {
        metric: m.metric.name().to_string(),
        mode: match m.mode {
            Mode::Min => "min",
            Mode::Max => "max",
        }
        .to_string(),
        min_delta: m.min_delta,
    }
}

/// A resolved training config as the proto's, every field filled.
pub fn config_to_proto(c: &TrainConfig) -> pb::TrainingConfig {
    pb::TrainingConfig {
        epochs: Some(c.epochs),
        batch_size: Some(c.batch_size as u32),
        learning_rate: Some(c.learning_rate as f32),
        beta1: Some(c.beta1 as f32),
        beta2: Some(c.beta2 as f32),
        epsilon: Some(c.epsilon as f32),
        validation_split: Some(c.validation_split as f32),
        seed: Some(c.seed),
        shuffle: Some(c.shuffle),
        optimizer: match c.optimizer {
            Optimizer::Adam => "adam",
            Optimizer::AdamW => "adamw",
        }
        .to_string(),
        weight_decay: Some(c.weight_decay as f32),
        clip_grad_norm: Some(c.clip_grad_norm as f32),
        early_stopping: c.early_stopping.as_ref().map(|e| pb::EarlyStopping {
            monitor: Some(monitor_to_proto(&e.monitor)),
            patience: e.patience,
            restore_best_weights: e.restore_best_weights,
        }),
        reduce_lr_on_plateau: c
            .reduce_lr_on_plateau
            .as_ref()
            .map(|r| pb::ReduceLrOnPlateau {
                monitor: Some(monitor_to_proto(&r.monitor)),
                factor: Some(r.factor),
                patience: r.patience,
                min_lr: r.min_lr,
            }),
        keep_best: Some(c.keep_best),
        progress_every_batches: Some(c.progress_every_batches),
        progress_every_seconds: Some(c.progress_every_seconds as f32),
        loss_positions: c.loss_positions.name().to_string(),
        stateful: Some(c.stateful),
    }
}

/// One epoch's metrics as the proto's.
pub fn metrics_to_proto(m: &EpochMetrics) -> pb::EpochMetrics {
    pb::EpochMetrics {
        epoch: m.epoch,
        loss: m.loss,
        accuracy: m.accuracy,
        top5_accuracy: m.top5_accuracy,
        perplexity: m.perplexity,
        val_loss: m.val_loss,
        val_accuracy: m.val_accuracy,
        val_top5_accuracy: m.val_top5_accuracy,
        val_perplexity: m.val_perplexity,
        learning_rate: m.learning_rate,
        samples_per_second: m.samples_per_second,
        elapsed_seconds: m.elapsed_seconds,
    }
}

/// A job state as the proto's.
pub fn state_to_proto(s: JobState) -> pb::JobState {
    match s {
        JobState::Queued => pb::JobState::Queued,
        JobState::Running => pb::JobState::Running,
        JobState::Succeeded => pb::JobState::Succeeded,
        JobState::Failed => pb::JobState::Failed,
        JobState::Cancelled => pb::JobState::Cancelled,
    }
}

/// A job-state filter from the wire: None for UNSPECIFIED (no filter),
/// an error naming `state` for a number outside the enum.
pub fn state_from_proto(s: i32) -> Result<Option<JobState>, InvalidField> {
    Ok(match pb::JobState::try_from(s) {
        Ok(pb::JobState::Unspecified) => None,
        Ok(pb::JobState::Queued) => Some(JobState::Queued),
        Ok(pb::JobState::Running) => Some(JobState::Running),
        Ok(pb::JobState::Succeeded) => Some(JobState::Succeeded),
        Ok(pb::JobState::Failed) => Some(JobState::Failed),
        Ok(pb::JobState::Cancelled) => Some(JobState::Cancelled),
        Err(_) => {
            return Err(InvalidField::new(
                "state",
                format!("is not a job state: {s}"),
            ))
        }
    })
}

fn model_ref(m: &ModelRef) -> pb::ModelRef {
    pb::ModelRef {
        name: m.name.clone(),
        version: m.version,
    }
}

/// A job event as the proto's, its kind mapped one to one.
pub fn event_to_proto(e: &JobEvent) -> pb::JobEvent {
    use pb::job_event::Kind;
    let kind = match &e.kind {
        EventKind::State { state, message } => Kind::State(pb::StateChanged {
            state: state_to_proto(*state) as i32,
            message: message.clone(),
        }),
        EventKind::Batch(b) => Kind::Batch(pb::BatchProgress {
            epoch: b.epoch,
            epochs: b.epochs,
            batch: b.batch,
            batches: b.batches,
            loss: b.loss,
            accuracy: b.accuracy,
            samples_per_second: b.samples_per_second,
            elapsed_seconds: b.elapsed_seconds,
            eta_seconds: b.eta_seconds,
            learning_rate: b.learning_rate,
        }),
        EventKind::Epoch {
            metrics,
            epochs,
            eta_seconds,
        } => Kind::Epoch(pb::EpochEnd {
            metrics: Some(metrics_to_proto(metrics)),
            epochs: *epochs,
            eta_seconds: *eta_seconds,
        }),
        EventKind::Trial {
            what,
            trial,
            leaderboard,
        } => {
            // What changed only: the trial with its newest epoch, and the
            // ranking by number (GetJob has every trial and history).
            let mut trial = trial_to_proto(trial);
            let newest = trial.history.pop();
            trial.history = newest.into_iter().collect();
            Kind::Trial(pb::TrialEvent {
                what: what.clone(),
                trial: Some(trial),
                leaderboard: Vec::new(),
                ranking: leaderboard.iter().map(|t| t.number).collect(),
            })
        }
        EventKind::Finished(f) => Kind::Finished(pb::Finished {
            state: state_to_proto(f.state) as i32,
            reason: f.reason.clone(),
            model: f.model.as_ref().map(model_ref),
            best_epoch: f.best_epoch.unwrap_or(0),
            weights_epoch: f.weights_epoch.unwrap_or(0),
            stopped_early: f.stopped_early,
        }),
    };
    pb::JobEvent {
        seq: e.seq,
        job_id: e.job_id.clone(),
        time: Some(timestamp(e.time_ms)),
        kind: Some(kind),
    }
}

/// A job record as the proto's `Job`; a tuning job's trials come
/// best first, the unscored after them.
pub fn job_to_proto(j: &JobRecord) -> pb::Job {
    pb::Job {
        id: j.id.clone(),
        state: state_to_proto(j.state) as i32,
        model_name: j.request.model_name.clone(),
        dataset_id: j.request.dataset_id.clone(),
        spec: Some(spec_to_proto(&j.request.spec)),
        config: Some(config_to_proto(&j.request.config)),
        created_at: Some(timestamp(j.created_at_ms)),
        started_at: j.started_at_ms.map(timestamp),
        finished_at: j.finished_at_ms.map(timestamp),
        latest_progress: j.latest_progress.as_ref().map(event_to_proto),
        model: j.model.as_ref().map(model_ref),
        error: j.error.clone().unwrap_or_default(),
        history: j.history.iter().map(metrics_to_proto).collect(),
        validation_dataset_id: j.request.validation_dataset_id.clone().unwrap_or_default(),
        kind: match j.kind {
            JobKind::Training => "training",
            JobKind::Tuning => "tuning",
        }
        .to_string(),
        parent_id: j.request.parent.clone().unwrap_or_default(),
        trials: match &j.tuning {
            Some(t) => {
                let board = leaderboard(&t.trials, t.request.objective);
                let unscored = t.trials.iter().filter(|x| x.score.is_none());
                board.iter().chain(unscored).map(trial_to_proto).collect()
            }
            None => Vec::new(),
        },
    }
}

/// One trial of a search as the proto's.
pub fn trial_to_proto(t: &TrialRecord) -> pb::Trial {
    pb::Trial {
        number: t.number,
        hyperparameters: t
            .hyperparameters
            .pairs()
            .into_iter()
            .map(|(name, value)| pb::Hyperparameter { name, value })
            .collect(),
        state: state_to_proto(t.state) as i32,
        job_ids: t.job_ids.clone(),
        history: t.history.iter().map(metrics_to_proto).collect(),
        score: t.score,
        epochs: t.epochs,
        stopped_early: t.stopped_early,
    }
}
