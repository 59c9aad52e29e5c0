//! The job handle: what the rest of the program holds to submit, read,
//! watch and cancel jobs. Each call is a `Command` to the actor (actor.rs,
//! where `JobManager::start` lives) and waits for its answer; the actor
//! owns every record.
use std::collections::HashMap;

use candle_core::Device;
use tokio::sync::{mpsc, oneshot};

use super::command::Command;
use super::log::WatchItem;
use super::record::{EventKind, JobRecord, TrainingRequest, TuningRequest};
use super::JobError;

#[derive(Clone, Debug)]
pub struct JobsConfig {
    pub workers: usize,
    pub max_queued: usize,
    pub device: Device,
}

/// Cheap to clone; every clone talks to the same background thread.
#[derive(Clone)]
pub struct JobManager {
    pub(super) commands: mpsc::UnboundedSender<Command>,
}

impl JobManager {
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
        self.ask(|reply| Command::Submit {
            request,
            tuning: None,
            reply,
        })
        .await?
    }

    /// Starts a tuning job: `base` is every trial's starting point.
    pub async fn submit_tuning(
        &self,
        base: TrainingRequest,
        tuning: TuningRequest,
    ) -> Result<JobRecord, JobError> {
        self.ask(|reply| Command::Submit {
            request: base,
            tuning: Some(Box::new(tuning)),
            reply,
        })
        .await?
    }

    /// Adds an event to a job (for tuning coordinators).
    pub(super) fn send_event(&self, id: &str, kind: EventKind) {
        let _ = self.commands.send(Command::Event {
            id: id.to_string(),
            kind,
        });
    }

    pub async fn get(&self, id: &str) -> Result<JobRecord, JobError> {
        let id = id.to_string();
        self.ask(|reply| Command::Get { id, reply }).await?
    }

    /// Every job, newest first.
    pub async fn list(&self) -> Result<Vec<JobRecord>, JobError> {
        self.ask(|reply| Command::List { reply }).await
    }

    /// The datasets that queued or running jobs use (to train or to
    /// validate): dataset id -> job ids.
    pub async fn datasets_in_use(&self) -> Result<HashMap<String, Vec<String>>, JobError> {
        self.ask(|reply| Command::DatasetsInUse { reply }).await
    }

    /// The rule before a dataset is deleted: no queued or running job uses
    /// it. (A job created between this check and the delete fails when it
    /// starts, with NOT_FOUND for the dataset, in its record.)
    pub async fn check_dataset_unused(&self, id: &str) -> Result<(), JobError> {
        match self.datasets_in_use().await?.remove(id) {
            Some(jobs) => Err(JobError::DatasetInUse {
                id: id.to_string(),
                jobs: jobs.join(", "),
            }),
            None => Ok(()),
        }
    }

    pub async fn cancel(&self, id: &str) -> Result<JobRecord, JobError> {
        let id = id.to_string();
        self.ask(|reply| Command::Cancel { id, reply }).await?
    }

    /// The job's events so far then live ones; the stream ends after the
    /// terminal event, or with `ShuttingDown`.
    pub async fn watch(&self, id: &str) -> Result<mpsc::Receiver<WatchItem>, JobError> {
        let id = id.to_string();
        let log = self.ask(|reply| Command::Watch { id, reply }).await??;
        Ok(log.watch(16))
    }

    /// Refuses new jobs, ends watch streams, and stops running jobs at their
    /// next batch, leaving them to resume from their last checkpoint on the
    /// next start. Returns once no job runs.
    pub async fn shutdown(&self) {
        let _ = self.ask(|reply| Command::Shutdown { reply }).await;
    }
}
