//! The registry's in-memory catalog: every model name's versions, its
//! version labels (`stable`, `canary`, any name) and its serving settings,
//! kept in step with the records by the registry's own writes, so resolving
//! "latest" or a label costs a map lookup, not a scan of the registry.
//!
//! Labels and settings are records of their own (one per label, one per
//! name): moving a label is one atomic record write, and a label that names
//! a deleted version resolves to nothing rather than to another version.
use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use super::{from_json, Store, StoreError};

pub const LABELS: &str = "model_labels";
pub const SETTINGS: &str = "model_settings";

/// Which version of a model a caller means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    Latest,
    Version(u32),
    Label(String),
}

impl Selector {
    /// The selector of a request's `version` (0 = latest) and `label`.
    pub fn of(version: u32, label: &str) -> Self {
        match (version, label.is_empty()) {
            (0, true) => Self::Latest,
            (v, true) => Self::Version(v),
            (_, false) => Self::Label(label.to_string()),
        }
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Latest => write!(f, "latest"),
            Self::Version(v) => write!(f, "version {v}"),
            Self::Label(l) => write!(f, "label {l:?}"),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LabelRecord {
    pub name: String,
    pub label: String,
    pub version: u32,
}

/// Per-model serving settings; None = the server's default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSettings {
    pub max_batch: Option<u32>,
    pub max_delay_us: Option<u64>,
}

/// A label was to name a version that does not exist.
#[derive(Debug)]
pub struct NoSuchVersion(pub u32);

pub fn label_id(name: &str, label: &str) -> String {
    format!("{name}/{label}")
}

#[derive(Default)]
pub struct Catalog {
    versions: HashMap<String, BTreeSet<u32>>,
    labels: HashMap<String, HashMap<String, u32>>,
    settings: HashMap<String, ModelSettings>,
}

impl Catalog {
    /// Reads the catalog from the records (once, at start), given every
    /// registered (name, version).
    pub fn load(
        store: &dyn Store,
        versions: impl IntoIterator<Item = (String, u32)>,
    ) -> Result<Self, StoreError> {
        let mut catalog = Self::default();
        for (name, version) in versions {
            catalog.add_version(&name, version);
        }
        for (_, bytes) in store.list_records(LABELS, "")? {
            let l: LabelRecord = from_json(&bytes)?;
            catalog.set_label(&l.name, &l.label, Some(l.version));
        }
        for (name, bytes) in store.list_records(SETTINGS, "")? {
            catalog.settings.insert(name, from_json(&bytes)?);
        }
        Ok(catalog)
    }

    pub fn add_version(&mut self, name: &str, version: u32) {
        self.versions
            .entry(name.to_string())
            .or_default()
            .insert(version);
    }

    pub fn remove_versions(&mut self, name: &str, versions: &[u32]) {
        if let Some(set) = self.versions.get_mut(name) {
            for v in versions {
                set.remove(v);
            }
            if set.is_empty() {
                self.versions.remove(name);
            }
        }
    }

    pub fn set_label(&mut self, name: &str, label: &str, version: Option<u32>) {
        let labels = self.labels.entry(name.to_string()).or_default();
        match version {
            Some(v) => {
                labels.insert(label.to_string(), v);
            }
            None => {
                labels.remove(label);
            }
        }
    }

    pub fn set_settings(&mut self, name: &str, settings: ModelSettings) {
        self.settings.insert(name.to_string(), settings);
    }

    /// The version `selector` names, if that version exists.
    pub fn resolve(&self, name: &str, selector: &Selector) -> Option<u32> {
        let versions = self.versions.get(name)?;
        let v = match selector {
            Selector::Latest => return versions.last().copied(),
            Selector::Version(v) => *v,
            Selector::Label(l) => *self.labels.get(name)?.get(l)?,
        };
        versions.contains(&v).then_some(v)
    }

    /// The versions of `name`, oldest first.
    pub fn versions(&self, name: &str) -> Vec<u32> {
        self.versions
            .get(name)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The labels of `name` and the versions they name, by label.
    pub fn labels(&self, name: &str) -> Vec<(String, u32)> {
        let mut out: Vec<(String, u32)> = self
            .labels
            .get(name)
            .map(|m| m.iter().map(|(l, v)| (l.clone(), *v)).collect())
            .unwrap_or_default();
        out.sort();
        out
    }

    pub fn settings(&self, name: &str) -> ModelSettings {
        self.settings.get(name).copied().unwrap_or_default()
    }
}

impl Catalog {
    /// What `label` points at, whether or not that version still exists.
    pub(super) fn resolve_label_raw(&self, name: &str, label: &str) -> Option<u32> {
        self.labels.get(name)?.get(label).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_latest_versions_and_labels_of_existing_versions_only() {
        let mut c = Catalog::default();
        for v in [1, 2, 5] {
            c.add_version("m", v);
        }
        c.set_label("m", "stable", Some(2));
        c.set_label("m", "old", Some(1));
        assert_eq!(c.resolve("m", &Selector::Latest), Some(5));
        assert_eq!(c.resolve("m", &Selector::Version(2)), Some(2));
        assert_eq!(c.resolve("m", &Selector::Version(3)), None);
        assert_eq!(c.resolve("m", &Selector::Label("stable".into())), Some(2));
        assert_eq!(c.resolve("m", &Selector::Label("canary".into())), None);
        assert_eq!(c.resolve("other", &Selector::Latest), None);
        c.remove_versions("m", &[1, 5]);
        assert_eq!(c.resolve("m", &Selector::Latest), Some(2));
        assert_eq!(c.resolve("m", &Selector::Label("old".into())), None);
        c.set_label("m", "stable", None);
        assert_eq!(c.labels("m"), vec![("old".to_string(), 1)]);
        c.remove_versions("m", &[2]);
        assert_eq!(c.resolve("m", &Selector::Latest), None);
        assert!(c.versions("m").is_empty());
    }
}
