//! The job manager: one background task owns every job record and the FIFO
//! queue, driven by commands over a channel; a pool of worker threads runs
//! the training (never on the tokio executor).
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::Duration;

use candle_core::Device;
use tokio::sync::{mpsc, oneshot};

use super::log::JobLog;
use super::record::{EventKind, JobEvent, JobRecord, JobState, ModelRef, TrainingRequest};
use super::JobError;
use crate::data::Datasets;
use crate::nn::metadata::{ModelInfo, FORMAT};
use crate::store::{now_millis, ModelRegistry};
use crate::train::{self, to_safetensors, TrainError, TrainEvent, TrainInput};

#[derive(Clone, Debug)]
pub struct JobsConfig {
    pub workers: usize,
    pub max_queued: usize,
    pub device: Device,
    pub progress_interval: Duration,
}

enum Command {
    Submit {
        request: TrainingRequest,
        reply: oneshot::Sender<Result<JobRecord, JobError>>,
    },
    Get {
        id: String,
        reply: oneshot::Sender<Result<JobRecord, JobError>>,
    },
    List {
        reply: oneshot::Sender<Vec<JobRecord>>,
    },
    Watch {
        id: String,
        reply: oneshot::Sender<Result<Arc<JobLog>, JobError>>,
    },
    DatasetsInUse {
        reply: oneshot::Sender<HashMap<String, Vec<String>>>,
    },
    Progress {
        id: String,
        kind: EventKind,
    },
    Finished {
        id: String,
        result: Result<ModelRef, TrainError>,
    },
}

struct WorkItem {
    id: String,
    request: TrainingRequest,
    cancel: Arc<AtomicBool>,
}

struct Entry {
    record: JobRecord,
    log: Arc<JobLog>,
    cancel: Arc<AtomicBool>,
}

/// Cheap to clone; every clone talks to the same background task.
#[derive(Clone)]
pub struct JobManager {
    commands: mpsc::UnboundedSender<Command>,
}

/// What a worker thread needs to run a job to completion.
struct WorkerContext {
    datasets: Arc<Datasets>,
    registry: Arc<ModelRegistry>,
    device: Device,
    progress_interval: Duration,
    commands: mpsc::UnboundedSender<Command>,
}

impl JobManager {
    pub fn start(
        config: JobsConfig,
        datasets: Arc<Datasets>,
        registry: Arc<ModelRegistry>,
    ) -> Self {
        let (commands, rx) = mpsc::unbounded_channel();
        let (work_tx, work_rx) = std_mpsc::channel::<WorkItem>();
        let work_rx = Arc::new(Mutex::new(work_rx));
        let context = Arc::new(WorkerContext {
            datasets,
            registry,
            device: config.device.clone(),
            progress_interval: config.progress_interval,
            commands: commands.clone(),
        });
        for n in 0..config.workers {
            let work_rx = Arc::clone(&work_rx);
            let context = Arc::clone(&context);
            std::thread::Builder::new()
                .name(format!("train-worker-{n}"))
                .spawn(move || loop {
                    let item = match work_rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                        Ok(item) => item,
                        Err(_) => return,
                    };
                    run_job(&context, item);
                })
                .expect("spawn a training worker thread");
        }
        let actor = Actor {
            jobs: HashMap::new(),
            order: Vec::new(),
            queue: VecDeque::new(),
            running: 0,
            workers: config.workers,
            max_queued: config.max_queued,
            work_tx,
        };
        tokio::spawn(actor.run(rx));
        Self { commands }
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, JobError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .map_err(|_| JobError::ShuttingDown)?;
        rx.await.map_err(|_| JobError::ShuttingDown)
    }

    pub async fn submit(&self, request: TrainingRequest) -> Result<JobRecord, JobError> {
        self.ask(|reply| Command::Submit { request, reply }).await?
    }

    pub async fn get(&self, id: &str) -> Result<JobRecord, JobError> {
        let id = id.to_string();
        self.ask(|reply| Command::Get { id, reply }).await?
    }

    /// Every job, newest first.
    pub async fn list(&self) -> Result<Vec<JobRecord>, JobError> {
        self.ask(|reply| Command::List { reply }).await
    }

    /// The datasets that queued or running jobs use: dataset id -> job ids.
    pub async fn datasets_in_use(&self) -> Result<HashMap<String, Vec<String>>, JobError> {
        self.ask(|reply| Command::DatasetsInUse { reply }).await
    }

    /// The job's events so far then live ones; the stream ends after the
    /// terminal event.
    pub async fn watch(&self, id: &str) -> Result<mpsc::Receiver<JobEvent>, JobError> {
        let id = id.to_string();
        let log = self.ask(|reply| Command::Watch { id, reply }).await??;
        Ok(log.watch(16))
    }
}

