//! Jobs: queue, worker pool, records, progress fan-out.
pub mod log;
pub mod manager;
pub mod record;

pub use manager::{JobManager, JobsConfig};
pub use record::{EventKind, JobEvent, JobRecord, JobState, ModelRef, TrainingRequest};

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("job {0:?} not found")]
    NotFound(String),
    #[error("the job queue is full ({0} jobs waiting); retry later")]
    QueueFull(usize),
    #[error("the server is shutting down")]
    ShuttingDown,
}
