//! The training loop: shuffled mini-batches of windows, Adam, softmax
//! cross-entropy, accuracy, validation, progress events.
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor, Var};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::adam::Adam;
use super::config::TrainConfig;
use super::TrainError;
use crate::data::Windows;
use crate::nn::metadata::EpochMetrics;
use crate::nn::{initial_parameters, Dropout, ModelSpec, Network};

/// Running figures inside an epoch.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchProgress {
    pub epoch: u32,
    pub epochs: u32,
    pub batch: u32,
    pub batches: u32,
    pub loss: f64,
    pub accuracy: f64,
    pub samples_per_second: f64,
    pub elapsed_seconds: f64,
    pub eta_seconds: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TrainEvent {
    Batch(BatchProgress),
    Epoch {
        metrics: EpochMetrics,
        epochs: u32,
        eta_seconds: f64,
    },
}

pub struct Trained {
    /// Final weights, named as in a PyTorch state_dict.
    pub parameters: Vec<(String, Tensor)>,
    pub history: Vec<EpochMetrics>,
    pub stop_reason: String,
}

pub struct TrainInput<'a> {
    pub spec: &'a ModelSpec,
    pub config: &'a TrainConfig,
    pub tokens: &'a [u32],
    pub device: &'a Device,
    /// How often a running epoch reports progress.
    pub progress_interval: Duration,
}

/// Sum of loss and correct predictions over some windows.
#[derive(Default)]
struct Tally {
    loss_sum: f64,
    correct: f64,
    samples: usize,
}

impl Tally {
    fn add(&mut self, logits: &Tensor, targets: &Tensor, loss: f64) -> candle_core::Result<()> {
        let n = targets.dim(0)?;
        let correct = logits
            .argmax(1)?
            .eq(targets)?
            .to_dtype(DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()?;
        self.loss_sum += loss * n as f64;
        self.correct += correct as f64;
        self.samples += n;
        Ok(())
    }

    fn loss(&self) -> f64 {
        self.loss_sum / self.samples.max(1) as f64
    }

    fn accuracy(&self) -> f64 {
        self.correct / self.samples.max(1) as f64
    }
}

fn batch_tensors(
    windows: &Windows,
    indices: &[usize],
    device: &Device,
    ids: &mut Vec<u32>,
    targets: &mut Vec<u32>,
) -> candle_core::Result<(Tensor, Tensor)> {
    windows.gather(indices, ids, targets);
    let n = indices.len();
    Ok((
        Tensor::from_slice(ids, (n, windows.window()), device)?,
        Tensor::from_slice(targets, n, device)?,
    ))
}

/// Splits window indices into (train, validation), deterministic from the
/// seed; no window is in both.
fn split_windows(count: usize, fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut all: Vec<usize> = (0..count).collect();
    if fraction <= 0.0 {
        return (all, Vec::new());
    }
    all.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_0001));
    let val = ((count as f64 * fraction).round() as usize).clamp(1, count.saturating_sub(1));
    let train = all.split_off(val);
    (train, all)
}

fn evaluate(
    network: &Network,
    windows: &Windows,
    indices: &[usize],
    device: &Device,
) -> candle_core::Result<Tally> {
    let mut tally = Tally::default();
    let (mut ids, mut targets) = (Vec::new(), Vec::new());
    for chunk in indices.chunks(1024) {
        let (x, y) = batch_tensors(windows, chunk, device, &mut ids, &mut targets)?;
        let logits = network.forward(&x, None)?;
        let loss = crate::nn::fused::cross_entropy(&logits, &y)?.to_scalar::<f32>()? as f64;
        tally.add(&logits, &y, loss)?;
    }
    Ok(tally)
}

