//! The embedded default store, all in one data directory: blobs as files
//! under `blobs/`, records in the embedded database `records.redb`, and
//! files being staged (uploads in progress) under `staging/`.
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use super::atomic::{sync_dir, write_atomic};
use super::keys::check_key;
use super::records::RedbRecords;
use super::{BlobStore, RecordStore, RecordWrite, StoreError};

pub struct LocalStore {
    root: PathBuf,
    records: RedbRecords,
    // Declared last, so it drops after the database has closed its file:
    // a `Weak` of it tells when the data dir can be opened again.
    open: Arc<()>,
}

/// Where uploads are staged: inside the data directory, so that committing
/// one is a rename on the same file system.
const STAGING: &str = "staging";

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
        remove_partial_writes(&root.join("blobs"))?;
        write_atomic(&root.join(".write-check"), b"ok")?;
        Ok(Self {
            root: root.to_path_buf(),
            records: RedbRecords::open(&root.join("records.redb"))?,
            open: Arc::new(()),
        })
    }

    /// Dead once this store has dropped and closed the record database
    /// (the `Arc`'s own count reaches zero before its contents drop).
    pub fn closed_signal(&self) -> Weak<()> {
        Arc::downgrade(&self.open)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The top-level folders of blobs (`models`, `datasets`, ...).
    pub fn blob_folders(&self) -> Result<Vec<String>, StoreError> {
        let mut folders = Vec::new();
        for entry in std::fs::read_dir(self.root.join("blobs"))?.flatten() {
            if entry.file_type()?.is_dir() {
                folders.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(folders)
    }

    fn blob_path(&self, key: &str) -> Result<PathBuf, StoreError> {
        check_key(key)?;
        Ok(self.root.join("blobs").join(key))
    }
}

/// Removes, under `dir`, the `.tmp-*` files of writes a crash cut short
/// (an atomic write renames its temporary into place only when whole) and
/// the folders left empty. Returns whether `dir` itself is now empty.
fn remove_partial_writes(dir: &Path) -> Result<bool, StoreError> {
    let mut empty = true;
    for entry in std::fs::read_dir(dir)?.flatten() {
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            if remove_partial_writes(&path)? {
                std::fs::remove_dir(&path)?;
            } else {
                empty = false;
            }
        } else if entry.file_name().to_string_lossy().starts_with(".tmp-") {
            tracing::info!(path = %path.display(), "removed a partial write left by an earlier run");
            std::fs::remove_file(&path)?;
        } else {
            empty = false;
        }
    }
    Ok(empty)
}

/// Every file under `dir`, as keys relative to `root`.
fn walk_keys(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<(), StoreError> {
    let Some(entries) = not_found_as_none(std::fs::read_dir(dir))? else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            walk_keys(root, &path, out)?;
        } else if let Ok(rel) = path.strip_prefix(root) {
            out.push(rel.to_string_lossy().into_owned());
        }
    }
    Ok(())
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
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => std::fs::remove_file(&path)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            r => r?,
        }
        // Folders emptied by the delete go too (`models/NAME` after its last
        // version), up to but not including the top-level ones.
        let top = self.root.join("blobs");
        let mut dir = path.parent();
        while let Some(d) = dir.filter(|d| d.parent().is_some_and(|p| p != top) && *d != top) {
            if std::fs::remove_dir(d).is_err() {
                break; // not empty (or gone): stop here
            }
            dir = d.parent();
        }
        Ok(())
    }

    fn list_blobs(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        let top = self.root.join("blobs");
        walk_keys(&top, &self.blob_path(prefix)?, &mut keys)?;
        Ok(keys)
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

    fn tables(&self) -> Result<Vec<String>, StoreError> {
        self.records.tables()
    }
}
