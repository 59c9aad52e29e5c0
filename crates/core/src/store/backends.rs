//! Which store the server runs on: the data dir alone (the default), or
//! the cluster stores, PostgreSQL for records and S3-compatible object
//! storage for blobs, named by URL.
use std::path::PathBuf;
use std::sync::{Arc, Weak};

use super::local::LocalStore;
use super::object::ObjectBlobs;
use super::postgres::PgRecords;
use super::split::SplitStore;
use super::{Store, StoreError};

pub struct StoreUrls {
    /// The data dir: everything by default; local scratch space (staged
    /// uploads, fetched blobs) with the cluster stores.
    pub data_dir: PathBuf,
    /// `postgres://...`, or None for the data dir's embedded database.
    pub records: Option<String>,
    /// CA certificates (PEM) to verify the database's TLS certificate with,
    /// beside the system's.
    pub records_ca_file: Option<PathBuf>,
    /// `s3://bucket/prefix`, or None for files in the data dir.
    pub blobs: Option<String>,
    /// Settings of the S3 client over the AWS_* environment's (object_store
    /// keys: `aws_endpoint`, `aws_allow_http`).
    pub blob_options: Vec<(String, String)>,
}

pub struct OpenStore {
    pub store: Arc<dyn Store>,
    /// Dead once every part has let go of the store.
    pub closed: Weak<()>,
}

pub fn open(urls: &StoreUrls) -> Result<OpenStore, StoreError> {
    match (&urls.records, &urls.blobs) {
        (None, None) => {
            let local = LocalStore::open(&urls.data_dir)?;
            let closed = local.closed_signal();
            Ok(OpenStore {
                store: Arc::new(local),
                closed,
            })
        }
        (Some(records), Some(blobs)) => {
            if !records.starts_with("postgres://") && !records.starts_with("postgresql://") {
                return Err(StoreError::Config(format!(
                    "--records {records:?}: expected postgres://user:password@host:port/database"
                )));
            }
            let records_store = PgRecords::open(records, urls.records_ca_file.as_deref())?;
            records_store.hold_sole_replica_lock(records)?;
            let blobs =
                ObjectBlobs::open(blobs, &urls.data_dir.join("scratch"), &urls.blob_options)?;
            let split = SplitStore::new(Box::new(blobs), Box::new(records_store));
            let closed = split.closed_signal();
            Ok(OpenStore {
                store: Arc::new(split),
                closed,
            })
        }
        _ => Err(StoreError::Config(
            "--records and --blobs go together: a database for records needs object storage \
             for blobs (and the data dir default uses neither)"
                .into(),
        )),
    }
}
