//! The registry's reads and writes through its catalog: version and label
//! lookups, moving a label, serving settings. The records stay the truth;
//! the catalog is read from them once and kept in step by these writes.
use super::catalog::{
    label_id, Catalog, LabelRecord, ModelSettings, NoSuchVersion, Selector, LABELS, SETTINGS,
};
use super::models::ModelRegistry;
use super::{to_json, StoreError};

/// Reads and writes through the catalog; the records stay the truth.
impl ModelRegistry {
    /// Runs `f` on the catalog, reading it from the records the first time.
    fn with_catalog<T>(&self, f: impl FnOnce(&Catalog) -> T) -> Result<T, StoreError> {
        {
            let guard = self.catalog.read().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = guard.as_ref() {
                return Ok(f(c));
            }
        }
        let mut guard = self.catalog.write().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            let versions = self.list()?.into_iter().map(|m| (m.name, m.version));
            *guard = Some(Catalog::load(&*self.store, versions)?);
        }
        Ok(f(guard.as_ref().expect("just loaded")))
    }

    /// Applies a change the records already hold (a catalog not yet read
    /// will read it).
    pub(super) fn update_catalog(&self, f: impl FnOnce(&mut Catalog)) {
        let mut guard = self.catalog.write().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = guard.as_mut() {
            f(c);
        }
    }

    /// Reads the catalog now, so that no request pays for it.
    pub fn load_catalog(&self) -> Result<(), StoreError> {
        self.with_catalog(|_| ())
    }

    /// The existing version `selector` names: a map lookup.
    pub fn resolve(&self, name: &str, selector: &Selector) -> Result<Option<u32>, StoreError> {
        self.with_catalog(|c| c.resolve(name, selector))
    }

    pub fn versions(&self, name: &str) -> Result<Vec<u32>, StoreError> {
        self.with_catalog(|c| c.versions(name))
    }

    pub fn labels(&self, name: &str) -> Result<Vec<(String, u32)>, StoreError> {
        self.with_catalog(|c| c.labels(name))
    }

    pub fn settings(&self, name: &str) -> Result<ModelSettings, StoreError> {
        self.with_catalog(|c| c.settings(name))
    }

    /// Points `label` of `name` at `version` (None removes it) in one record
    /// write; returns the version it named before. Refuses a version that
    /// does not exist.
    pub fn set_label(
        &self,
        name: &str,
        label: &str,
        version: Option<u32>,
    ) -> Result<Result<Option<u32>, NoSuchVersion>, StoreError> {
        self.load_catalog()?;
        let mut guard = self.catalog.write().unwrap_or_else(|e| e.into_inner());
        let catalog = guard.as_mut().expect("loaded above");
        let before = catalog.resolve_label_raw(name, label);
        if let Some(v) = version {
            if catalog.resolve(name, &Selector::Version(v)).is_none() {
                return Ok(Err(NoSuchVersion(v)));
            }
            let record = LabelRecord {
                name: name.into(),
                label: label.into(),
                version: v,
            };
            self.store
                .put_record(LABELS, &label_id(name, label), &to_json(&record))?;
        } else {
            self.store.delete_record(LABELS, &label_id(name, label))?;
        }
        catalog.set_label(name, label, version);
        Ok(Ok(before))
    }

    pub fn set_settings(&self, name: &str, settings: ModelSettings) -> Result<(), StoreError> {
        self.load_catalog()?;
        let mut guard = self.catalog.write().unwrap_or_else(|e| e.into_inner());
        self.store.put_record(SETTINGS, name, &to_json(&settings))?;
        guard
            .as_mut()
            .expect("loaded above")
            .set_settings(name, settings);
        Ok(())
    }
}
