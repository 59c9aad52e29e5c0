//! The job actor: one background thread owns every job record and the
//! FIFO queue, driven by commands over a channel, and writes each change to
//! the record store before it is visible; a pool of worker threads runs the
//! training (never on the tokio executor).
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::command::{Command, WorkOutcome};
use super::log::JobLog;
use super::record::{
    EventKind, Finished, JobEvent, JobKind, JobRecord, JobState, TrainingRequest, TuningRequest,
    TuningState,
};
use super::tuning::{fresh_trials, Coordinator};
use super::worker::{run_job, WorkItem, WorkerContext};
use super::{JobError, JobManager, JobsConfig};
use crate::data::Datasets;
use crate::store::{from_json, now_millis, to_json, ModelRegistry, RecordWrite, Store, StoreError};

const JOBS: &str = "jobs";
const EVENTS: &str = "job_events";

/// Sequence numbers reserved per durable write for events sent before they
/// are durable: one fsync per this many batch-progress events at most.
const SEQ_BLOCK: u64 = 256;

/// How many trials of a search run at once, and why when that is fewer
/// than the client asked for (the coordinator caps it the same way).
fn parallelism(asked: usize, workers: usize) -> String {
    let runs = asked.min(workers).max(1);
    if runs < asked {
        format!("{runs} at a time (parallel_trials {asked} is capped at the server's {workers} training workers, --workers)")
    } else {
        format!("{runs} at a time")
    }
}

/// A job's durable events, in order.
fn stored_events(store: &dyn Store, id: &str) -> Result<Vec<JobEvent>, StoreError> {
    store
        .list_records(EVENTS, &format!("{id}/"))?
        .iter()
        .map(|(_, b)| from_json(b))
        .collect()
}

fn event_id(job: &str, seq: u64) -> String {
    format!("{job}/{seq:012}")
}

struct Entry {
    record: JobRecord,
    /// Loaded on first watch for jobs that ended before this process.
    log: Option<Arc<JobLog>>,
    cancel: Arc<AtomicBool>,
    /// Continue from the job's checkpoint when it runs.
    resume: bool,
}

