//! Durable state behind two small traits, one for blobs (weights, token
//! streams) and one for JSON records (datasets, models, jobs), so that
//! object storage and a database can replace the local defaults
//! (backends.rs chooses).
mod atomic;
pub mod backends;
mod bridge;
pub mod catalog;
pub mod copy;
mod keys;
pub mod leftovers;
pub mod local;
mod migrations;
pub mod models;
pub mod object;
pub mod postgres;
pub mod records;
mod registry_catalog;
mod split;

pub use backends::{OpenStore, StoreUrls};
pub use catalog::{ModelSettings, Selector};
pub use local::LocalStore;
pub use models::{Listing, ModelMetadata, ModelRegistry};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    #[error("refusing unsafe storage key {0:?}")]
    BadKey(String),
    #[error("record database failed: {0}")]
    Database(String),
    /// A store setting (a URL, a CA file) that cannot work.
    #[error("bad store setting: {0}")]
    Config(String),
    /// A database or object store that cannot be reached or does not
    /// answer: worth a retry once it is back.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

/// Whole-object storage. Puts are atomic: readers see the old bytes or all
/// the new ones. A stored blob is never rewritten in place (a put replaces
/// it whole, by rename for local files), so a file opened or memory-mapped
/// with `open_blob` keeps its bytes even if the blob is replaced or deleted.
pub trait BlobStore: Send + Sync {
    fn put_blob(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError>;
    /// A new, empty local file to stage a large blob in (an upload, a token
    /// stream). It is removed when dropped, unless handed to
    /// `put_blob_file`.
    fn staging_file(&self) -> Result<tempfile::NamedTempFile, StoreError>;
    /// Stores a staged file's bytes under `key` atomically, without reading
    /// them into memory (the local store fsyncs and renames it into place;
    /// object storage would stream it up).
    fn put_blob_file(&self, key: &str, file: tempfile::NamedTempFile) -> Result<(), StoreError>;
    fn get_blob(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// The blob as a readable local file, for streaming or memory-mapping
    /// (object storage would fetch it into a local cache first).
    fn open_blob(&self, key: &str) -> Result<Option<std::fs::File>, StoreError>;
    fn blob_size(&self, key: &str) -> Result<Option<u64>, StoreError>;
    /// Deletes every blob under `prefix` (a key or a folder of keys), and
    /// folders the deletion leaves empty.
    fn delete_blobs(&self, prefix: &str) -> Result<(), StoreError>;
    /// The keys of every blob under the folder `prefix`, in no set order.
    fn list_blobs(&self, prefix: &str) -> Result<Vec<String>, StoreError>;
}

/// One change to a record: `json` None deletes it.
pub struct RecordWrite<'a> {
    pub table: &'a str,
    pub id: &'a str,
    pub json: Option<&'a [u8]>,
}

/// JSON records by table and id, in id order. Writes are transactions: all
/// of a batch or none; `durable` ones are on disk when the call returns,
/// others at the next durable write.
pub trait RecordStore: Send + Sync {
    fn write_records(&self, writes: &[RecordWrite], durable: bool) -> Result<(), StoreError>;
    fn get_record(&self, table: &str, id: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Records whose id starts with `prefix`, in id order.
    fn list_records(&self, table: &str, prefix: &str)
        -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// The names of the tables that hold records (for a copy of them all).
    fn tables(&self) -> Result<Vec<String>, StoreError>;

    fn put_record(&self, table: &str, id: &str, json: &[u8]) -> Result<(), StoreError> {
        self.write_records(
            &[RecordWrite {
                table,
                id,
                json: Some(json),
            }],
            true,
        )
    }

    fn delete_record(&self, table: &str, id: &str) -> Result<(), StoreError> {
        self.write_records(
            &[RecordWrite {
                table,
                id,
                json: None,
            }],
            true,
        )
    }
}

/// Both halves of the store, as the rest of the program sees them.
pub trait Store: BlobStore + RecordStore {}
impl<T: BlobStore + RecordStore> Store for T {}

pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec_pretty(value).expect("records serialize")
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// An error and its causes, outermost first ("error performing TLS
/// handshake: invalid peer certificate: UnknownIssuer").
pub(crate) fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let next = c.to_string();
        if !text.ends_with(&next) {
            text = format!("{text}: {next}");
        }
        cause = c.source();
    }
    text
}
