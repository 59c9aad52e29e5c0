//! The arithmetic of inference: next-token distributions, top-k, sampling.
use std::collections::BTreeMap;

use candle_core::Tensor;
use rand::Rng;

use crate::nn::fused::{Engine, StepState};
use crate::nn::{LayerState, Network};

/// What runs a model's forward passes: the fused engine on the CPU in f32,
/// candle's composed ops elsewhere (CUDA, f64).
pub struct Inference {
    pub network: Network,
    engine: Option<Engine>,
}

impl Inference {
    pub fn new(network: Network) -> candle_core::Result<Self> {
        let engine = Engine::new(&network)?;
        Ok(Self { network, engine })
    }

    /// Softmax over the vocabulary for each sequence.
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

/// The recurrent state a session or a generation carries between calls,
/// in the form of the path that made it.
pub enum Carried {
    Fused(Vec<StepState>),
    Composed(Vec<LayerState>),
}

impl Inference {
    /// Whether the model can carry state (no bidirectional layer).
    pub fn is_stateful(&self) -> bool {
        self.network.is_stateful()
    }

    /// Next-token probabilities for one sequence continuing from `carried`
    /// (zeros when None), and the state after its last token.
    pub fn step(
        &self,
        ids: &[u32],
        carried: Option<&Carried>,
    ) -> candle_core::Result<(Vec<f32>, Carried)> {
        match (&self.engine, carried) {
            (Some(engine), None) => {
                let (probs, states) = engine.step(ids, None);
                Ok((probs, Carried::Fused(states)))
            }
            (Some(engine), Some(Carried::Fused(states))) => {
                let (probs, states) = engine.step(ids, Some(states));
                Ok((probs, Carried::Fused(states)))
            }
            (_, carried) => {
                let states = match carried {
                    Some(Carried::Composed(s)) => Some(s.as_slice()),
                    _ => None,
                };
                let network = &self.network;
                let x = Tensor::from_slice(ids, (1, ids.len()), network.device())?;
                let (logits, states) = network.forward_from(&x, states)?;
                let probs = candle_nn::ops::softmax_last_dim(&logits)?.to_vec2::<f32>()?;
                Ok((
                    probs.into_iter().next().unwrap_or_default(),
                    Carried::Composed(states),
                ))
            }
        }
    }
}

/// Groups sequence indices by length, so no padding enters any result.
fn by_length(sequences: &[Vec<u32>]) -> BTreeMap<usize, Vec<usize>> {
    let mut by_len: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, s) in sequences.iter().enumerate() {
        by_len.entry(s.len()).or_default().push(i);
    }
    by_len
}

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
/// ops (any device).
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
pub fn top_k_of(probs: &[f32], k: usize) -> Vec<(u32, f64)> {
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

/// Samples an id from `probs` sharpened by `temperature` and restricted to
/// the `top_k` most probable ids (0 = all); temperature 0 is greedy.
pub fn sample(probs: &[f32], temperature: f32, top_k: usize, rng: &mut impl Rng) -> u32 {
    let k = if top_k == 0 {
        probs.len()
    } else {
        top_k.min(probs.len())
    };
    let candidates = top_k_of(probs, k);
    if temperature <= 0.0 {
        return candidates[0].0;
    }
    // p^(1/T), renormalised over the candidates (in log space for stability).
    let logs: Vec<f64> = candidates
        .iter()
        .map(|&(_, p)| p.max(1e-30).ln() / temperature as f64)
        .collect();
    let max = logs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = logs.iter().map(|l| (l - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut u = rng.random::<f64>() * total;
    for (w, &(id, _)) in weights.iter().zip(&candidates) {
        if u < *w {
            return id;
        }
        u -= w;
    }
    candidates.last().expect("at least one candidate").0
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn sampling_respects_top_k_greedy_and_seed() {
        let probs = [0.1, 0.5, 0.3, 0.1];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        assert_eq!(sample(&probs, 0.0, 0, &mut rng), 1);
        for _ in 0..100 {
            let id = sample(&probs, 1.0, 2, &mut rng);
            assert!(id == 1 || id == 2);
        }
        let draw = |seed| {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            (0..20)
                .map(|_| sample(&probs, 1.0, 0, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }
}