fn run_job(context: &WorkerContext, item: WorkItem) {
    let send = |kind: EventKind| {
        let _ = context.commands.send(Command::Progress {
            id: item.id.clone(),
            kind,
        });
    };
    send(EventKind::State {
        state: JobState::Running,
        message: format!("training on {:?}", context.device),
    });
    let result = (|| -> Result<ModelRef, TrainError> {
        let tokens = context
            .datasets
            .tokens(&item.request.dataset_id)
            .map_err(|e| TrainError::NoData(e.to_string()))?;
        let vocabulary = context
            .datasets
            .get(&item.request.dataset_id)
            .map_err(|e| TrainError::NoData(e.to_string()))?
            .vocabulary;
        let trained = train::train(
            TrainInput {
                spec: &item.request.spec,
                config: &item.request.config,
                tokens: &tokens,
                device: &context.device,
                progress_interval: context.progress_interval,
            },
            &item.cancel,
            &mut |event| {
                send(match event {
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
                })
            },
        )?;
        let info = ModelInfo {
            format: FORMAT.to_string(),
            created_at_ms: now_millis(),
            spec: item.request.spec.clone(),
            vocabulary,
            training: serde_json::to_value(&item.request.config).expect("config serializes"),
            history: trained.history,
            dataset_id: item.request.dataset_id.clone(),
            job_id: item.id.clone(),
        };
        let weights = to_safetensors(&trained.parameters)?;
        let meta = context
            .registry
            .register(&item.request.model_name, info.to_map(), &weights)
            .map_err(|e| TrainError::NoData(format!("saving the model failed: {e}")))?;
        Ok(ModelRef {
            name: meta.name,
            version: meta.version,
        })
    })();
    let _ = context.commands.send(Command::Finished {
        id: item.id.clone(),
        result,
    });
}

