//! A store made of two backends, one for blobs and one for records: the
//! cluster stores (S3-compatible blobs, PostgreSQL records).
use std::sync::{Arc, Weak};

use super::{BlobStore, RecordStore, RecordWrite, StoreError};

pub struct SplitStore {
    blobs: Box<dyn BlobStore>,
    records: Box<dyn RecordStore>,
    // Declared last: dead once both backends have dropped.
    open: Arc<()>,
}

impl SplitStore {
    pub fn new(blobs: Box<dyn BlobStore>, records: Box<dyn RecordStore>) -> Self {
        Self {
            blobs,
            records,
            open: Arc::new(()),
        }
    }

    /// Dead once this store and its backends have dropped.
    pub fn closed_signal(&self) -> Weak<()> {
        Arc::downgrade(&self.open)
    }
}

impl BlobStore for SplitStore {
    fn put_blob(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.blobs.put_blob(key, bytes)
    }

    fn staging_file(&self) -> Result<tempfile::NamedTempFile, StoreError> {
        self.blobs.staging_file()
    }

    fn put_blob_file(&self, key: &str, file: tempfile::NamedTempFile) -> Result<(), StoreError> {
        self.blobs.put_blob_file(key, file)
    }

    fn get_blob(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.blobs.get_blob(key)
    }

    fn open_blob(&self, key: &str) -> Result<Option<std::fs::File>, StoreError> {
        self.blobs.open_blob(key)
    }

    fn blob_size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        self.blobs.blob_size(key)
    }

    fn delete_blobs(&self, prefix: &str) -> Result<(), StoreError> {
        self.blobs.delete_blobs(prefix)
    }

    fn list_blobs(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.blobs.list_blobs(prefix)
    }
}

impl RecordStore for SplitStore {
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