/// Trains a fresh model. `cancel` is checked between batches.
pub fn train(
    input: TrainInput,
    cancel: &AtomicBool,
    on_event: &mut dyn FnMut(TrainEvent),
) -> Result<Trained, TrainError> {
    let TrainInput {
        spec,
        config,
        tokens,
        device,
        progress_interval,
    } = input;
    let windows = Windows::new(tokens, spec.window);
    let (mut train_idx, val_idx) =
        split_windows(windows.len(), config.validation_split, config.seed);
    if train_idx.is_empty() {
        return Err(TrainError::NoData(format!(
            "the dataset has {} tokens, too few for one window of {} plus its target",
            tokens.len(),
            spec.window
        )));
    }
    let named = initial_parameters(spec, config.seed, device)?;
    let vars: Vec<(String, Var)> = named
        .into_iter()
        .map(|(n, t)| Ok((n, Var::from_tensor(&t)?)))
        .collect::<candle_core::Result<_>>()?;
    let network = Network::from_tensors(
        spec,
        &vars
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect(),
    )?;
    let mut adam = Adam::new(
        vars.iter().map(|(_, v)| v.clone()).collect(),
        config.learning_rate,
        config.beta1,
        config.beta2,
        config.epsilon,
    )?;
    let mut shuffle_rng = ChaCha8Rng::seed_from_u64(config.seed ^ 0x5eed_0002);
    let mut dropout = Dropout::new(config.seed ^ 0x5eed_0003);
    let batches = train_idx.len().div_ceil(config.batch_size) as u32;
    let started = Instant::now();
    let mut history = Vec::new();
    let (mut ids, mut targets) = (Vec::new(), Vec::new());
    for epoch in 1..=config.epochs {
        let epoch_start = Instant::now();
        let mut last_report = Instant::now();
        if config.shuffle {
            train_idx.shuffle(&mut shuffle_rng);
        }
        let mut tally = Tally::default();
        for (b, chunk) in train_idx.chunks(config.batch_size).enumerate() {
            if cancel.load(Ordering::Relaxed) {
                return Err(TrainError::Cancelled);
            }
            let (x, y) = batch_tensors(&windows, chunk, device, &mut ids, &mut targets)?;
            let logits = network.forward(&x, Some(&mut dropout))?;
            let loss = crate::nn::fused::cross_entropy(&logits, &y)?;
            let loss_value = loss.to_scalar::<f32>()? as f64;
            if !loss_value.is_finite() {
                return Err(TrainError::NonFinite {
                    epoch,
                    batch: b as u32 + 1,
                    what: format!("loss is {loss_value}"),
                });
            }
            let grads = loss.backward()?;
            adam.step(&grads)?;
            tally.add(&logits, &y, loss_value)?;
            if last_report.elapsed() >= progress_interval && (b as u32 + 1) < batches {
                last_report = Instant::now();
                let done = (epoch - 1) as f64 + (b + 1) as f64 / batches as f64;
                let elapsed = started.elapsed().as_secs_f64();
                on_event(TrainEvent::Batch(BatchProgress {
                    epoch,
                    epochs: config.epochs,
                    batch: b as u32 + 1,
                    batches,
                    loss: tally.loss(),
                    accuracy: tally.accuracy(),
                    samples_per_second: tally.samples as f64 / epoch_start.elapsed().as_secs_f64(),
                    elapsed_seconds: elapsed,
                    eta_seconds: elapsed / done * (config.epochs as f64 - done),
                }));
            }
        }
        let epoch_seconds = epoch_start.elapsed().as_secs_f64();
        let (val_loss, val_accuracy) = if val_idx.is_empty() {
            (None, None)
        } else {
            let v = evaluate(&network, &windows, &val_idx, device)?;
            (Some(v.loss()), Some(v.accuracy()))
        };
        let elapsed = started.elapsed().as_secs_f64();
        let metrics = EpochMetrics {
            epoch,
            loss: tally.loss(),
            accuracy: tally.accuracy(),
            val_loss,
            val_accuracy,
            learning_rate: adam.learning_rate,
            samples_per_second: tally.samples as f64 / epoch_seconds,
            elapsed_seconds: elapsed,
        };
        history.push(metrics.clone());
        on_event(TrainEvent::Epoch {
            metrics,
            epochs: config.epochs,
            eta_seconds: elapsed / epoch as f64 * (config.epochs - epoch) as f64,
        });
    }
    let parameters = vars
        .into_iter()
        .map(|(n, v)| Ok((n, v.as_detached_tensor().copy()?)))
        .collect::<candle_core::Result<_>>()?;
    Ok(Trained {
        parameters,
        history,
        stop_reason: format!("completed {} epochs", config.epochs),
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
