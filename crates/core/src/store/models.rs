//! The model registry: each version of a model name is a safetensors blob,
//! a metadata.json blob (what PyTorch-side tools read) and a record (the
//! commit point: a version exists once its record is written). A (name,
//! version) pair names one set of weights for ever: the last version handed
//! out per name is a record of its own, kept across deletes and restarts,
//! so a number is never given twice.
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};

use super::catalog::{Catalog, Selector};
use super::{from_json, to_json, Store, StoreError};

const TABLE: &str = "models";
/// Per name, the last version number handed out (deleted ones included).
const VERSIONS: &str = "model_versions";

#[derive(Serialize, Deserialize)]
struct LastVersion {
    last: u32,
}

/// The registry's own view of a model record; the rest of the metadata is
/// opaque JSON owned by the layers above.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelMetadata {
    pub name: String,
    pub version: u32,
    #[serde(flatten)]
    pub rest: serde_json::Map<String, serde_json::Value>,
}

/// A registered version as listings show it: its record and the size of
/// its weights.
pub struct Listing {
    pub metadata: ModelMetadata,
    pub weights_bytes: u64,
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
    pub(super) store: Arc<dyn Store>,
    // Serialises version allocation within this process.
    allocate: Mutex<()>,
    // Versions, labels and settings in memory (read on first use).
    pub(super) catalog: RwLock<Option<Catalog>>,
}

impl ModelRegistry {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            allocate: Mutex::new(()),
            catalog: RwLock::new(None),
        }
    }

    /// Every version of one name, oldest first.
    fn versions_of(&self, name: &str) -> Result<Vec<ModelMetadata>, StoreError> {
        self.store
            .list_records(TABLE, &format!("{name}@"))?
            .iter()
            .map(|(_, b)| from_json(b))
            .collect()
    }

    /// The last version number handed out for `name` (0: none yet). Data
    /// dirs from before the counter have only their records to go by.
    fn last_version(&self, name: &str) -> Result<u32, StoreError> {
        let counted = match self.store.get_record(VERSIONS, name)? {
            Some(b) => from_json::<LastVersion>(&b)?.last,
            None => 0,
        };
        let registered = self.versions_of(name)?.iter().map(|m| m.version).max();
        Ok(counted.max(registered.unwrap_or(0)))
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
            None => match self.resolve(name, &Selector::Latest)? {
                Some(v) => self.get(name, Some(v)),
                None => Ok(None),
            },
        }
    }

    /// The latest version of every name, by name.
    pub fn latest_of_each(&self) -> Result<Vec<Listing>, StoreError> {
        let mut latest: std::collections::BTreeMap<String, ModelMetadata> = Default::default();
        for m in self.list()? {
            match latest.get(&m.name) {
                Some(l) if l.version >= m.version => {}
                _ => {
                    latest.insert(m.name.clone(), m);
                }
            }
        }
        latest.into_values().map(|m| self.listing_of(m)).collect()
    }

    /// One version (the latest when `version` is None) with its size.
    pub fn listing(&self, name: &str, version: Option<u32>) -> Result<Option<Listing>, StoreError> {
        self.get(name, version)?
            .map(|m| self.listing_of(m))
            .transpose()
    }

    fn listing_of(&self, metadata: ModelMetadata) -> Result<Listing, StoreError> {
        let weights_bytes = self
            .weights_size(&metadata.name, metadata.version)?
            .unwrap_or(0);
        Ok(Listing {
            metadata,
            weights_bytes,
        })
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
        if versions.is_empty() {
            return Ok(versions);
        }
        // The counter stays: the deleted numbers are never handed out again.
        let last = self.last_version(name)?;
        self.store
            .put_record(VERSIONS, name, &to_json(&LastVersion { last }))?;
        for v in &versions {
            self.store.delete_record(TABLE, &record_id(name, *v))?;
            self.store.delete_blobs(&format!("models/{name}/{v}"))?;
        }
        self.update_catalog(|c| c.remove_versions(name, &versions));
        if self.versions_of(name)?.is_empty() {
            // No version left: no empty folder either.
            self.store.delete_blobs(&format!("models/{name}"))?;
        }
        Ok(versions)
    }

    /// Deletes version folders that have files but no record (a crash
    /// between the files and the record); run at startup, before any write.
    pub fn remove_orphans(&self) -> Result<usize, StoreError> {
        super::leftovers::remove_unrecorded(&*self.store, "models", TABLE, |parts| match parts {
            [name, version, _file] => {
                let v: u32 = version.parse().ok()?;
                Some((record_id(name, v), format!("models/{name}/{version}")))
            }
            _ => None,
        })
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
        let version = self.last_version(name)? + 1;
        // Taken before anything is written: a crash from here on leaves a
        // gap, never a number that could name two models.
        self.store
            .put_record(VERSIONS, name, &to_json(&LastVersion { last: version }))?;
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
        self.update_catalog(|c| c.add_version(name, version));
        Ok(meta)
    }
}