impl JobManager {
    /// Loads the job records, queues the jobs that had not ended (those that
    /// were running resume from their checkpoints, first), and starts the
    /// workers.
    pub fn start(
        config: JobsConfig,
        store: Arc<dyn Store>,
        datasets: Arc<Datasets>,
        registry: Arc<ModelRegistry>,
    ) -> Result<Self, JobError> {
        let (commands, rx) = mpsc::unbounded_channel();
        let (work_tx, work_rx) = std_mpsc::channel::<WorkItem>();
        let work_rx = Arc::new(Mutex::new(work_rx));
        let shutdown = Arc::new(AtomicBool::new(false));
        let context = Arc::new(WorkerContext {
            store: Arc::clone(&store),
            datasets,
            registry,
            device: config.device.clone(),
            commands: commands.clone(),
            shutdown: Arc::clone(&shutdown),
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
                .map_err(|source| JobError::Spawn {
                    thread: "train-worker",
                    source,
                })?;
        }
        let coordinators = CoordinatorContext {
            commands: commands.downgrade(),
            runtime: tokio::runtime::Handle::current(),
            registry: Arc::clone(&context.registry),
            store: Arc::clone(&store),
            workers: config.workers,
        };
        let mut actor = Actor {
            coordinators,
            store,
            jobs: HashMap::new(),
            order: Vec::new(),
            queue: VecDeque::new(),
            running: 0,
            workers: config.workers,
            max_queued: config.max_queued,
            work_tx: Some(work_tx),
            shutdown,
            shutdown_waiters: Vec::new(),
        };
        actor.recover()?;
        std::thread::Builder::new()
            .name("job-manager".into())
            .spawn(move || actor.run(rx))
            .map_err(|source| JobError::Spawn {
                thread: "job-manager",
                source,
            })?;
        Ok(Self { commands })
    }
}

/// What the actor needs to start tuning coordinators.
struct CoordinatorContext {
    // Weak: the actor runs until every other handle is gone.
    commands: mpsc::WeakUnboundedSender<Command>,
    runtime: tokio::runtime::Handle,
    registry: Arc<ModelRegistry>,
    store: Arc<dyn Store>,
    workers: usize,
}

struct Actor {
    coordinators: CoordinatorContext,
    store: Arc<dyn Store>,
    jobs: HashMap<String, Entry>,
    /// Ids in submission order.
    order: Vec<String>,
    queue: VecDeque<String>,
    running: usize,
    workers: usize,
    max_queued: usize,
    work_tx: Option<std_mpsc::Sender<WorkItem>>,
    shutdown: Arc<AtomicBool>,
    shutdown_waiters: Vec<oneshot::Sender<()>>,
}

impl Actor {
    fn recover(&mut self) -> Result<(), JobError> {
        let mut records: Vec<JobRecord> = self
            .store
            .list_records(JOBS, "")?
            .iter()
            .map(|(_, b)| from_json(b))
            .collect::<Result<_, _>>()?;
        records.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        let mut resumed = Vec::new();
        for mut record in records {
            let id = record.id.clone();
            // Numbers past the last durable event may have been sent before
            // the crash: skip them all.
            record.events = record.events.max(record.seq_reserved);
            let live = !record.state.is_terminal();
            let log = if live {
                Some(JobLog::new(stored_events(self.store.as_ref(), &id)?))
            } else {
                None
            };
            let tuning = record.kind == JobKind::Tuning && live;
            match record.state {
                _ if tuning => {}
                JobState::Running => resumed.push(id.clone()),
                JobState::Queued => self.queue.push_back(id.clone()),
                _ => {}
            }
            self.order.push(id.clone());
            self.jobs.insert(
                id,
                Entry {
                    resume: record.state == JobState::Running,
                    record,
                    log,
                    cancel: Arc::new(AtomicBool::new(false)),
                },
            );
        }
        for id in resumed.into_iter().rev() {
            self.queue.push_front(id);
        }
        let records = self
            .jobs
            .iter()
            .map(|(id, e)| (id.clone(), &e.record))
            .collect();
        super::checkpoints::remove_stale_checkpoints(&*self.store, &records)?;
        let searches: Vec<String> = self
            .order
            .iter()
            .filter(|id| {
                let r = &self.jobs[*id].record;
                r.kind == JobKind::Tuning && !r.state.is_terminal()
            })
            .cloned()
            .collect();
        for id in searches {
            self.start_coordinator(&id);
        }
        if !self.queue.is_empty() {
            tracing::info!(jobs = self.queue.len(), "recovered unfinished jobs");
        }
        self.dispatch();
        Ok(())
    }

    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        while let Some(command) = rx.blocking_recv() {
            match command {
                Command::Submit {
                    request,
                    tuning,
                    reply,
                } => {
                    let _ = reply.send(self.submit(request, tuning));
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
                    let _ = reply.send(self.log_of(&id));
                }
                Command::Cancel { id, reply } => {
                    let _ = reply.send(self.cancel(&id));
                }
                Command::DatasetsInUse { reply } => {
                    let _ = reply.send(self.datasets_in_use());
                }
                Command::Event { id, kind } => self.record_event(&id, kind),
                Command::WorkDone { id, outcome } => self.work_done(&id, outcome),
                Command::Shutdown { reply } => self.begin_shutdown(reply),
            }
        }
    }

    /// The datasets that queued or running jobs use: dataset id -> jobs.
    fn datasets_in_use(&self) -> HashMap<String, Vec<String>> {
        let mut in_use: HashMap<String, Vec<String>> = HashMap::new();
        for id in &self.order {
            let request = &self.jobs[id].record.request;
            if self.jobs[id].record.state.is_terminal() {
                continue;
            }
            let used =
                std::iter::once(&request.dataset_id).chain(request.validation_dataset_id.as_ref());
            for dataset in used {
                in_use.entry(dataset.clone()).or_default().push(id.clone());
            }
        }
        in_use
    }

    /// A worker ended a job: record how, and start the next.
    fn work_done(&mut self, id: &str, outcome: WorkOutcome) {
        self.running -= 1;
        match outcome {
            WorkOutcome::Finished(finished) => self.record_event(id, EventKind::Finished(finished)),
            WorkOutcome::Interrupted { message } => {
                // Stays RUNNING in the store: resumes on restart.
                self.record_event(
                    id,
                    EventKind::State {
                        state: JobState::Running,
                        message,
                    },
                );
            }
        }
        self.dispatch();
        self.notify_if_idle();
    }

