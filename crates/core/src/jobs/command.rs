//! What the job handle, the workers and the tuning coordinators ask of the
//! job actor: one message a request, with the channel its answer comes back
//! on.
use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::log::JobLog;
use super::record::{EventKind, Finished, JobRecord, TrainingRequest, TuningRequest};
use super::JobError;

/// A request to the actor.
pub(super) enum Command {
    Submit {
        request: TrainingRequest,
        /// Set for a tuning job.
        tuning: Option<Box<TuningRequest>>,
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
    Cancel {
        id: String,
        reply: oneshot::Sender<Result<JobRecord, JobError>>,
    },
    DatasetsInUse {
        reply: oneshot::Sender<HashMap<String, Vec<String>>>,
    },
    Event {
        id: String,
        kind: EventKind,
    },
    WorkDone {
        id: String,
        outcome: WorkOutcome,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// How a worker's run of a job ended.
pub(super) enum WorkOutcome {
    Finished(Finished),
    /// Stopped by a shutdown; the job resumes from its checkpoint later.
    Interrupted {
        message: String,
    },
}
