//! The embedded default store, all in one data directory: blobs as files
//! under `blobs/`, records in the embedded database `records.redb`, and
//! files being staged (uploads in progress) under `staging/`.
use std::path::{Path, PathBuf};

use super::atomic::{sync_dir, write_atomic};
use super::records::RedbRecords;
use super::{BlobStore, RecordStore, RecordWrite, StoreError};

pub struct LocalStore {
    root: PathBuf,
    records: RedbRecords,
}

/// Where uploads are staged: inside the data directory, so that committing
/// one is a rename on the same file system.
const STAGING: &str = "staging";

/// Keys and ids are made of validated names; refuse anything else so a key
/// can never escape the data directory.
fn check_key(key: &str) -> Result<(), StoreError> {
    let ok = !key.is_empty()
        && key.split('/').all(|part| {
            !part.is_empty()
                && !part.starts_with('.')
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
        });
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadKey(key.to_string()))
    }
}

impl LocalStore {
    /// Opens (creating if needed) the data directory and checks it is
    /// writable. Staged files left by a crash (an upload cut short by
    /// `kill -9`) are removed: nothing refers to them.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(root.join("blobs"))?;
        let staging = root.join(STAGING);
        if let Some(entries) = not_found_as_none(std::fs::read_dir(&staging))? {
            for entry in entries.flatten() {
                let path = entry.path();
                match std::fs::remove_file(&path) {
                    Ok(()) => {
                        tracing::info!(path = %path.display(), "removed a staged file left by an earlier run")
                    }
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "cannot remove a stale staged file")
                    }
                }
            }
        }
        std::fs::create_dir_all(&staging)?;
        write_atomic(&root.join(".write-check"), b"ok")?;
        Ok(Self {
            root: root.to_path_buf(),
            records: RedbRecords::open(&root.join("records.redb"))?,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob_path(&self, key: &str) -> Result<PathBuf, StoreError> {
        check_key(key)?;
        Ok(self.root.join("blobs").join(key))
    }
}

fn not_found_as_none<T>(r: std::io::Result<T>) -> Result<Option<T>, StoreError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

impl BlobStore for LocalStore {
    fn put_blob(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        Ok(write_atomic(&self.blob_path(key)?, bytes)?)
    }

    fn staging_file(&self) -> Result<tempfile::NamedTempFile, StoreError> {
        Ok(tempfile::Builder::new()
            .prefix("upload-")
            .tempfile_in(self.root.join(STAGING))?)
    }

    fn put_blob_file(&self, key: &str, file: tempfile::NamedTempFile) -> Result<(), StoreError> {
        let path = self.blob_path(key)?;
        let dir = path
            .parent()
            .ok_or_else(|| StoreError::BadKey(key.to_string()))?;
        std::fs::create_dir_all(dir)?;
        file.as_file().sync_all()?;
        file.persist(&path).map_err(|e| e.error)?;
        sync_dir(dir)?;
        Ok(())
    }

    fn get_blob(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        not_found_as_none(std::fs::read(self.blob_path(key)?))
    }

    fn open_blob(&self, key: &str) -> Result<Option<std::fs::File>, StoreError> {
        not_found_as_none(std::fs::File::open(self.blob_path(key)?))
    }

    fn blob_size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        not_found_as_none(std::fs::metadata(self.blob_path(key)?).map(|m| m.len()))
    }

    fn delete_blobs(&self, prefix: &str) -> Result<(), StoreError> {
        let path = self.blob_path(prefix)?;
        match std::fs::remove_dir_all(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
                Ok(std::fs::remove_file(path)?)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            r => Ok(r?),
        }
    }
}

impl RecordStore for LocalStore {
    fn write_records(&self, writes: &[RecordWrite], durable: bool) -> Result<(), StoreError> {
        self.records.write_records(writes, durable)
    }

    fn get_record(&self, table: &str, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.records.get_record(table, id)
    }

    fn list_records(
        &self,
        table: &str,
        prefix: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.records.list_records(table, prefix)
    }
}