struct Actor {
    jobs: HashMap<String, Entry>,
    /// Ids in submission order.
    order: Vec<String>,
    queue: VecDeque<String>,
    running: usize,
    workers: usize,
    max_queued: usize,
    work_tx: std_mpsc::Sender<WorkItem>,
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        while let Some(command) = rx.recv().await {
            match command {
                Command::Submit { request, reply } => {
                    let _ = reply.send(self.submit(request));
                }
                Command::Get { id, reply } => {
                    let _ = reply.send(
                        self.jobs
                            .get(&id)
                            .map(|e| e.record.clone())
                            .ok_or(JobError::NotFound(id)),
                    );
                }
                Command::List { reply } => {
                    let _ = reply.send(
                        self.order
                            .iter()
                            .rev()
                            .map(|id| self.jobs[id].record.clone())
                            .collect(),
                    );
                }
                Command::Watch { id, reply } => {
                    let _ = reply.send(
                        self.jobs
                            .get(&id)
                            .map(|e| Arc::clone(&e.log))
                            .ok_or(JobError::NotFound(id)),
                    );
                }
                Command::DatasetsInUse { reply } => {
                    let mut in_use: HashMap<String, Vec<String>> = HashMap::new();
                    for id in &self.order {
                        let record = &self.jobs[id].record;
                        if matches!(record.state, JobState::Queued | JobState::Running) {
                            in_use
                                .entry(record.request.dataset_id.clone())
                                .or_default()
                                .push(id.clone());
                        }
                    }
                    let _ = reply.send(in_use);
                }
                Command::Progress { id, kind } => self.record_event(&id, kind),
                Command::Finished { id, result } => {
                    self.running -= 1;
                    let (state, reason, model) = match result {
                        Ok(model) => {
                            let epochs = self.jobs[&id].record.request.config.epochs;
                            (
                                JobState::Succeeded,
                                format!("completed {epochs} epochs"),
                                Some(model),
                            )
                        }
                        Err(TrainError::Cancelled) => {
                            (JobState::Cancelled, "cancelled".to_string(), None)
                        }
                        Err(e) => (JobState::Failed, e.to_string(), None),
                    };
                    self.record_event(
                        &id,
                        EventKind::Finished {
                            state,
                            reason,
                            model,
                        },
                    );
                    self.dispatch();
                }
            }
        }
    }

    fn submit(&mut self, request: TrainingRequest) -> Result<JobRecord, JobError> {
        if self.queue.len() >= self.max_queued {
            return Err(JobError::QueueFull(self.max_queued));
        }
        let id = format!("job-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let record = JobRecord {
            id: id.clone(),
            state: JobState::Queued,
            request,
            created_at_ms: now_millis(),
            started_at_ms: None,
            finished_at_ms: None,
            latest_progress: None,
            model: None,
            error: None,
            history: Vec::new(),
        };
        self.jobs.insert(
            id.clone(),
            Entry {
                record,
                log: JobLog::new(),
                cancel: Arc::new(AtomicBool::new(false)),
            },
        );
        self.order.push(id.clone());
        self.record_event(
            &id,
            EventKind::State {
                state: JobState::Queued,
                message: format!("queued behind {} jobs", self.queue.len()),
            },
        );
        self.queue.push_back(id.clone());
        self.dispatch();
        Ok(self.jobs[&id].record.clone())
    }

    /// Hands queued jobs to idle workers, oldest first.
    fn dispatch(&mut self) {
        while self.running < self.workers {
            let Some(id) = self.queue.pop_front() else {
                return;
            };
            let entry = &self.jobs[&id];
            if entry.cancel.load(Ordering::Relaxed) {
                continue;
            }
            let item = WorkItem {
                id: id.clone(),
                request: entry.record.request.clone(),
                cancel: Arc::clone(&entry.cancel),
            };
            if self.work_tx.send(item).is_err() {
                return;
            }
            self.running += 1;
        }
    }

    /// Appends an event to the job's log and folds it into the record.
    fn record_event(&mut self, id: &str, kind: EventKind) {
        let Some(entry) = self.jobs.get_mut(id) else {
            return;
        };
        let now = now_millis();
        let record = &mut entry.record;
        match &kind {
            EventKind::State { state, .. } => {
                record.state = *state;
                if *state == JobState::Running {
                    record.started_at_ms = Some(now);
                }
            }
            EventKind::Epoch { metrics, .. } => record.history.push(metrics.clone()),
            EventKind::Batch(_) => {}
            EventKind::Finished {
                state,
                reason,
                model,
            } => {
                record.state = *state;
                record.finished_at_ms = Some(now);
                record.model = model.clone();
                if *state != JobState::Succeeded {
                    record.error = Some(reason.clone());
                }
            }
        }
        let event = JobEvent {
            seq: entry.log.next_seq(),
            job_id: id.to_string(),
            time_ms: now,
            kind,
        };
        if matches!(event.kind, EventKind::Batch(_) | EventKind::Epoch { .. }) {
            record.latest_progress = Some(event.clone());
        }
        entry.log.push(event);
    }
}
