//! What a worker thread does with one job: load its data (and checkpoint),
//! train, checkpoint every epoch, register the model, report the outcome.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use candle_core::Device;
use tokio::sync::mpsc;

use super::checkpoints::{checkpoint_folder, checkpoint_key};
use super::command::{Command, WorkOutcome};
use super::record::{EventKind, Finished, JobState, ModelRef, TrainingRequest};
use crate::data::{Datasets, TokenStream, Vocabulary};
use crate::nn::metadata::{ModelInfo, FORMAT};
use crate::nn::naming::parameter_shapes;
use crate::store::{now_millis, ModelRegistry, Store};
use crate::train::{
    self, to_safetensors, Checkpoint, StopReason, TrainError, TrainEvent, TrainInput, TrainObserver,
};

pub(super) struct WorkItem {
    pub id: String,
    pub request: TrainingRequest,
    pub cancel: Arc<AtomicBool>,
    pub resume: bool,
}

pub(super) struct WorkerContext {
    pub store: Arc<dyn Store>,
    pub datasets: Arc<Datasets>,
    pub registry: Arc<ModelRegistry>,
    pub device: Device,
    pub commands: mpsc::UnboundedSender<Command>,
    pub shutdown: Arc<AtomicBool>,
}

fn device_name(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => "cuda".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

struct Observer<'a> {
    context: &'a WorkerContext,
    item: &'a WorkItem,
    last_checkpoint: Option<u32>,
}

impl Observer<'_> {
    fn send(&self, kind: EventKind) {
        let _ = self.context.commands.send(Command::Event {
            id: self.item.id.clone(),
            kind,
        });
    }
}

/// `lstmd_training_samples_per_second` of this worker thread.
fn samples_per_second(value: f64) {
    let worker = std::thread::current()
        .name()
        .unwrap_or("worker")
        .to_string();
    metrics::gauge!("lstmd_training_samples_per_second", "worker" => worker).set(value);
}

impl TrainObserver for Observer<'_> {
    fn event(&mut self, event: TrainEvent) {
        match &event {
            TrainEvent::Batch(b) => samples_per_second(b.samples_per_second),
            TrainEvent::Epoch { metrics, .. } => samples_per_second(metrics.samples_per_second),
        }
        self.send(match event {
            TrainEvent::Batch(b) => EventKind::Batch(b),
            TrainEvent::Epoch {
                metrics,
                epochs,
                eta_seconds,
            } => EventKind::Epoch {
                metrics,
                epochs,
                eta_seconds,
            },
        });
    }

    fn checkpoint(&mut self, checkpoint: &Checkpoint) -> Result<(), String> {
        let bytes = checkpoint.to_bytes().map_err(|e| e.to_string())?;
        self.context
            .store
            .put_blob(&checkpoint_key(&self.item.id), &bytes)
            .map_err(|e| e.to_string())?;
        self.last_checkpoint = Some(checkpoint.state.epoch);
        Ok(())
    }

    fn cancelled(&self) -> bool {
        self.item.cancel.load(Ordering::Relaxed) || self.context.shutdown.load(Ordering::Relaxed)
    }
}

pub(super) fn run_job(context: &WorkerContext, item: WorkItem) {
    let mut observer = Observer {
        context,
        item: &item,
        last_checkpoint: None,
    };
    let outcome = match train_and_register(&mut observer) {
        Ok(Registered {
            model,
            stop: trained_stop,
            best_epoch,
            weights_epoch,
        }) => {
            // The model is registered: the checkpoint has served its
            // purpose, unless a trial may continue from it.
            if !item.request.keep_checkpoint {
                let _ = context.store.delete_blobs(&checkpoint_folder(&item.id));
            }
            WorkOutcome::Finished(Finished {
                state: JobState::Succeeded,
                stopped_early: matches!(trained_stop, StopReason::EarlyStopped { .. }),
                reason: trained_stop.to_string(),
                model: Some(model),
                best_epoch,
                weights_epoch: Some(weights_epoch),
            })
        }
        Err(TrainError::Cancelled) if context.shutdown.load(Ordering::Relaxed) && !item.cancel.load(Ordering::Relaxed) => {
            WorkOutcome::Interrupted {
                message: match observer.last_checkpoint {
                    Some(e) => format!("interrupted by a server shutdown; resumes from the epoch {e} checkpoint on restart"),
                    None => "interrupted by a server shutdown; restarts on the next start".into(),
                },
            }
        }
        Err(e) => {
            let kept = match observer.last_checkpoint {
                Some(epoch) => format!("; the epoch {epoch} checkpoint is kept"),
                None => String::new(),
            };
            let (state, reason) = match e {
                TrainError::Cancelled => (JobState::Cancelled, format!("cancelled while running{kept}")),
                e => (JobState::Failed, format!("{e}{kept}")),
            };
            WorkOutcome::Finished(Finished {
                state,
                reason,
                model: None,
                best_epoch: None,
                weights_epoch: None,
                stopped_early: false,
            })
        }
    };
    samples_per_second(0.0);
    let _ = context.commands.send(Command::WorkDone {
        id: item.id.clone(),
        outcome,
    });
}