    /// Refuses new jobs, ends every open watch, and answers `reply` once
    /// the running jobs have stopped.
    fn begin_shutdown(&mut self, reply: oneshot::Sender<()>) {
        self.shutdown.store(true, Ordering::SeqCst);
        for entry in self.jobs.values() {
            if let Some(log) = &entry.log {
                if !entry.record.state.is_terminal() {
                    log.close();
                }
            }
        }
        self.shutdown_waiters.push(reply);
        self.notify_if_idle();
    }

    fn notify_if_idle(&mut self) {
        if self.shutdown.load(Ordering::SeqCst) && self.running == 0 {
            // Workers exit once the queue's sender is gone.
            self.work_tx = None;
            for w in self.shutdown_waiters.drain(..) {
                let _ = w.send(());
            }
        }
    }

    fn log_of(&mut self, id: &str) -> Result<Arc<JobLog>, JobError> {
        let entry = self
            .jobs
            .get_mut(id)
            .ok_or_else(|| JobError::NotFound(id.to_string()))?;
        if let Some(log) = &entry.log {
            return Ok(Arc::clone(log));
        }
        let log = JobLog::new(stored_events(self.store.as_ref(), id)?);
        entry.log = Some(Arc::clone(&log));
        Ok(log)
    }

    fn submit(
        &mut self,
        request: TrainingRequest,
        tuning: Option<Box<TuningRequest>>,
    ) -> Result<JobRecord, JobError> {
        if self.shutdown.load(Ordering::SeqCst) {
            return Err(JobError::ShuttingDown);
        }
        // A trial belongs to an admitted tuning job: it is not refused.
        if self.queue.len() >= self.max_queued && request.parent.is_none() {
            return Err(JobError::QueueFull(self.max_queued));
        }
        let record = new_record(request, tuning);
        let id = record.id.clone();
        self.jobs.insert(
            id.clone(),
            Entry {
                record,
                log: Some(JobLog::new(Vec::new())),
                cancel: Arc::new(AtomicBool::new(false)),
                resume: false,
            },
        );
        self.order.push(id.clone());
        let ahead = self.queue.len() + self.running;
        self.record_event(
            &id,
            EventKind::State {
                state: JobState::Queued,
                message: format!(
                    "queued; {ahead} {} ahead",
                    if ahead == 1 { "job" } else { "jobs" }
                ),
            },
        );
        if self.jobs[&id].record.events == 0 {
            // The record could not be stored: forget the job.
            self.jobs.remove(&id);
            self.order.pop();
            return Err(JobError::NotRecorded);
        }
        if self.jobs[&id].record.kind == JobKind::Tuning {
            // The search itself needs no worker: it starts at once and its
            // trials queue like any job.
            self.start_search(&id);
        } else {
            self.queue.push_back(id.clone());
            self.dispatch();
        }
        Ok(self.jobs[&id].record.clone())
    }

    /// Plans a tuning job's trials, says so, and starts its coordinator.
    fn start_search(&mut self, id: &str) {
        let entry = self.jobs.get_mut(id).expect("just inserted");
        let trials = fresh_trials(&entry.record);
        if let Some(t) = entry.record.tuning.as_mut() {
            t.trials = trials;
        }
        let n = entry.record.tuning.as_ref().map_or(0, |t| t.trials.len());
        let asked = entry
            .record
            .tuning
            .as_ref()
            .map_or(1, |t| t.request.parallel_trials);
        let message = format!(
            "searching: {n} trials planned, {}",
            parallelism(asked, self.workers)
        );
        self.record_event(
            id,
            EventKind::State {
                state: JobState::Running,
                message,
            },
        );
        self.start_coordinator(id);
    }

    fn start_coordinator(&mut self, id: &str) {
        let entry = &self.jobs[id];
        let Some(tuning) = entry.record.tuning.clone() else {
            return;
        };
        let ctx = &self.coordinators;
        let Some(commands) = ctx.commands.upgrade() else {
            return;
        };
        let coordinator = Coordinator {
            id: id.to_string(),
            base: entry.record.request.clone(),
            tuning,
            jobs: JobManager { commands },
            runtime: ctx.runtime.clone(),
            registry: Arc::clone(&ctx.registry),
            store: Arc::clone(&ctx.store),
            cancel: Arc::clone(&entry.cancel),
            shutdown: Arc::clone(&self.shutdown),
            workers: ctx.workers,
        };
        let spawned = std::thread::Builder::new()
            .name(format!("tune-{id}"))
            .spawn(move || coordinator.run());
        if let Err(e) = spawned {
            tracing::error!(job = id, error = %e, "cannot start a tuning coordinator");
        }
    }

