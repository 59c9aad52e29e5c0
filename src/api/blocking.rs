//! Store and file work run off the tokio executor, for the handlers.
use tonic::Status;

use super::status::IntoStatus;

/// Runs `f` on tokio's blocking pool: its error as its status, a panic of
/// the task as INTERNAL.
pub async fn blocking<T, E>(f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, Status>
where
    T: Send + 'static,
    E: IntoStatus + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("worker task failed: {e}")))?
        .map_err(IntoStatus::into_status)
}
