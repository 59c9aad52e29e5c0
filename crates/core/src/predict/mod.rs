//! Inference facade: loads registered models once into a cache (each run
//! once before it takes traffic), admits a bounded number of requests,
//! merges concurrent ones into batches, keeps stateful sessions, and
//! streams generated tokens. Every forward pass runs off the tokio
//! executor, without autograd.
//!
//! The path of a Predict whose model is loaded touches no disk and no
//! thread pool: the version comes from the registry's in-memory catalog,
//! the model from the cache, and the forward pass from the model's batcher
//! thread.
//!
//! This file holds the facade's types and Predict; loading.rs how a model
//! gets loaded, stateful.rs the session calls, generation.rs Generate.
pub mod batcher;
pub mod cache;
pub mod context;
mod generation;
mod loading;
pub mod portable;
pub mod sampling;
pub mod sessions;
mod stateful;
pub mod stats;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use candle_core::Device;
use tokio::sync::Semaphore;

use batcher::{Batcher, BatchingConfig, SubmitError};
use cache::ModelCache;
use portable::SessionKey;
use sampling::top_k_of;
use sessions::Sessions;
use stats::{ModelStats, StatsTable};

use crate::backend::{Backend, EngineError};
use crate::data::vocabulary::check_ids;
use crate::error::{check_range, InvalidField};
use crate::nn::metadata::ModelInfo;
use crate::store::{ModelRegistry, ModelSettings, Selector, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    #[error("model {0} not found")]
    NotFound(String),
    #[error("too many predictions in flight ({0}); retry later")]
    Overloaded(usize),
    #[error("the prediction queue of model {0} is full; retry later")]
    QueueFull(String),
    #[error("session {0:?} not found (closed, expired, its model deleted, or never opened)")]
    SessionNotFound(String),
    #[error("{0} sessions are open, the configured maximum; close one or retry later")]
    TooManySessions(usize),
    #[error("model {0} has bidirectional layers: a bidirectional layer needs the whole sequence, so it cannot keep a session's state over the whole input (leave whole_input unset to keep the last window tokens)")]
    NotStateful(String),
    #[error("stored model {name} is unusable: {reason}")]
    Corrupt { name: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("inference failed: {0}")]
    Engine(#[from] EngineError),
    #[error("inference failed: {0}")]
    Batch(SubmitError),
    #[error("could not start the batcher thread of model {name}: {source}")]
    Spawn {
        name: String,
        source: std::io::Error,
    },
}

#[derive(Clone, Debug)]
pub struct PredictLimits {
    /// Sequences in one Predict call.
    pub max_batch: usize,
    pub max_sequence_len: usize,
    /// Predict calls admitted at once.
    pub max_in_flight: usize,
    pub max_generate_tokens: usize,
    pub model_cache_bytes: u64,
    pub max_sessions: usize,
    pub session_idle_timeout: Duration,
    pub batching: BatchingConfig,
}

impl Default for PredictLimits {
    fn default() -> Self {
        Self {
            max_batch: 1024,
            max_sequence_len: 4096,
            max_in_flight: 256,
            max_generate_tokens: 4096,
            model_cache_bytes: 2 << 30,
            max_sessions: 1024,
            session_idle_timeout: Duration::from_secs(300),
            batching: BatchingConfig {
                max_batch: 64,
                max_delay: Duration::ZERO,
                max_queue: 256,
            },
        }
    }
}

/// What `Generate` samples.
pub struct GenerateParams {
    pub prompt: SequenceInput,
    pub max_tokens: usize,
    pub temperature: f32,
    /// 0 = the whole vocabulary.
    pub top_k: usize,
    pub seed: u64,
    pub stop_ids: Vec<u32>,
    /// Carry the state over the whole growing sequence instead of sliding
    /// the model's window.
    pub whole_input: bool,
}

pub enum SequenceInput {
    Ids(Vec<u32>),
    Text(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct TokenProbability {
    pub id: u32,
    pub probability: f64,
    pub text: Option<String>,
}

pub struct Predictions {
    pub name: String,
    pub version: u32,
    pub top: Vec<Vec<TokenProbability>>,
}

pub struct LoadedModel {
    pub name: String,
    pub version: u32,
    pub info: ModelInfo,
    pub inference: Arc<dyn Backend>,
    pub batcher: Batcher,
    pub stats: Arc<ModelStats>,
}

pub struct Predictor {
    registry: Arc<ModelRegistry>,
    device: Device,
    limits: PredictLimits,
    admission: Semaphore,
    cache: ModelCache<LoadedModel>,
    sessions: Sessions,
    stats: StatsTable,
    /// Versions loading in the background while an older one serves
    /// `latest` (see [`Predictor::model_by`]).
    warming: Mutex<HashSet<(String, u32)>>,
    /// Itself, for the background loads.
    this: Weak<Predictor>,
    /// Signs portable sessions' tokens.
    session_key: SessionKey,
}

impl Predictor {
    pub fn new(
        registry: Arc<ModelRegistry>,
        device: Device,
        limits: PredictLimits,
        session_key: SessionKey,
    ) -> Arc<Self> {
        Arc::new_cyclic(|this| Self {
            session_key,
            warming: Mutex::default(),
            this: Weak::clone(this),
            admission: Semaphore::new(limits.max_in_flight),
            cache: ModelCache::new(limits.model_cache_bytes),
            sessions: Sessions::new(limits.max_sessions, limits.session_idle_timeout),
            stats: StatsTable::default(),
            registry,
            device,
            limits,
        })
    }

    /// Drops cached versions of a model (all when `version` is None), e.g.
    /// after it was deleted.
    pub fn evict(&self, name: &str, version: Option<u32>) {
        self.cache.evict(name, version);
        self.sessions.close_model(name, version);
        self.stats.forget(name, version);
    }

    /// The serving statistics of one version (zeros if it never served).
    pub fn statistics(&self, name: &str, version: u32) -> stats::StatsSnapshot {
        self.stats.snapshot(name, version)
    }

    /// Whether `version` of `name` is loaded and was run once (OIP's
    /// ModelReady).
    pub fn is_ready(&self, name: &str, version: u32) -> bool {
        self.cache.peek(&(name.to_string(), version)).is_some()
    }

    /// The batching in force for `name`: its own settings over the
    /// server's defaults.
    pub fn batching_of(&self, settings: ModelSettings) -> (usize, Duration) {
        let d = self.limits.batching;
        (
            settings.max_batch.map_or(d.max_batch, |b| b as usize),
            settings
                .max_delay_us
                .map_or(d.max_delay, Duration::from_micros),
        )
    }

    /// Applies new batching settings of `name` to its loaded versions.
    pub fn apply_settings(&self, name: &str, settings: ModelSettings) {
        let (max_batch, max_delay) = self.batching_of(settings);
        for model in self.cache.values_of(name) {
            model.batcher.settings.set(max_batch, max_delay);
        }
    }

    /// Models in memory and their weight bytes.
    pub fn cached_models(&self) -> (usize, u64) {
        self.cache.loaded()
    }

    pub fn open_sessions(&self) -> usize {
        self.sessions.open_count()
    }

    /// Drops idle sessions; the server calls it periodically.
    pub fn sweep_sessions(&self) {
        self.sessions.sweep();
    }

    /// Validates one input sequence of `model` and turns it into ids.
    fn encode(
        &self,
        model: &LoadedModel,
        field: &str,
        input: SequenceInput,
    ) -> Result<Vec<u32>, PredictError> {
        let vocab = model.info.spec.vocab_size;
        let ids = match input {
            SequenceInput::Ids(ids) => {
                check_ids(&format!("{field}.ids"), &ids, vocab)?;
                ids
            }
            SequenceInput::Text(text) => match model.info.vocabulary() {
                Some(v) => v.encode(&text),
                None => {
                    return Err(InvalidField::new(
                        format!("{field}.text"),
                        format!(
                            "cannot be used: model {:?} has no vocabulary; send ids",
                            model.name
                        ),
                    )
                    .into())
                }
            },
        };
        if ids.is_empty() || ids.len() > self.limits.max_sequence_len {
            return Err(InvalidField::new(
                field,
                format!(
                    "must hold 1..={} tokens, got {}",
                    self.limits.max_sequence_len,
                    ids.len()
                ),
            )
            .into());
        }
        Ok(ids)
    }

    fn token(model: &LoadedModel, id: u32, probability: f64) -> TokenProbability {
        TokenProbability {
            id,
            probability,
            text: model.info.vocabulary().map(|v| v.token_text(id)),
        }
    }

    fn top(model: &LoadedModel, probs: &[f32], k: usize) -> Vec<TokenProbability> {
        top_k_of(probs, k)
            .into_iter()
            .map(|(id, p)| Self::token(model, id, p))
            .collect()
    }

    pub async fn predict(
        &self,
        name: &str,
        version: Option<u32>,
        sequences: Vec<SequenceInput>,
        top_k: Option<u32>,
        whole_input: bool,
    ) -> Result<Predictions, PredictError> {
        let selector = version.map_or(Selector::Latest, Selector::Version);
        self.predict_by(name, &selector, sequences, top_k, whole_input)
            .await
    }

    /// The top-k next tokens of each sequence, from the version `selector`
    /// names.
    pub async fn predict_by(
        &self,
        name: &str,
        selector: &Selector,
        sequences: Vec<SequenceInput>,
        top_k: Option<u32>,
        whole_input: bool,
    ) -> Result<Predictions, PredictError> {
        let _permit = self.admit(sequences.len())?;
        let model = self.model_by(name, selector).await?;
        let started = Instant::now();
        let answer = self.predict_on(&model, sequences, top_k, whole_input).await;
        let n = answer.as_ref().map_or(0, |p| p.top.len());
        model
            .stats
            .record_request(n, started.elapsed(), answer.is_ok());
        answer
    }

    /// One admission permit, and the batch size checked; RESOURCE_EXHAUSTED
    /// (shed at once, never queued) when the in-flight limit is reached.
    fn admit(&self, sequences: usize) -> Result<tokio::sync::SemaphorePermit<'_>, PredictError> {
        let permit = self
            .admission
            .try_acquire()
            .map_err(|_| PredictError::Overloaded(self.limits.max_in_flight))?;
        check_range("sequences", sequences, 1, self.limits.max_batch).map_err(|_| {
            InvalidField::new(
                "sequences",
                format!(
                    "must hold 1..={} sequences, got {sequences}",
                    self.limits.max_batch
                ),
            )
        })?;
        metrics::histogram!("lstmd_predict_batch_sequences").record(sequences as f64);
        Ok(permit)
    }

    async fn predict_on(
        &self,
        model: &Arc<LoadedModel>,
        sequences: Vec<SequenceInput>,
        top_k: Option<u32>,
        whole_input: bool,
    ) -> Result<Predictions, PredictError> {
        let k = check_range(
            "top_k",
            top_k.unwrap_or(5) as usize,
            1,
            model.info.spec.vocab_size,
        )?;
        let encoded = sequences
            .into_iter()
            .enumerate()
            .map(|(i, seq)| self.encode(model, &format!("sequences[{i}]"), seq))
            .collect::<Result<Vec<_>, _>>()?;
        let encoded = in_context(model, encoded, whole_input);
        let probs = Self::forward(model, encoded).await?;
        Ok(Predictions {
            name: model.name.clone(),
            version: model.version,
            top: probs.iter().map(|p| Self::top(model, p, k)).collect(),
        })
    }

    /// Next-token distributions of validated id sequences, through the
    /// model's batcher.
    async fn forward(
        model: &LoadedModel,
        encoded: Vec<Vec<u32>>,
    ) -> Result<Vec<Vec<f32>>, PredictError> {
        model.batcher.submit(encoded).await.map_err(|e| match e {
            SubmitError::QueueFull => {
                PredictError::QueueFull(format!("{}@{}", model.name, model.version))
            }
            e => PredictError::Batch(e),
        })
    }

    /// Full next-token distributions for id sequences (the Open Inference
    /// Protocol's ModelInfer): the same admission, checks, batcher and
    /// statistics as `predict_by`.
    pub async fn distributions(
        &self,
        name: &str,
        selector: &Selector,
        sequences: Vec<Vec<u32>>,
    ) -> Result<(Arc<LoadedModel>, Vec<Vec<f32>>), PredictError> {
        let _permit = self.admit(sequences.len())?;
        let model = self.model_by(name, selector).await?;
        let started = Instant::now();
        let encoded = sequences
            .into_iter()
            .enumerate()
            .map(|(i, ids)| {
                self.encode(&model, &format!("sequences[{i}]"), SequenceInput::Ids(ids))
            })
            .collect::<Result<Vec<_>, _>>();
        let answer = match encoded {
            // The same context as Predict's default: the model's window.
            Ok(encoded) => Self::forward(&model, in_context(&model, encoded, false)).await,
            Err(e) => Err(e),
        };
        let n = answer.as_ref().map_or(0, Vec::len);
        model
            .stats
            .record_request(n, started.elapsed(), answer.is_ok());
        Ok((model, answer?))
    }
}

/// The part of each sequence the model reads (see `InferenceContext`).
fn in_context(model: &LoadedModel, sequences: Vec<Vec<u32>>, whole_input: bool) -> Vec<Vec<u32>> {
    let context = model.info.context();
    sequences
        .into_iter()
        .map(|s| match context.select(&s, whole_input).len() {
            n if n == s.len() => s,
            n => s[s.len() - n..].to_vec(),
        })
        .collect()
}