/// What a finished training run left: the registered model and how the
/// run ended.
struct Registered {
    model: ModelRef,
    stop: StopReason,
    best_epoch: Option<u32>,
    weights_epoch: u32,
}

fn train_and_register(observer: &mut Observer) -> Result<Registered, TrainError> {
    let (context, item) = (observer.context, observer.item);
    let request = &item.request;
    let data = JobData::load(context, request)?;
    let resume = starting_point(observer)?;
    let trained = train::train(
        TrainInput {
            spec: &request.spec,
            config: &request.config,
            tokens: &data.tokens,
            validation_tokens: data.validation.as_deref(),
            device: &context.device,
            resume,
        },
        observer,
    )?;
    let info = ModelInfo {
        format: FORMAT.to_string(),
        created_at_ms: now_millis(),
        spec: request.spec.clone(),
        vocabulary: data.vocabulary,
        training: serde_json::to_value(&request.config).expect("config serializes"),
        history: trained.history,
        dataset_id: request.dataset_id.clone(),
        job_id: item.id.clone(),
        tuning: None,
    };
    let weights = to_safetensors(&trained.parameters)?;
    let meta = context
        .registry
        .register(&request.model_name, info.to_map(), &weights)
        .map_err(TrainError::Register)?;
    Ok(Registered {
        model: ModelRef {
            name: meta.name,
            version: meta.version,
        },
        stop: trained.stop,
        best_epoch: trained.best_epoch,
        weights_epoch: trained.weights_epoch,
    })
}

/// The datasets a job trains and validates on.
struct JobData {
    tokens: TokenStream,
    /// None for an ids dataset.
    vocabulary: Option<Vocabulary>,
    validation: Option<TokenStream>,
}

impl JobData {
    fn load(context: &WorkerContext, request: &TrainingRequest) -> Result<Self, TrainError> {
        let no_data = |e: crate::data::DataError| TrainError::NoData(e.to_string());
        let datasets = &context.datasets;
        let validation = match &request.validation_dataset_id {
            Some(id) => Some(datasets.tokens(id).map_err(no_data)?),
            None => None,
        };
        Ok(JobData {
            tokens: datasets.tokens(&request.dataset_id).map_err(no_data)?,
            vocabulary: datasets
                .get(&request.dataset_id)
                .map_err(no_data)?
                .vocabulary,
            validation,
        })
    }
}

/// The checkpoint a run starts from: after a restart the job's own, else
/// the one it continues (if any). Says so in the Running event, and
/// reports the checkpoint's epochs again, as a crash can fall between a
/// checkpoint and its epoch event (the manager drops known ones).
fn starting_point(observer: &mut Observer) -> Result<Option<Checkpoint>, TrainError> {
    let (context, item) = (observer.context, observer.item);
    let request = &item.request;
    let own = if item.resume {
        load_checkpoint(context, request, &item.id)?
    } else {
        None
    };
    let continued = match (&own, &request.resume_from) {
        (None, Some(from)) => Some(load_checkpoint(context, request, from)?.ok_or_else(|| {
            TrainError::Resume(format!("job {from} left no checkpoint to continue from"))
        })?),
        _ => None,
    };
    let device = device_name(&context.device);
    observer.send(EventKind::State {
        state: JobState::Running,
        message: match (&own, item.resume) {
            _ if continued.is_some() => format!(
                "continuing on {device} from job {}'s epoch {} checkpoint",
                request.resume_from.as_deref().unwrap_or_default(),
                continued.as_ref().map_or(0, |cp| cp.state.epoch)
            ),
            (Some(cp), _) => format!("resumed on {device} from the epoch {} checkpoint after a restart", cp.state.epoch),
            (None, true) => format!("restarted on {device} from the beginning after a restart (no checkpoint was written)"),
            (None, false) => format!("training on {device}"),
        },
    });
    let resume = own.or(continued);
    observer.last_checkpoint = resume.as_ref().map(|cp| cp.state.epoch);
    for metrics in resume.iter().flat_map(|cp| &cp.state.history) {
        observer.event(TrainEvent::Epoch {
            metrics: metrics.clone(),
            epochs: request.config.epochs,
            eta_seconds: 0.0,
        });
    }
    Ok(resume)
}

/// Job `job`'s checkpoint for `request`'s model, None when it left none.
fn load_checkpoint(
    context: &WorkerContext,
    request: &TrainingRequest,
    job: &str,
) -> Result<Option<Checkpoint>, TrainError> {
    let resume_error = |e: String| TrainError::Resume(e);
    let Some(bytes) = (context.store)
        .get_blob(&checkpoint_key(job))
        .map_err(|e| resume_error(e.to_string()))?
    else {
        return Ok(None);
    };
    let names: Vec<String> = parameter_shapes(&request.spec)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    Checkpoint::from_bytes(&bytes, &names, &context.device)
        .map(Some)
        .map_err(|e| resume_error(e.to_string()))
}
