//! Blobs that no record names: what a crash between writing a blob and
//! committing its record leaves (a model version's files without its
//! record, a dataset's tokens without its record). Each owner of a record
//! table says how its blob keys map to record ids; whatever maps to no
//! record is deleted at startup, before anything else writes.
use super::{Store, StoreError};

/// Deletes the blob folders under `prefix` whose record is missing.
/// `record_id` gets the key's parts after `prefix` (`models/a/3/x` ->
/// `["a", "3", "x"]`) and answers the record id and the folder of the
/// owner's blobs, or None for a key it does not know (deleted too).
pub fn remove_unrecorded(
    store: &dyn Store,
    prefix: &str,
    table: &str,
    record_id: impl Fn(&[&str]) -> Option<(String, String)>,
) -> Result<usize, StoreError> {
    let mut removed = 0;
    let mut seen = std::collections::BTreeSet::new();
    for key in store.list_blobs(prefix)? {
        let rest = key
            .strip_prefix(prefix)
            .map(|r| r.trim_start_matches('/'))
            .unwrap_or("");
        let parts: Vec<&str> = rest.split('/').collect();
        let (id, folder) = match record_id(&parts) {
            Some((id, folder)) => (Some(id), folder),
            None => (None, key.clone()),
        };
        if !seen.insert(folder.clone()) {
            continue;
        }
        let recorded = match &id {
            Some(id) => store.get_record(table, id)?.is_some(),
            None => false,
        };
        if !recorded {
            tracing::info!(blobs = %folder, "removing blobs no record names (left by a crash)");
            store.delete_blobs(&folder)?;
            removed += 1;
        }
    }
    Ok(removed)
}
