//! Moving from one replica to many: a copy of a single-node data dir into
//! the cluster stores (`lstmd migrate --from-data-dir`). Blobs go first,
//! streamed through a staged file, and every record last, in one
//! transaction: a copy cut short leaves no record naming a missing blob,
//! and running it again finishes it.
use super::local::LocalStore;
use super::{BlobStore, RecordStore, RecordWrite, Store, StoreError};

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Copied {
    pub records: usize,
    pub blobs: usize,
    pub bytes: u64,
}

/// Copies everything in `from` into `to`, which must hold no record yet
/// (a copy never merges two registries).
pub fn copy_data_dir(from: &LocalStore, to: &dyn Store) -> Result<Copied, StoreError> {
    for table in to.tables()? {
        if !to.list_records(&table, "")?.is_empty() {
            return Err(StoreError::Database(format!(
                "the destination already holds records (table {table:?}); copy into empty stores"
            )));
        }
    }
    let mut copied = Copied::default();
    for folder in from.blob_folders()? {
        for key in from.list_blobs(&folder)? {
            let Some(mut source) = from.open_blob(&key)? else {
                continue; // deleted while we looked: nothing names it
            };
            let mut staged = to.staging_file()?;
            copied.bytes += std::io::copy(&mut source, staged.as_file_mut())?;
            to.put_blob_file(&key, staged)?;
            copied.blobs += 1;
        }
    }
    let mut rows = Vec::new();
    for table in from.tables()? {
        for (id, json) in from.list_records(&table, "")? {
            rows.push((table.clone(), id, json));
        }
    }
    let writes: Vec<RecordWrite> = rows
        .iter()
        .map(|(table, id, json)| RecordWrite {
            table,
            id,
            json: Some(json),
        })
        .collect();
    to.write_records(&writes, true)?;
    copied.records = writes.len();
    Ok(copied)
}
