//! A run's data: training windows or streams, and the held-out windows or
//! stream validation reads, split deterministically from the seed.
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::config::TrainConfig;
use super::TrainError;
use crate::data::{Streams, Windows};
use crate::nn::ModelSpec;

/// A random stream for one purpose and epoch, derived from the seed, so
/// that resuming at an epoch needs no saved RNG state.
pub(super) fn stream(seed: u64, purpose: u64, epoch: u32) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream((purpose << 32) | epoch as u64);
    rng
}

pub(super) const SPLIT: u64 = 1;
pub(super) const SHUFFLE: u64 = 2;
pub(super) const DROPOUT: u64 = 3;

/// Splits window indices into (train, validation), deterministic from the
/// seed; no window is in both.
pub(super) fn split_windows(count: usize, fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut all: Vec<usize> = (0..count).collect();
    if fraction <= 0.0 || count < 2 {
        return (all, Vec::new());
    }
    all.shuffle(&mut stream(seed, SPLIT, 0));
    let val = ((count as f64 * fraction).round() as usize).clamp(1, count - 1);
    let mut train = all.split_off(val);
    train.sort_unstable();
    (train, all)
}

/// Where the validation windows come from.
pub(super) enum Validation<'a> {
    None,
    /// Windows (by index) that start from zeros.
    Windows(Windows<'a>, Vec<usize>),
    /// Parallel streams read with the state carried.
    Streams(Streams<'a>),
}

impl Validation<'_> {
    pub(super) fn is_none(&self) -> bool {
        match self {
            Validation::None => true,
            Validation::Windows(_, indices) => indices.is_empty(),
            Validation::Streams(s) => s.batches() == 0,
        }
    }
}

/// The training and validation data of a run.
pub(super) struct Data<'a> {
    pub windows: Windows<'a>,
    /// Stateful runs read these instead of `windows`.
    pub streams: Streams<'a>,
    pub train_idx: Vec<usize>,
    pub validation: Validation<'a>,
}

/// Splits the data: random held-out windows, or for stateful runs the
/// corpus's tail (a stream must stay whole); a separate validation stream
/// when given.
pub(super) fn data<'a>(
    spec: &ModelSpec,
    config: &TrainConfig,
    tokens: &'a [u32],
    validation_tokens: Option<&'a [u32]>,
) -> Result<Data<'a>, TrainError> {
    let w = spec.window;
    if let Err(e) = config.check_with_spec(spec) {
        return Err(TrainError::NoData(e.to_string()));
    }
    let (tokens, tail) = match (config.stateful, validation_tokens) {
        (true, None) if config.validation_split > 0.0 => {
            let cut = ((tokens.len() as f64) * (1.0 - config.validation_split)).round() as usize;
            (&tokens[..cut], Some(&tokens[cut..]))
        }
        _ => (tokens, validation_tokens),
    };
    let windows = Windows::new(tokens, w);
    let streams = Streams::new(tokens, config.batch_size, w);
    let (train_idx, validation) = match (config.stateful, validation_tokens) {
        (true, _) => (
            Vec::new(),
            tail.map_or(Validation::None, |t| {
                Validation::Streams(Streams::new(t, config.batch_size, w))
            }),
        ),
        (false, Some(v)) => {
            let v = Windows::new(v, w);
            let indices = (0..v.len()).collect();
            (
                (0..windows.len()).collect(),
                Validation::Windows(v, indices),
            )
        }
        (false, None) => {
            let (train, val) = split_windows(windows.len(), config.validation_split, config.seed);
            (train, Validation::Windows(Windows::new(tokens, w), val))
        }
    };
    let empty = if config.stateful {
        streams.batches() == 0
    } else {
        train_idx.is_empty()
    };
    if empty {
        return Err(TrainError::NoData(format!(
            "the dataset has {} tokens, too few for one window of {w} plus its target",
            tokens.len(),
        )));
    }
    Ok(Data {
        windows,
        streams,
        train_idx,
        validation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_disjoint_and_deterministic() {
        let (t1, v1) = split_windows(100, 0.2, 7);
        let (t2, v2) = split_windows(100, 0.2, 7);
        assert_eq!((t1.clone(), v1.clone()), (t2, v2));
        assert_eq!(v1.len(), 20);
        assert!(v1.iter().all(|i| !t1.contains(i)));
    }
}
