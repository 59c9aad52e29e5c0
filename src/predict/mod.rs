//! Inference facade: loads registered models once into a cache, admits a
//! bounded number of requests, and runs forward passes off the executor.
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use candle_core::{Device, Tensor};
use tokio::sync::{OnceCell, Semaphore};

use crate::data::vocabulary::check_ids;
use crate::error::{check_range, InvalidField};
use crate::nn::fused::Engine;
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
    #[error("stored model {name} is unusable: {reason}")]
    Corrupt { name: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("inference failed: {0}")]
    Candle(#[from] candle_core::Error),
}

#[derive(Clone, Debug)]
pub struct PredictLimits {
    pub max_batch: usize,
    pub max_sequence_len: usize,
    pub max_in_flight: usize,
}

impl Default for PredictLimits {
    fn default() -> Self {
        Self {
            max_batch: 1024,
            max_sequence_len: 4096,
            max_in_flight: 256,
        }
    }
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
    pub network: Network,
    /// The fused inference engine, for models served from the CPU in f32.
    pub engine: Option<Engine>,
}

impl LoadedModel {
    /// Softmax over the vocabulary for each sequence: the fused engine
    /// where there is one, the network's forward pass otherwise.
    pub fn next_token_probabilities(
        &self,
        sequences: &[Vec<u32>],
    ) -> candle_core::Result<Vec<Vec<f32>>> {
        match &self.engine {
            Some(engine) => Ok(engine_probabilities(engine, sequences)),
            None => next_token_probabilities(&self.network, sequences),
        }
    }
}

type Key = (String, u32);

pub struct Predictor {
    registry: Arc<ModelRegistry>,
    device: Device,
    limits: PredictLimits,
    admission: Semaphore,
    // One cell per model version: concurrent first requests wait for one load.
    cache: Mutex<HashMap<Key, Arc<OnceCell<Arc<LoadedModel>>>>>,
}

impl Predictor {
    pub fn new(registry: Arc<ModelRegistry>, device: Device, limits: PredictLimits) -> Self {
        Self {
            admission: Semaphore::new(limits.max_in_flight),
            registry,
            device,
            limits,
            cache: Mutex::new(HashMap::new()),
        }
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
        let cell = Arc::clone(
            self.cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(key)
                .or_default(),
        );
        let registry = Arc::clone(&self.registry);
        let device = self.device.clone();
        cell.get_or_try_init(|| async move {
            tokio::task::spawn_blocking(move || load(&registry, meta, &device))
                .await
                .expect("model load does not panic")
        })
        .await
        .cloned()
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
        let model = self.model(name, version).await?;
        let vocab = model.info.spec.vocab_size;
        let k = check_range("top_k", top_k.unwrap_or(5) as usize, 1, vocab)?;
        let mut encoded = Vec::with_capacity(sequences.len());
        for (i, seq) in sequences.into_iter().enumerate() {
            let ids = match seq {
                SequenceInput::Ids(ids) => {
                    check_ids(&format!("sequences[{i}].ids"), &ids, vocab)?;
                    ids
                }
                SequenceInput::Text(text) => match model.info.vocabulary() {
                    Some(v) => v.encode(&text),
                    None => {
                        return Err(InvalidField::new(
                            format!("sequences[{i}].text"),
                            format!("cannot be used: model {name:?} has no vocabulary; send ids"),
                        )
                        .into())
                    }
                },
            };
            let field = format!("sequences[{i}]");
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
            encoded.push(ids);
        }
        let model2 = Arc::clone(&model);
        let probs = tokio::task::spawn_blocking(move || model2.next_token_probabilities(&encoded))
            .await
            .expect("inference does not panic")?;
        let vocabulary = model.info.vocabulary();
        let top = probs
            .iter()
            .map(|p| {
                top_k_of(p, k)
                    .into_iter()
                    .map(|(id, probability)| TokenProbability {
                        id,
                        probability,
                        text: vocabulary.map(|v| v.token_text(id)),
                    })
                    .collect()
            })
            .collect();
        Ok(Predictions {
            name: model.name.clone(),
            version: model.version,
            top,
        })
    }
}

fn load(
    registry: &ModelRegistry,
    meta: crate::store::ModelMetadata,
    device: &Device,
) -> Result<Arc<LoadedModel>, PredictError> {
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
    let engine = Engine::new(&network)?;
    Ok(Arc::new(LoadedModel {
        name: meta.name,
        version: meta.version,
        info,
        network,
        engine,
    }))
}

/// Groups sequences by length, so no padding enters any result.
fn by_length(sequences: &[Vec<u32>]) -> BTreeMap<usize, Vec<usize>> {
    let mut by_len: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, s) in sequences.iter().enumerate() {
        by_len.entry(s.len()).or_default().push(i);
    }
    by_len
}

/// [`LoadedModel::next_token_probabilities`] through the fused engine.
fn engine_probabilities(engine: &Engine, sequences: &[Vec<u32>]) -> Vec<Vec<f32>> {
    let v = engine.vocab_size();
    let mut out = vec![Vec::new(); sequences.len()];
    for (len, members) in by_length(sequences) {
        let flat: Vec<u32> = members
            .iter()
            .flat_map(|&i| sequences[i].iter().copied())
            .collect();
        let probs = engine.probabilities(&flat, members.len(), len);
        for (row, i) in probs.chunks_exact(v).zip(members) {
            out[i] = row.to_vec();
        }
    }
    out
}

/// Softmax over the vocabulary for each sequence, through candle tensor
/// ops (any device). Sequences are grouped by length, so no padding enters
/// any result.
pub fn next_token_probabilities(
    network: &Network,
    sequences: &[Vec<u32>],
) -> candle_core::Result<Vec<Vec<f32>>> {
    let mut out = vec![Vec::new(); sequences.len()];
    for (len, members) in by_length(sequences) {
        let flat: Vec<u32> = members
            .iter()
            .flat_map(|&i| sequences[i].iter().copied())
            .collect();
        let ids = Tensor::from_vec(flat, (members.len(), len), network.device())?;
        let probs =
            candle_nn::ops::softmax_last_dim(&network.forward(&ids, None)?)?.to_vec2::<f32>()?;
        for (row, i) in probs.into_iter().zip(members) {
            out[i] = row;
        }
    }
    Ok(out)
}

/// The k most probable ids, most probable first (ties: lower id first).
fn top_k_of(probs: &[f32], k: usize) -> Vec<(u32, f64)> {
    let mut idx: Vec<u32> = (0..probs.len() as u32).collect();
    idx.sort_by(|&a, &b| {
        probs[b as usize]
            .total_cmp(&probs[a as usize])
            .then(a.cmp(&b))
    });
    idx.truncate(k);
    idx.into_iter()
        .map(|i| (i, probs[i as usize] as f64))
        .collect()
}
