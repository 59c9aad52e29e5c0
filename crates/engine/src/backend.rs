//! The engine behind one small trait: what serving asks of a model's
//! forward passes, whichever path runs them — the fused CPU kernels (f32 on
//! the CPU) or candle's composed ops (CUDA, f64). A new backend slots in
//! by implementing `Backend`; candle's errors end here, as `EngineError`.
use std::collections::BTreeMap;

use candle_core::Tensor;

use crate::nn::fused::{Engine as FusedKernels, StepState};
use crate::nn::{LayerState, Network};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the forward pass failed: {0}")]
    Compute(#[from] candle_core::Error),
    #[error("the model has bidirectional layers, so it carries no state between calls")]
    NotStateful,
    #[error("the carried state was made by another engine")]
    ForeignState,
}

/// The recurrent state a session or a generation carries between calls;
/// only the backend that made it reads it.
pub struct Carried(State);

/// One layer's carried state as plain numbers (h, and c for an LSTM), so
/// that it can leave the process: f64 holds the f32 and f64 states exactly.
#[derive(Clone, Debug, PartialEq)]
pub struct StateValues {
    pub h: Vec<f64>,
    pub c: Option<Vec<f64>>,
}

impl Carried {
    /// The state, layer by layer.
    pub fn values(&self) -> Result<Vec<StateValues>, EngineError> {
        let widen = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect();
        let of_tensor = |t: &Tensor| -> Result<Vec<f64>, EngineError> {
            Ok(t.to_dtype(candle_core::DType::F64)?
                .flatten_all()?
                .to_vec1()?)
        };
        match &self.0 {
            State::Fused(layers) => Ok(layers
                .iter()
                .map(|l| StateValues {
                    h: widen(&l.h),
                    c: l.c.as_deref().map(widen),
                })
                .collect()),
            State::Composed(layers) => layers
                .iter()
                .map(|l| {
                    Ok(StateValues {
                        h: of_tensor(&l.h)?,
                        c: l.c.as_ref().map(of_tensor).transpose()?,
                    })
                })
                .collect(),
        }
    }
}

enum State {
    Fused(Vec<StepState>),
    Composed(Vec<LayerState>),
}

impl State {
    fn fused(&self) -> Result<&[StepState], EngineError> {
        match self {
            State::Fused(states) => Ok(states),
            State::Composed(_) => Err(EngineError::ForeignState),
        }
    }

    fn composed(&self) -> Result<&[LayerState], EngineError> {
        match self {
            State::Composed(states) => Ok(states),
            State::Fused(_) => Err(EngineError::ForeignState),
        }
    }
}

/// A loaded model's forward passes, without autograd.
pub trait Backend: Send + Sync {
    /// Softmax over the vocabulary after each sequence (any lengths, none
    /// empty, every id below the vocabulary size).
    fn probabilities(&self, sequences: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, EngineError>;

    /// Next-token probabilities for one sequence continuing from `carried`
    /// (zeros when None), and the state after its last token. Feeding a
    /// sequence in pieces gives the probabilities of feeding it whole.
    fn step(
        &self,
        ids: &[u32],
        carried: Option<&Carried>,
    ) -> Result<(Vec<f32>, Carried), EngineError>;

    /// The carried state `values` (from `Carried::values`, of a model with
    /// these layer sizes: the caller checks them) as this backend's own.
    fn carried_from(&self, values: &[StateValues]) -> Result<Carried, EngineError>;

    /// Whether the model can carry state (no bidirectional layer).
    fn is_stateful(&self) -> bool;

    /// Which backend this is, for logs: "fused-cpu" or "candle".
    fn kind(&self) -> &'static str;
}

/// The fastest backend that runs `network`: the fused kernels for f32 on
/// the CPU, candle's ops on any other device or dtype.
pub fn backend_for(network: Network) -> Result<Box<dyn Backend>, EngineError> {
    Ok(match FusedKernels::new(&network)? {
        Some(kernels) => Box::new(FusedCpu { kernels }),
        None => Box::new(Candle { network }),
    })
}

/// Sequences of one length, in the order they came, with their ids laid
/// end to end: a batch without padding, so no padding enters any result.
struct SameLength {
    len: usize,
    members: Vec<usize>,
    flat: Vec<u32>,
}

fn by_length(sequences: &[Vec<u32>]) -> Vec<SameLength> {
    let mut by_len: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, s) in sequences.iter().enumerate() {
        by_len.entry(s.len()).or_default().push(i);
    }
    by_len
        .into_iter()
        .map(|(len, members)| {
            let flat = members
                .iter()
                .flat_map(|&i| sequences[i].iter().copied())
                .collect();
            SameLength { len, members, flat }
        })
        .collect()
}

