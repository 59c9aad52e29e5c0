//! Jobs: queue, worker pool, durable records, progress fan-out, cancel,
//! resume after a restart.
mod actor;
pub mod admission;
mod checkpoints;
mod command;
pub mod log;
pub mod manager;
pub mod record;
mod tuning;
mod worker;

pub use admission::{Admission, TrainingAsk, TuningAsk};
pub use checkpoints::checkpoint_key;
pub use log::WatchItem;
pub use manager::{JobManager, JobsConfig};
pub use record::{
    EventKind, Finished, JobEvent, JobKind, JobRecord, JobState, ModelRef, TrainingRequest,
    TrialRecord, TuningRequest, TuningState,
};
pub use tuning::leaderboard;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Invalid(#[from] crate::error::InvalidField),
    #[error("{field} {id:?} names no dataset")]
    NoDataset { field: &'static str, id: String },
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error("job {0:?} not found")]
    NotFound(String),
    #[error("the job queue is full ({0} jobs waiting); retry later")]
    QueueFull(usize),
    #[error("the server is shutting down; retry on another replica or after the restart")]
    ShuttingDown,
    #[error("job {id} already ended ({state:?}); only queued or running jobs can be cancelled")]
    AlreadyEnded { id: String, state: JobState },
    #[error(
        "dataset {id} is used by queued or running jobs ({jobs}); delete it once they have ended"
    )]
    DatasetInUse { id: String, jobs: String },
    #[error("job storage failed: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("the job record could not be written, so the job was not queued")]
    NotRecorded,
    #[error("could not start the {thread} thread: {source}")]
    Spawn {
        thread: &'static str,
        source: std::io::Error,
    },
}
