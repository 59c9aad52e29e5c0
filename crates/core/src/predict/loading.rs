//! How a registered version becomes a loaded model: resolved in the
//! registry's catalog, read and built once on the blocking pool, run once,
//! cached, and given its batcher.
use std::sync::Arc;
use std::time::Duration;

use candle_core::Device;

use super::batcher::{Batcher, LiveSettings};
use super::stats::ModelStats;
use super::{LoadedModel, PredictError, Predictor};
use crate::backend::{backend_for, Backend};
use crate::nn::metadata::ModelInfo;
use crate::nn::{Network, NnError};
use crate::store::{ModelRegistry, ModelSettings, Selector};

impl Predictor {
    /// The loaded model for `name` at `version` (latest when None).
    pub async fn model(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<Arc<LoadedModel>, PredictError> {
        let selector = version.map_or(Selector::Latest, Selector::Version);
        self.model_by(name, &selector).await
    }

    /// The loaded model `selector` names. A loaded model costs a map lookup
    /// in the catalog and one in the cache; a model not loaded yet is read,
    /// built and run once on the blocking pool (concurrent first requests
    /// wait for the same load). Warm-up: a new latest version takes
    /// `latest` traffic once loaded and run once; until then the newest
    /// loaded version answers it while the new one loads in the
    /// background. A pinned version, or a first one, is waited for.
    pub async fn model_by(
        &self,
        name: &str,
        selector: &Selector,
    ) -> Result<Arc<LoadedModel>, PredictError> {
        let label = || match selector {
            Selector::Latest => format!("{name:?}"),
            other => format!("{name:?} {other}"),
        };
        if crate::error::check_name("model", name).is_err() {
            return Err(PredictError::NotFound(label()));
        }
        let version = self
            .registry
            .resolve(name, selector)?
            .ok_or_else(|| PredictError::NotFound(label()))?;
        let key = (name.to_string(), version);
        if let Some(model) = self.cache.peek(&key) {
            metrics::counter!("lstmd_model_cache_hits_total").increment(1);
            return Ok(model);
        }
        if *selector == Selector::Latest {
            if let Some(ready) = self.stand_in(name, version) {
                metrics::counter!("lstmd_model_cache_hits_total").increment(1);
                return Ok(ready);
            }
        }
        let stats = self.stats.of(name, version);
        let (model, hit) = self
            .cache
            .get_or_load(key, || self.load_and_start(name, version, stats))
            .await?;
        self.count_cache(hit);
        Ok(model)
    }

    /// The newest loaded version of `name` below `version`, with `version`
    /// set loading in the background (once at a time); None when no older
    /// version is loaded.
    fn stand_in(&self, name: &str, version: u32) -> Option<Arc<LoadedModel>> {
        let ready = (self.cache.values_of(name).into_iter())
            .filter(|m| m.version < version)
            .max_by_key(|m| m.version)?;
        let me = self.this.upgrade()?;
        let key = (name.to_string(), version);
        let mut warming = self.warming.lock().unwrap_or_else(|e| e.into_inner());
        if warming.insert(key.clone()) {
            tokio::spawn(async move {
                let loaded = me.model_by(&key.0, &Selector::Version(key.1)).await;
                if let Err(e) = loaded {
                    tracing::warn!(model = %key.0, version = key.1, error = %e, "model load failed; the older version keeps serving");
                }
                me.warming
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&key);
            });
        }
        Some(ready)
    }

    /// Loads a model on the blocking pool (see [`load`]) and starts its
    /// batcher, with the model's own batching settings where it has them.
    async fn load_and_start(
        &self,
        name: &str,
        version: u32,
        stats: Arc<ModelStats>,
    ) -> Result<(Arc<LoadedModel>, u64), PredictError> {
        let registry = Arc::clone(&self.registry);
        let device = self.device.clone();
        let batching = self.limits.batching;
        let (n, v) = (name.to_string(), version);
        let ready = tokio::task::spawn_blocking(move || load(&registry, &n, v, &device))
            .await
            .expect("model load does not panic")?;
        let settings = ready.settings;
        let live = Arc::new(LiveSettings::new(
            settings
                .max_batch
                .map_or(batching.max_batch, |b| b as usize),
            settings
                .max_delay_us
                .map_or(batching.max_delay, Duration::from_micros),
        ));
        let Ready {
            name,
            version,
            info,
            inference,
            weights_bytes,
            ..
        } = ready;
        let batcher = Batcher::start(
            Arc::clone(&inference),
            live,
            batching.max_queue,
            Arc::clone(&stats),
            &name,
        )
        .map_err(|source| PredictError::Spawn {
            name: format!("{name}@{version}"),
            source,
        })?;
        let model = LoadedModel {
            name,
            version,
            info,
            inference,
            batcher,
            stats,
        };
        Ok((Arc::new(model), weights_bytes))
    }

    /// Counts a cache hit or miss; after a miss, the cache's new size.
    fn count_cache(&self, hit: bool) {
        if hit {
            metrics::counter!("lstmd_model_cache_hits_total").increment(1);
        } else {
            metrics::counter!("lstmd_model_cache_misses_total").increment(1);
            let (models, bytes) = self.cache.loaded();
            metrics::gauge!("lstmd_model_cache_models").set(models as f64);
            metrics::gauge!("lstmd_model_cache_loaded_bytes").set(bytes as f64);
        }
    }
}

/// A registered version read from the store, its backend built and run
/// once: ready for traffic.
struct Ready {
    name: String,
    version: u32,
    info: ModelInfo,
    inference: Arc<dyn Backend>,
    settings: ModelSettings,
    weights_bytes: u64,
}

fn load(
    registry: &ModelRegistry,
    name: &str,
    version: u32,
    device: &Device,
) -> Result<Ready, PredictError> {
    let meta = registry
        .get(name, Some(version))?
        .ok_or_else(|| PredictError::NotFound(format!("{name:?} version {version}")))?;
    let settings = registry.settings(name)?;
    let corrupt = |reason: String| PredictError::Corrupt {
        name: format!("{name}@{version}"),
        reason,
    };
    let info = ModelInfo::from_map(&meta.rest).map_err(corrupt)?;
    let bytes = registry
        .weights(name, version)?
        .ok_or_else(|| corrupt("weights file is missing".into()))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| corrupt(format!("weights are unreadable: {e}")))?;
    let network =
        Network::from_tensors(&info.spec, &tensors).map_err(|e: NnError| corrupt(e.to_string()))?;
    let inference: Arc<dyn Backend> = Arc::from(backend_for(network)?);
    // One token through it, so the first request finds the kernels'
    // buffers and pages in place.
    inference.probabilities(&[vec![0]])?;
    Ok(Ready {
        name: meta.name,
        version: meta.version,
        info,
        inference,
        settings,
        weights_bytes: bytes.len() as u64,
    })
}
