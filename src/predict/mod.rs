//! Inference facade: loads registered models once into a cache, admits a
//! bounded number of requests, merges concurrent ones into batches, keeps
//! stateful sessions, and streams generated tokens. Every forward pass runs
//! off the tokio executor, without autograd.
pub mod batcher;
pub mod cache;
pub mod infer;
pub mod sessions;

use std::sync::Arc;
use std::time::Duration;

use candle_core::Device;
use rand::SeedableRng;
use tokio::sync::{mpsc, Semaphore};

use batcher::{Batcher, BatchingConfig, SubmitError};
use cache::ModelCache;
use infer::{sample, top_k_of, Inference};
use sessions::Sessions;

use crate::data::vocabulary::check_ids;
use crate::error::{check_range, InvalidField};
use crate::nn::metadata::ModelInfo;
use crate::nn::{Network, NnError};
use crate::store::{ModelRegistry, StoreError};

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
    #[error("session {0:?} not found (closed, expired or never opened)")]
    SessionNotFound(String),
    #[error("{0} sessions are open, the configured maximum; close one or retry later")]
    TooManySessions(usize),
    #[error("model {0} has bidirectional layers: a bidirectional layer needs the whole sequence, so it cannot keep a session's state")]
    NotStateful(String),
    #[error("stored model {name} is unusable: {reason}")]
    Corrupt { name: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("inference failed: {0}")]
    Candle(#[from] candle_core::Error),
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
                max_queue: 1024,
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
    pub inference: Arc<Inference>,
    pub batcher: Batcher,
}

pub struct Predictor {
    registry: Arc<ModelRegistry>,
    device: Device,
    limits: PredictLimits,
    admission: Semaphore,
    cache: ModelCache<LoadedModel>,
    sessions: Sessions,
}

impl Predictor {
    pub fn new(registry: Arc<ModelRegistry>, device: Device, limits: PredictLimits) -> Self {
        Self {
            admission: Semaphore::new(limits.max_in_flight),
            cache: ModelCache::new(limits.model_cache_bytes),
            sessions: Sessions::new(limits.max_sessions, limits.session_idle_timeout),
            registry,
            device,
            limits,
        }
    }

