//! Blobs in S3-compatible object storage (`--blobs s3://bucket/prefix`),
//! through the object_store crate. Credentials, region and endpoint come
//! from the standard AWS environment variables (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL`, and
//! `AWS_ALLOW_HTTP=true` for a local server); requests are path-style.
//! A put is atomic in S3 itself: readers see the old object or the new.
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, RetryConfig, WriteMultipart};

use super::bridge::Bridge;
use super::keys::check_key;
use super::{with_causes, BlobStore, StoreError};

/// Staged files at least this large go up in parts of this size, so an
/// upload never holds more than a few parts in memory.
const PART_BYTES: usize = 8 << 20;
/// Parts in flight at once.
const PARTS_IN_FLIGHT: usize = 2;
/// An object store that does not answer within this gives UNAVAILABLE
/// (long enough for a large model's weights).
const CALL_TIMEOUT: Duration = Duration::from_secs(600);

/// A failed request is retried (with backoff) this often, within this
/// long, then the call fails as unavailable; the client's defaults (10
/// times within 3 minutes) would hold a caller far past its deadline.
const RETRIES: usize = 3;
const RETRY_WITHIN: Duration = Duration::from_secs(20);

/// Written at start: proves the bucket answers and takes writes.
const WRITE_CHECK: &str = ".write-check";

pub struct ObjectBlobs {
    store: Arc<dyn ObjectStore>,
    /// The URL's path: every key lives under it.
    root: String,
    /// Local scratch space: staged uploads and fetched blobs.
    scratch: PathBuf,
    bridge: Bridge,
}

fn object_error(e: object_store::Error) -> StoreError {
    StoreError::Unavailable(format!("object storage: {}", with_causes(&e)))
}

impl ObjectBlobs {
    /// Opens `url` (`s3://bucket/prefix`) and checks the bucket answers and
    /// takes writes; `scratch` is a local directory for staging. `options`
    /// (object_store's S3 keys: `aws_endpoint`, `aws_allow_http`, ...)
    /// override the environment's.
    pub fn open(
        url: &str,
        scratch: &Path,
        options: &[(String, String)],
    ) -> Result<Self, StoreError> {
        let parsed = url.strip_prefix("s3://").ok_or_else(|| {
            StoreError::Config(format!("--blobs {url:?}: expected s3://bucket/prefix"))
        })?;
        let root = parsed
            .split_once('/')
            .map_or("", |(_, path)| path)
            .trim_matches('/')
            .to_string();
        let bridge = Bridge::new("object storage", CALL_TIMEOUT)?;
        let store = {
            let _inside = bridge.handle().enter();
            let mut builder = AmazonS3Builder::from_env()
                .with_url(url)
                .with_retry(RetryConfig {
                    max_retries: RETRIES,
                    retry_timeout: RETRY_WITHIN,
                    ..Default::default()
                });
            for (key, value) in options {
                let key = key.parse().map_err(object_error)?;
                builder = builder.with_config(key, value);
            }
            builder.build().map_err(object_error)?
        };
        std::fs::create_dir_all(scratch)?;
        let blobs = Self {
            store: Arc::new(store),
            root,
            scratch: scratch.to_path_buf(),
            bridge,
        };
        blobs.put_blob(WRITE_CHECK, b"ok")?;
        Ok(blobs)
    }

    fn path(&self, key: &str) -> Result<ObjectPath, StoreError> {
        // The start-up probe's key is ours; a dot-name no stored blob can
        // take (check_key refuses them).
        if key != WRITE_CHECK {
            check_key(key)?;
        }
        Ok(ObjectPath::from(self.full(key)))
    }

    fn full(&self, key: &str) -> String {
        if self.root.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.root)
        }
    }

    /// Runs `f` on the store, off the caller's thread.
    fn call<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<dyn ObjectStore>) -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        self.bridge.run(f(Arc::clone(&self.store)))
    }
}

/// Not found as None; any other failure as an error.
fn found<T>(r: object_store::Result<T>) -> Result<Option<T>, StoreError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(object_error(e)),
    }
}

/// Streams `file` up in parts.
async fn upload_in_parts(
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    mut file: std::fs::File,
) -> Result<(), StoreError> {
    let upload = store.put_multipart(&path).await.map_err(object_error)?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        writer
            .wait_for_capacity(PARTS_IN_FLIGHT)
            .await
            .map_err(object_error)?;
        writer.write(&buf[..n]);
    }
    writer.finish().await.map_err(object_error)?;
    Ok(())
}

impl BlobStore for ObjectBlobs {
    fn put_blob(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.path(key)?;
        let payload = PutPayload::from(bytes.to_vec());
        self.call(|store| async move {
            store.put(&path, payload).await.map_err(object_error)?;
            Ok(())
        })
    }

    fn staging_file(&self) -> Result<tempfile::NamedTempFile, StoreError> {
        Ok(tempfile::Builder::new()
            .prefix("upload-")
            .tempfile_in(&self.scratch)?)
    }

    fn put_blob_file(&self, key: &str, file: tempfile::NamedTempFile) -> Result<(), StoreError> {
        let path = self.path(key)?;
        let mut handle = file.reopen()?;
        let size = handle.metadata()?.len();
        if size < PART_BYTES as u64 {
            let mut bytes = Vec::with_capacity(size as usize);
            handle.read_to_end(&mut bytes)?;
            return self.put_blob(key, &bytes);
        }
        self.call(|store| upload_in_parts(store, path, handle))
    }

    fn get_blob(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.path(key)?;
        self.call(|store| async move {
            match found(store.get(&path).await)? {
                Some(got) => Ok(Some(got.bytes().await.map_err(object_error)?.to_vec())),
                None => Ok(None),
            }
        })
    }

    /// Fetches the blob into an unnamed local file (gone when closed), a
    /// chunk at a time.
    fn open_blob(&self, key: &str) -> Result<Option<std::fs::File>, StoreError> {
        let path = self.path(key)?;
        let mut local = tempfile::tempfile_in(&self.scratch)?;
        let mut into = local.try_clone()?;
        let fetched = self.call(|store| async move {
            let Some(got) = found(store.get(&path).await)? else {
                return Ok(false);
            };
            let mut chunks = got.into_stream();
            while let Some(chunk) = chunks.try_next().await.map_err(object_error)? {
                into.write_all(&chunk)?;
            }
            Ok(true)
        })?;
        if !fetched {
            return Ok(None);
        }
        local.rewind()?;
        Ok(Some(local))
    }

    fn blob_size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let path = self.path(key)?;
        self.call(|store| async move { Ok(found(store.head(&path).await)?.map(|m| m.size)) })
    }

    fn delete_blobs(&self, prefix: &str) -> Result<(), StoreError> {
        let path = self.path(prefix)?;
        self.call(|store| async move {
            let under: Vec<_> = store
                .list(Some(&path))
                .map_ok(|meta| meta.location)
                .try_collect()
                .await
                .map_err(object_error)?;
            for location in under.iter().chain(std::iter::once(&path)) {
                found(store.delete(location).await)?;
            }
            Ok(())
        })
    }

    fn list_blobs(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let path = self.path(prefix)?;
        let root = self.full("");
        self.call(|store| async move {
            let keys: Vec<String> = store
                .list(Some(&path))
                .map_ok(|meta| meta.location.to_string())
                .try_collect()
                .await
                .map_err(object_error)?;
            Ok(keys
                .into_iter()
                .filter_map(|k| k.strip_prefix(&root).map(str::to_string))
                .collect())
        })
    }
}