    fn cancel(&mut self, id: &str) -> Result<JobRecord, JobError> {
        let entry = self
            .jobs
            .get(id)
            .ok_or_else(|| JobError::NotFound(id.to_string()))?;
        match entry.record.state {
            JobState::Queued => {
                self.queue.retain(|q| q != id);
                self.record_event(
                    id,
                    EventKind::Finished(Finished {
                        state: JobState::Cancelled,
                        reason: "cancelled while queued".into(),
                        model: None,
                        best_epoch: None,
                        weights_epoch: None,
                        stopped_early: false,
                    }),
                );
            }
            JobState::Running => entry.cancel.store(true, Ordering::SeqCst),
            state => {
                return Err(JobError::AlreadyEnded {
                    id: id.to_string(),
                    state,
                })
            }
        }
        Ok(self.jobs[id].record.clone())
    }

    /// Hands queued jobs to idle workers, oldest first.
    fn dispatch(&mut self) {
        if self.shutdown.load(Ordering::SeqCst) {
            return;
        }
        let Some(work_tx) = &self.work_tx else {
            return;
        };
        while self.running < self.workers {
            let Some(id) = self.queue.pop_front() else {
                return;
            };
            let entry = &self.jobs[&id];
            let item = WorkItem {
                id: id.clone(),
                request: entry.record.request.clone(),
                cancel: Arc::clone(&entry.cancel),
                resume: entry.resume,
            };
            if work_tx.send(item).is_err() {
                return;
            }
            self.running += 1;
        }
    }

    /// Folds an event into the job's record, stores both (batch progress
    /// without waiting for the disk), then shows the event to watchers.
    fn record_event(&mut self, id: &str, kind: EventKind) {
        let Some(entry) = self.jobs.get_mut(id) else {
            return;
        };
        if let EventKind::Epoch { metrics, .. } = &kind {
            if entry
                .record
                .history
                .iter()
                .any(|m| m.epoch == metrics.epoch)
            {
                return; // already reported before a restart
            }
        }
        let now = now_millis();
        let mut record = entry.record.clone();
        record.apply(&kind, now);
        record.events += 1;
        let event = JobEvent {
            seq: record.events,
            job_id: id.to_string(),
            time_ms: now,
            kind,
        };
        if matches!(event.kind, EventKind::Batch(_) | EventKind::Epoch { .. }) {
            record.latest_progress = Some(event.clone());
        }
        let mut durable = !matches!(event.kind, EventKind::Batch(_));
        if !durable && event.seq > record.seq_reserved {
            // Batch progress is sent before it is on disk: reserve a block
            // of numbers, durably, so a restart never reuses one.
            record.seq_reserved = event.seq + SEQ_BLOCK;
            durable = true;
        }
        let (record_json, event_json, eid) =
            (to_json(&record), to_json(&event), event_id(id, event.seq));
        let written = self.store.write_records(
            &[
                RecordWrite {
                    table: JOBS,
                    id,
                    json: Some(&record_json),
                },
                RecordWrite {
                    table: EVENTS,
                    id: &eid,
                    json: Some(&event_json),
                },
            ],
            durable,
        );
        if let Err(e) = written {
            tracing::error!(job = id, error = %e, "cannot store a job event; it is dropped");
            return;
        }
        entry.record = record;
        if let Some(log) = &entry.log {
            log.push(event);
        }
    }
}

/// A new job's record, queued.
fn new_record(request: TrainingRequest, tuning: Option<Box<TuningRequest>>) -> JobRecord {
    JobRecord {
        id: format!("job-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
        state: JobState::Queued,
        request,
        created_at_ms: now_millis(),
        started_at_ms: None,
        finished_at_ms: None,
        latest_progress: None,
        model: None,
        error: None,
        history: Vec::new(),
        events: 0,
        seq_reserved: 0,
        kind: if tuning.is_some() {
            JobKind::Tuning
        } else {
            JobKind::Training
        },
        tuning: tuning.map(|request| TuningState {
            request: *request,
            trials: Vec::new(),
        }),
    }
}