/// A bidirectional model reads each sequence backwards too, so it cannot
/// continue one from a carried state.
fn require_stateful(backend: &dyn Backend) -> Result<(), EngineError> {
    match backend.is_stateful() {
        true => Ok(()),
        false => Err(EngineError::NotStateful),
    }
}

/// The fused CPU kernels (weights copied into their own layout).
struct FusedCpu {
    kernels: FusedKernels,
}

impl Backend for FusedCpu {
    fn probabilities(&self, sequences: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, EngineError> {
        let v = self.kernels.vocab_size();
        let mut out = vec![Vec::new(); sequences.len()];
        for SameLength { len, members, flat } in by_length(sequences) {
            let probs = self.kernels.probabilities(&flat, members.len(), len);
            for (row, i) in probs.chunks_exact(v).zip(members) {
                out[i] = row.to_vec();
            }
        }
        Ok(out)
    }

    fn step(
        &self,
        ids: &[u32],
        carried: Option<&Carried>,
    ) -> Result<(Vec<f32>, Carried), EngineError> {
        require_stateful(self)?;
        let states = carried.map(|c| c.0.fused()).transpose()?;
        let (probs, states) = self.kernels.step(ids, states);
        Ok((probs, Carried(State::Fused(states))))
    }

    fn carried_from(&self, values: &[StateValues]) -> Result<Carried, EngineError> {
        require_stateful(self)?;
        let narrow = |v: &[f64]| v.iter().map(|&x| x as f32).collect();
        let layers = values
            .iter()
            .map(|v| StepState {
                h: narrow(&v.h),
                c: v.c.as_deref().map(narrow),
            })
            .collect();
        Ok(Carried(State::Fused(layers)))
    }

    fn is_stateful(&self) -> bool {
        self.kernels.is_stateful()
    }

    fn kind(&self) -> &'static str {
        "fused-cpu"
    }
}

/// Candle's composed tensor ops, on any device.
struct Candle {
    network: Network,
}

impl Backend for Candle {
    fn probabilities(&self, sequences: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, EngineError> {
        let network = &self.network;
        let mut out = vec![Vec::new(); sequences.len()];
        for SameLength { len, members, flat } in by_length(sequences) {
            let ids = Tensor::from_vec(flat, (members.len(), len), network.device())?;
            let logits = network.forward(&ids, None)?;
            let probs = candle_nn::ops::softmax_last_dim(&logits)?.to_vec2::<f32>()?;
            for (row, i) in probs.into_iter().zip(members) {
                out[i] = row;
            }
        }
        Ok(out)
    }

    fn step(
        &self,
        ids: &[u32],
        carried: Option<&Carried>,
    ) -> Result<(Vec<f32>, Carried), EngineError> {
        require_stateful(self)?;
        let states = carried.map(|c| c.0.composed()).transpose()?;
        let network = &self.network;
        let x = Tensor::from_slice(ids, (1, ids.len()), network.device())?;
        let (logits, states) = network.forward_from(&x, states)?;
        let probs = candle_nn::ops::softmax_last_dim(&logits)?.to_vec2::<f32>()?;
        let probs = probs.into_iter().next().unwrap_or_default();
        Ok((probs, Carried(State::Composed(states))))
    }

    fn carried_from(&self, values: &[StateValues]) -> Result<Carried, EngineError> {
        require_stateful(self)?;
        let network = &self.network;
        let tensor = |v: &[f64]| -> Result<Tensor, EngineError> {
            let t = Tensor::from_slice(v, (1, v.len()), network.device())?;
            Ok(t.to_dtype(network.dtype())?)
        };
        let layers = values
            .iter()
            .map(|v| {
                Ok(LayerState {
                    h: tensor(&v.h)?,
                    c: v.c.as_deref().map(tensor).transpose()?,
                })
            })
            .collect::<Result<_, EngineError>>()?;
        Ok(Carried(State::Composed(layers)))
    }

    fn is_stateful(&self) -> bool {
        self.network.is_stateful()
    }

    fn kind(&self) -> &'static str {
        "candle"
    }
}
