//! Jobs: queue, worker pool, durable records, progress fan-out, cancel,
//! resume after a restart.
mod checkpoints;
pub mod log;
pub mod manager;
pub mod record;
mod tuning;
mod worker;

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
    #[error("job {0:?} not found")]
    NotFound(String),
    #[error("the job queue is full ({0} jobs waiting); retry later")]
    QueueFull(usize),
    #[error("the server is shutting down; retry on another replica or after the restart")]
    ShuttingDown,
    #[error("job {id} already ended ({state:?}); only queued or running jobs can be cancelled")]
    AlreadyEnded { id: String, state: JobState },
    #[error("job storage failed: {0}")]
    Store(String),
}
