//! The model registry: each version of a model name is a safetensors blob,
//! a metadata.json blob (what PyTorch-side tools read) and a record (the
//! commit point: a version exists once its record is written).
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::{from_json, to_json, Store, StoreError};

const TABLE: &str = "models";

/// The registry's own view of a model record; the rest of the metadata is
/// opaque JSON owned by the layers above.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelMetadata {
    pub name: String,
    pub version: u32,
    #[serde(flatten)]
    pub rest: serde_json::Map<String, serde_json::Value>,
}

pub fn weights_key(name: &str, version: u32) -> String {
    format!("models/{name}/{version}/model.safetensors")
}

pub fn metadata_key(name: &str, version: u32) -> String {
    format!("models/{name}/{version}/metadata.json")
}

fn record_id(name: &str, version: u32) -> String {
    format!("{name}@{version:08}")
}

pub struct ModelRegistry {
    store: Arc<dyn Store>,
    // Serialises version allocation within this process.
    allocate: Mutex<()>,
}

impl ModelRegistry {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            allocate: Mutex::new(()),
        }
    }

    /// Every registered version, oldest first per name.
    pub fn list(&self) -> Result<Vec<ModelMetadata>, StoreError> {
        self.store
            .list_records(TABLE, "")?
            .iter()
            .map(|(_, b)| from_json(b))
            .collect()
    }

    /// One version, or the latest when `version` is None.
    pub fn get(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<ModelMetadata>, StoreError> {
        match version {
            Some(v) => self
                .store
                .get_record(TABLE, &record_id(name, v))?
                .map(|b| from_json(&b))
                .transpose(),
            None => Ok(self
                .list()?
                .into_iter()
                .filter(|m| m.name == name)
                .max_by_key(|m| m.version)),
        }
    }

    pub fn weights(&self, name: &str, version: u32) -> Result<Option<Vec<u8>>, StoreError> {
        self.store.get_blob(&weights_key(name, version))
    }

    /// The metadata.json bytes of one version, as registered.
    pub fn metadata_json(&self, name: &str, version: u32) -> Result<Option<Vec<u8>>, StoreError> {
        self.store.get_blob(&metadata_key(name, version))
    }

    /// Deletes one version, or every version when `version` is None; returns
    /// the versions deleted. Records go first (the model stops existing),
    /// then the files.
    pub fn delete(&self, name: &str, version: Option<u32>) -> Result<Vec<u32>, StoreError> {
        let _guard = self.allocate.lock().unwrap_or_else(|e| e.into_inner());
        let versions: Vec<u32> = self
            .list()?
            .iter()
            .filter(|m| m.name == name && version.is_none_or(|v| v == m.version))
            .map(|m| m.version)
            .collect();
        for v in &versions {
            self.store.delete_record(TABLE, &record_id(name, *v))?;
            self.store.delete_blobs(&format!("models/{name}/{v}"))?;
        }
        Ok(versions)
    }

    pub fn weights_size(&self, name: &str, version: u32) -> Result<Option<u64>, StoreError> {
        self.store.blob_size(&weights_key(name, version))
    }

    /// Registers the next version of `name`: weights first, then metadata,
    /// then the record, so a crash at any point leaves no half model listed.
    pub fn register(
        &self,
        name: &str,
        rest: serde_json::Map<String, serde_json::Value>,
        weights: &[u8],
    ) -> Result<ModelMetadata, StoreError> {
        let _guard = self.allocate.lock().unwrap_or_else(|e| e.into_inner());
        let version = self
            .list()?
            .iter()
            .filter(|m| m.name == name)
            .map(|m| m.version)
            .max()
            .unwrap_or(0)
            + 1;
        let meta = ModelMetadata {
            name: name.to_string(),
            version,
            rest,
        };
        let json = to_json(&meta);
        self.store.put_blob(&weights_key(name, version), weights)?;
        self.store.put_blob(&metadata_key(name, version), &json)?;
        self.store
            .put_record(TABLE, &record_id(name, version), &json)?;
        Ok(meta)
    }
}
