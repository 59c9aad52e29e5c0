//! Where a job's checkpoint lives, and which checkpoints a restart keeps.
use std::collections::HashMap;

use super::record::{JobRecord, JobState};
use crate::store::{Store, StoreError};

/// The folder of one job's checkpoint blobs.
pub fn checkpoint_folder(job_id: &str) -> String {
    format!("checkpoints/{job_id}")
}

pub fn checkpoint_key(job_id: &str) -> String {
    format!("{}/checkpoint.safetensors", checkpoint_folder(job_id))
}

/// Deletes the checkpoints nothing can use any more: those of jobs with no
/// record, of jobs that succeeded (a crash between registering the model
/// and deleting the checkpoint), and trials' kept checkpoints once their
/// search has ended. Failed and cancelled jobs keep theirs, as their
/// `error` says.
pub fn remove_stale_checkpoints(
    store: &dyn Store,
    jobs: &HashMap<String, &JobRecord>,
) -> Result<usize, StoreError> {
    let ended = |id: &str| jobs.get(id).is_none_or(|r| r.state.is_terminal());
    let stale = |id: &str| match jobs.get(id) {
        None => true,
        Some(r) if r.request.keep_checkpoint => r.request.parent.as_deref().is_none_or(ended),
        Some(r) => r.state == JobState::Succeeded,
    };
    let mut folders = std::collections::BTreeSet::new();
    for key in store.list_blobs("checkpoints")? {
        let rest = key.strip_prefix("checkpoints/").unwrap_or("");
        match rest.split('/').next() {
            Some(id) if !id.is_empty() => folders.insert(id.to_string()),
            _ => continue,
        };
    }
    let mut removed = 0;
    for id in folders.iter().filter(|id| stale(id)) {
        tracing::info!(job = %id, "removing a checkpoint no job can resume from");
        store.delete_blobs(&checkpoint_folder(id))?;
        removed += 1;
    }
    Ok(removed)
}