    /// Drops cached versions of a model (all when `version` is None), e.g.
    /// after it was deleted.
    pub fn evict(&self, name: &str, version: Option<u32>) {
        self.cache.evict(name, version);
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

    /// The loaded model for `name` at `version` (latest when None).
    pub async fn model(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<Arc<LoadedModel>, PredictError> {
        let label = match version {
            Some(v) => format!("{name:?} version {v}"),
            None => format!("{name:?}"),
        };
        if crate::error::check_name("model", name).is_err() {
            return Err(PredictError::NotFound(label));
        }
        let registry = Arc::clone(&self.registry);
        let (n, v) = (name.to_string(), version);
        let meta = tokio::task::spawn_blocking(move || registry.get(&n, v))
            .await
            .expect("registry lookup does not panic")?
            .ok_or_else(|| PredictError::NotFound(label))?;
        let key = (meta.name.clone(), meta.version);
        let registry = Arc::clone(&self.registry);
        let device = self.device.clone();
        let batching = self.limits.batching;
        let (model, hit) = self
            .cache
            .get_or_load(key, || async move {
                let model = tokio::task::spawn_blocking(move || load(&registry, meta, &device))
                    .await
                    .expect("model load does not panic")?;
                let bytes = model.1;
                let (name, version, info, network) = model.0;
                let inference = Arc::new(Inference::new(network)?);
                let batcher = Batcher::start(Arc::clone(&inference), batching);
                Ok::<_, PredictError>((
                    Arc::new(LoadedModel {
                        name,
                        version,
                        info,
                        inference,
                        batcher,
                    }),
                    bytes,
                ))
            })
            .await?;
        if hit {
            metrics::counter!("lstmd_model_cache_hits_total").increment(1);
        } else {
            metrics::counter!("lstmd_model_cache_misses_total").increment(1);
            let (models, bytes) = self.cache.loaded();
            metrics::gauge!("lstmd_model_cache_models").set(models as f64);
            metrics::gauge!("lstmd_model_cache_loaded_bytes").set(bytes as f64);
        }
        Ok(model)
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
    ) -> Result<Predictions, PredictError> {
        let _permit = self
            .admission
            .try_acquire()
            .map_err(|_| PredictError::Overloaded(self.limits.max_in_flight))?;
        check_range("sequences", sequences.len(), 1, self.limits.max_batch).map_err(|_| {
            InvalidField::new(
                "sequences",
                format!(
                    "must hold 1..={} sequences, got {}",
                    self.limits.max_batch,
                    sequences.len()
                ),
            )
        })?;
        metrics::histogram!("lstmd_predict_batch_sequences").record(sequences.len() as f64);
        let model = self.model(name, version).await?;
        let k = check_range(
            "top_k",
            top_k.unwrap_or(5) as usize,
            1,
            model.info.spec.vocab_size,
        )?;
        let encoded = sequences
            .into_iter()
            .enumerate()
            .map(|(i, seq)| self.encode(&model, &format!("sequences[{i}]"), seq))
            .collect::<Result<Vec<_>, _>>()?;
        let probs = model.batcher.submit(encoded).await.map_err(|e| match e {
            SubmitError::QueueFull => {
                PredictError::QueueFull(format!("{}@{}", model.name, model.version))
            }
            SubmitError::Failed(e) => PredictError::Candle(e),
        })?;
        Ok(Predictions {
            name: model.name.clone(),
            version: model.version,
            top: probs.iter().map(|p| Self::top(&model, p, k)).collect(),
        })
    }

    /// Opens a session on a unidirectional model; returns its id and model.
    pub async fn open_session(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<(String, Arc<LoadedModel>), PredictError> {
        let model = self.model(name, version).await?;
        if !model.inference.network.is_stateful() {
            return Err(PredictError::NotStateful(format!(
                "{}@{}",
                model.name, model.version
            )));
        }
        let id = self
            .sessions
            .open(Arc::clone(&model))
            .ok_or(PredictError::TooManySessions(self.sessions.max))?;
        Ok((id, model))
    }

    /// Feeds tokens to a session; returns the top-k after them and the
    /// number of tokens the session has seen.
    pub async fn feed_session(
        &self,
        id: &str,
        input: SequenceInput,
        top_k: Option<u32>,
    ) -> Result<(Vec<TokenProbability>, u64), PredictError> {
        let mut session = self
            .sessions
            .lock(id)
            .await
            .ok_or_else(|| PredictError::SessionNotFound(id.to_string()))?;
        let model = Arc::clone(&session.model);
        let k = check_range(
            "top_k",
            top_k.unwrap_or(5) as usize,
            1,
            model.info.spec.vocab_size,
        )?;
        let ids = self.encode(&model, "tokens", input)?;
        let states = session.states.take();
        let inference = Arc::clone(&model.inference);
        let n = ids.len();
        let result = tokio::task::spawn_blocking(move || inference.step(&ids, states.as_ref()))
            .await
            .expect("inference does not panic");
        let (probs, states) = result?;
        session.states = Some(states);
        session.tokens_seen += n as u64;
        Sessions::touch(&mut session);
        Ok((Self::top(&model, &probs, k), session.tokens_seen))
    }

    pub fn close_session(&self, id: &str) -> Result<(), PredictError> {
        if self.sessions.close(id) {
            Ok(())
        } else {
            Err(PredictError::SessionNotFound(id.to_string()))
        }
    }

    /// Samples up to `max_tokens` tokens after the prompt, sent as they come.
    /// The stream ends early at a stop id, or when the receiver is dropped.
    pub async fn generate(
        &self,
        name: &str,
        version: Option<u32>,
        params: GenerateParams,
    ) -> Result<mpsc::Receiver<Result<TokenProbability, PredictError>>, PredictError> {
        let model = self.model(name, version).await?;
        let vocab = model.info.spec.vocab_size;
        check_range(
            "max_tokens",
            params.max_tokens,
            1,
            self.limits.max_generate_tokens,
        )?;
        check_range("top_k", params.top_k, 0, vocab)?;
        if !(params.temperature >= 0.0 && params.temperature.is_finite()) {
            return Err(InvalidField::new(
                "temperature",
                format!("must be >= 0 and finite, got {}", params.temperature),
            )
            .into());
        }
        check_ids("stop_ids", &params.stop_ids, vocab)?;
        let prompt = self.encode(&model, "prompt", params.prompt)?;
        let max_len = self.limits.max_sequence_len;
        let (tx, rx) = mpsc::channel(16);
        tokio::task::spawn_blocking(move || {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(params.seed);
            let inference = &model.inference;
            let run = || -> candle_core::Result<()> {
                // Unidirectional models carry their state: each new token
                // costs one step. Bidirectional ones re-read the sequence.
                let mut sequence = prompt;
                let (mut probs, mut states) = if inference.is_stateful() {
                    let (p, s) = inference.step(&sequence, None)?;
                    (p, Some(s))
                } else {
                    (
                        inference
                            .next_token_probabilities(std::slice::from_ref(&sequence))?
                            .remove(0),
                        None,
                    )
                };
                for _ in 0..params.max_tokens {
                    let id = sample(&probs, params.temperature, params.top_k, &mut rng);
                    let token = Self::token(&model, id, probs[id as usize] as f64);
                    if tx.blocking_send(Ok(token)).is_err() || params.stop_ids.contains(&id) {
                        return Ok(());
                    }
                    sequence.push(id);
                    if let Some(s) = states.take() {
                        let (p, s) = inference.step(&[id], Some(&s))?;
                        probs = p;
                        states = Some(s);
                    } else {
                        let start = sequence.len().saturating_sub(max_len);
                        probs = inference
                            .next_token_probabilities(&[sequence[start..].to_vec()])?
                            .remove(0);
                    }
                }
                Ok(())
            };
            if let Err(e) = run() {
                let _ = tx.blocking_send(Err(PredictError::Candle(e)));
            }
        });
        Ok(rx)
    }
}

type Loaded = ((String, u32, ModelInfo, Network), u64);

fn load(
    registry: &ModelRegistry,
    meta: crate::store::ModelMetadata,
    device: &Device,
) -> Result<Loaded, PredictError> {
    let corrupt = |reason: String| PredictError::Corrupt {
        name: format!("{}@{}", meta.name, meta.version),
        reason,
    };
    let info = ModelInfo::from_map(&meta.rest).map_err(corrupt)?;
    let bytes = registry
        .weights(&meta.name, meta.version)?
        .ok_or_else(|| corrupt("weights file is missing".into()))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)?;
    let network =
        Network::from_tensors(&info.spec, &tensors).map_err(|e: NnError| corrupt(e.to_string()))?;
    Ok(((meta.name, meta.version, info, network), bytes.len() as u64))
}
