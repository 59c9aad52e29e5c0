//! The training loop: shuffled mini-batches of windows, Adam/AdamW, softmax
//! cross-entropy, metrics, validation, callbacks (early stopping,
//! reduce-on-plateau, keep-best), gradient clipping, progress events and
//! epoch checkpoints. The loss scores the last position of each window or
//! every position; stateful runs read parallel streams and carry the
//! recurrent state from batch to batch (truncated BPTT), reset each epoch.
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::adam::{Adam, AdamSettings};
use super::checkpoint::{Checkpoint, RunState};
use super::config::{LossPositions, Metric, Monitor, TrainConfig};
use super::TrainError;
use crate::data::{Streams, Windows};
use crate::nn::metadata::EpochMetrics;
use crate::nn::{initial_parameters, Dropout, LayerState, ModelSpec, Network};

/// Running figures inside an epoch.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BatchProgress {
    pub epoch: u32,
    pub epochs: u32,
    pub batch: u32,
    pub batches: u32,
    pub loss: f64,
    pub accuracy: f64,
    pub learning_rate: f64,
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

/// Why a run ended normally.
#[derive(Clone, Debug, PartialEq)]
pub enum StopReason {
    Completed {
        epochs: u32,
    },
    EarlyStopped {
        epoch: u32,
        best_epoch: Option<u32>,
        metric: Metric,
        patience: u32,
    },
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::Completed { epochs } => {
                let unit = if *epochs == 1 { "epoch" } else { "epochs" };
                write!(f, "completed {epochs} {unit}")
            }
            StopReason::EarlyStopped {
                epoch,
                best_epoch,
                metric,
                patience,
            } => {
                write!(
                    f,
                    "early stopping at epoch {epoch}: {} did not improve for {patience} epochs",
                    metric.name()
                )?;
                if let Some(b) = best_epoch {
                    write!(f, "; best epoch {b}")?;
                }
                Ok(())
            }
        }
    }
}

pub struct Trained {
    /// Final weights (the best epoch's when asked), named as in a PyTorch
    /// state_dict.
    pub parameters: Vec<(String, Tensor)>,
    pub history: Vec<EpochMetrics>,
    pub stop: StopReason,
    /// Best epoch by the config's best monitor.
    pub best_epoch: Option<u32>,
    /// The epoch whose weights `parameters` are.
    pub weights_epoch: u32,
}

/// What the caller gives the loop and gets from it while it runs.
pub trait TrainObserver {
    fn event(&mut self, event: TrainEvent);
    /// Persists a checkpoint (atomically); an error fails the run.
    fn checkpoint(&mut self, checkpoint: &Checkpoint) -> Result<(), String>;
    /// Checked before every batch.
    fn cancelled(&self) -> bool;
}

pub struct TrainInput<'a> {
    pub spec: &'a ModelSpec,
    pub config: &'a TrainConfig,
    pub tokens: &'a [u32],
    /// A separate validation token stream; else `config.validation_split`.
    pub validation_tokens: Option<&'a [u32]>,
    pub device: &'a Device,
    /// Continue from this checkpoint instead of fresh weights.
    pub resume: Option<Checkpoint>,
}

/// Sums of loss, top-1 and top-5 hits over the scored positions of some
/// windows.
#[derive(Default)]
struct Tally {
    loss_sum: f64,
    correct: f64,
    top5: f64,
    /// Scored positions.
    samples: usize,
    windows: usize,
}

impl Tally {
    /// `logits` [N, vocab] of `windows` windows against `targets` [N].
    fn add(
        &mut self,
        logits: &Tensor,
        targets: &Tensor,
        loss: f64,
        windows: usize,
    ) -> candle_core::Result<()> {
        let n = targets.dim(0)?;
        self.windows += windows;
        let correct = logits
            .argmax(1)?
            .eq(targets)?
            .to_dtype(DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()?;
        // A target is in the top 5 when fewer than 5 logits beat it.
        let target_logit = logits.gather(&targets.unsqueeze(1)?, 1)?;
        let top5 = logits
            .broadcast_gt(&target_logit)?
            .to_dtype(DType::F32)?
            .sum(1)?
            .lt(5f64)?
            .to_dtype(DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()?;
        self.loss_sum += loss * n as f64;
        self.correct += correct as f64;
        self.top5 += top5 as f64;
        self.samples += n;
        Ok(())
    }

    fn loss(&self) -> f64 {
        self.loss_sum / self.samples.max(1) as f64
    }

    fn accuracy(&self) -> f64 {
        self.correct / self.samples.max(1) as f64
    }

    fn top5_accuracy(&self) -> f64 {
        self.top5 / self.samples.max(1) as f64
    }
}

fn batch_tensors(
    windows: &Windows,
    indices: &[usize],
    positions: LossPositions,
    device: &Device,
    ids: &mut Vec<u32>,
    targets: &mut Vec<u32>,
) -> candle_core::Result<(Tensor, Tensor)> {
    match positions {
        LossPositions::Last => windows.gather(indices, ids, targets),
        LossPositions::Every => windows.gather_every(indices, ids, targets),
    }
    let n = indices.len();
    Ok((
        Tensor::from_slice(ids, (n, windows.window()), device)?,
        Tensor::from_slice(targets, targets.len(), device)?,
    ))
}

/// Batch `k` of `streams` as tensors: ids [S, w], targets [S] or [S*w].
fn stream_tensors(
    streams: &Streams,
    k: usize,
    window: usize,
    positions: LossPositions,
    device: &Device,
    ids: &mut Vec<u32>,
    targets: &mut Vec<u32>,
) -> candle_core::Result<(Tensor, Tensor)> {
    streams.gather(k, positions == LossPositions::Every, ids, targets);
    Ok((
        Tensor::from_slice(ids, (streams.streams(), window), device)?,
        Tensor::from_slice(targets, targets.len(), device)?,
    ))
}

/// Logits [N, vocab] of the scored positions, in the targets' order.
fn flat_logits(logits: Tensor) -> candle_core::Result<Tensor> {
    match logits.dims() {
        &[b, t, v] => logits.reshape((b * t, v)),
        _ => Ok(logits),
    }
}

/// The scored logits of a batch of windows that each start from zeros.
fn window_logits(
    network: &Network,
    x: &Tensor,
    positions: LossPositions,
    dropout: Option<&mut Dropout>,
) -> candle_core::Result<Tensor> {
    match positions {
        LossPositions::Last => network.forward(x, dropout),
        LossPositions::Every => flat_logits(network.forward_every(x, dropout)?),
    }
}

/// The scored logits of a stateful batch from `carried` (zeros when
/// None), which becomes the batch's final state, detached: gradients stop
/// at the batch's start (truncated BPTT).
fn carried_logits(
    network: &Network,
    x: &Tensor,
    positions: LossPositions,
    carried: &mut Option<Vec<LayerState>>,
    dropout: Option<&mut Dropout>,
) -> candle_core::Result<Tensor> {
    let every = positions == LossPositions::Every;
    let (logits, states) = network.forward_carried(x, carried.as_deref(), dropout, every)?;
    *carried = Some(
        states
            .into_iter()
            .map(|s| LayerState {
                h: s.h.detach(),
                c: s.c.map(|c| c.detach()),
            })
            .collect(),
    );
    flat_logits(logits)
}

/// A random stream for one purpose and epoch, derived from the seed, so
/// that resuming at an epoch needs no saved RNG state.
fn stream(seed: u64, purpose: u64, epoch: u32) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream((purpose << 32) | epoch as u64);
    rng
}

const SPLIT: u64 = 1;
const SHUFFLE: u64 = 2;
const DROPOUT: u64 = 3;

/// Splits window indices into (train, validation), deterministic from the
/// seed; no window is in both.
fn split_windows(count: usize, fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
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
enum Validation<'a> {
    None,
    /// Windows (by index) that start from zeros.
    Windows(Windows<'a>, Vec<usize>),
    /// Parallel streams read with the state carried.
    Streams(Streams<'a>),
}

impl Validation<'_> {
    fn is_none(&self) -> bool {
        match self {
            Validation::None => true,
            Validation::Windows(_, indices) => indices.is_empty(),
            Validation::Streams(s) => s.batches() == 0,
        }
    }
}

/// The training and validation data of a run.
struct Data<'a> {
    windows: Windows<'a>,
    /// Stateful runs read these instead of `windows`.
    streams: Streams<'a>,
    train_idx: Vec<usize>,
    validation: Validation<'a>,
}

/// Splits the data: random held-out windows, or for stateful runs the
/// corpus's tail (a stream must stay whole); a separate validation stream
/// when given.
fn data<'a>(
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

fn evaluate(
    network: &Network,
    validation: &Validation,
    positions: LossPositions,
    device: &Device,
) -> candle_core::Result<Tally> {
    let mut tally = Tally::default();
    let (mut ids, mut targets) = (Vec::new(), Vec::new());
    let mut score = |logits: Tensor, y: &Tensor, windows: usize| -> candle_core::Result<()> {
        let loss = crate::nn::fused::cross_entropy(&logits, y)?.to_scalar::<f32>()? as f64;
        tally.add(&logits, y, loss, windows)
    };
    match validation {
        Validation::None => {}
        Validation::Windows(windows, indices) => {
            for chunk in indices.chunks(1024) {
                let (x, y) =
                    batch_tensors(windows, chunk, positions, device, &mut ids, &mut targets)?;
                score(
                    window_logits(network, &x, positions, None)?,
                    &y,
                    chunk.len(),
                )?;
            }
        }
        Validation::Streams(streams) => {
            let mut carried = None;
            let w = network.spec.window;
            for k in 0..streams.batches() {
                let (x, y) =
                    stream_tensors(streams, k, w, positions, device, &mut ids, &mut targets)?;
                let logits = carried_logits(network, &x, positions, &mut carried, None)?;
                score(logits, &y, streams.streams())?;
            }
        }
    }
    Ok(tally)
}

fn metric_value(m: &EpochMetrics, metric: Metric) -> f64 {
    let v = match metric {
        Metric::Loss => Some(m.loss),
        Metric::Accuracy => Some(m.accuracy),
        Metric::Top5Accuracy => Some(m.top5_accuracy),
        Metric::ValLoss => m.val_loss,
        Metric::ValAccuracy => m.val_accuracy,
        Metric::ValTop5Accuracy => m.val_top5_accuracy,
    };
    v.unwrap_or(f64::NAN)
}

fn snapshot(vars: &[(String, Var)]) -> candle_core::Result<Vec<(String, Tensor)>> {
    vars.iter()
        .map(|(n, v)| Ok((n.clone(), v.as_detached_tensor().copy()?)))
        .collect()
}

/// Global L2 norm of the gradients of `vars`.
fn gradient_norm(
    grads: &candle_core::backprop::GradStore,
    vars: &[(String, Var)],
) -> candle_core::Result<f64> {
    let mut sum = 0f64;
    for (_, v) in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            let mut s = g
                .sqr()?
                .sum_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
            if s.is_infinite() {
                // Squares of huge but finite gradients overflow f32.
                s = g
                    .to_dtype(DType::F64)?
                    .sqr()?
                    .sum_all()?
                    .to_scalar::<f64>()?;
            }
            sum += s;
        }
    }
    Ok(sum.sqrt())
}

/// The first parameter holding a NaN or an infinity, if any.
fn non_finite_parameter(vars: &[(String, Var)]) -> candle_core::Result<Option<String>> {
    for (name, v) in vars {
        if !crate::nn::is_finite(v.as_tensor())? {
            return Ok(Some(name.clone()));
        }
    }
    Ok(None)
}

/// Trains a model (fresh, or from `input.resume`).
pub fn train(input: TrainInput, observer: &mut dyn TrainObserver) -> Result<Trained, TrainError> {
    let TrainInput {
        spec,
        config,
        tokens,
        validation_tokens,
        device,
        resume,
    } = input;
    let positions = config.loss_positions;
    let Data {
        windows,
        streams,
        train_idx,
        validation,
    } = data(spec, config, tokens, validation_tokens)?;
    let initial = match &resume {
        Some(cp) => cp.parameters.clone(),
        None => initial_parameters(spec, config.seed, device)?,
    };
    let vars: Vec<(String, Var)> = initial
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
        AdamSettings {
            optimizer: config.optimizer,
            learning_rate: config.learning_rate,
            beta1: config.beta1,
            beta2: config.beta2,
            epsilon: config.epsilon,
            weight_decay: config.weight_decay,
        },
    )?;
    let keep_best_weights = config.keep_best
        || config
            .early_stopping
            .as_ref()
            .is_some_and(|e| e.restore_best_weights);
    let (mut state, mut best_parameters) = match resume {
        Some(cp) => {
            adam.restore(cp.adam)?;
            adam.settings.learning_rate = cp.state.learning_rate;
            (cp.state, cp.best_parameters)
        }
        None => (
            RunState {
                learning_rate: config.learning_rate,
                ..Default::default()
            },
            None,
        ),
    };
    let batches = if config.stateful {
        streams.batches()
    } else {
        train_idx.len().div_ceil(config.batch_size)
    } as u32;
    let started = Instant::now();
    let first_epoch = state.epoch + 1;
    let (mut ids, mut targets) = (Vec::new(), Vec::new());
    let mut stop = None;
    if state.stopped_early {
        stop = early_stop_reason(config, &state);
    }
    for epoch in first_epoch..=config.epochs {
        if stop.is_some() {
            break;
        }
        let epoch_start = Instant::now();
        let mut last_report = Instant::now();
        let mut order = train_idx.clone();
        if config.shuffle {
            order.shuffle(&mut stream(config.seed, SHUFFLE, epoch));
        }
        let mut dropout = Dropout::from_rng(stream(config.seed, DROPOUT, epoch));
        let mut tally = Tally::default();
        // Stateful streams start every epoch from zeros.
        let mut carried = None;
        for b in 0..batches as usize {
            let batch = b as u32 + 1;
            if observer.cancelled() {
                return Err(TrainError::Cancelled);
            }
            let non_finite = |what: String| TrainError::NonFinite { epoch, batch, what };
            let (logits, y, in_batch) = if config.stateful {
                let w = spec.window;
                let (x, y) =
                    stream_tensors(&streams, b, w, positions, device, &mut ids, &mut targets)?;
                let d = Some(&mut dropout);
                let logits = carried_logits(&network, &x, positions, &mut carried, d)?;
                (logits, y, streams.streams())
            } else {
                let lo = b * config.batch_size;
                let chunk = &order[lo..(lo + config.batch_size).min(order.len())];
                let (x, y) =
                    batch_tensors(&windows, chunk, positions, device, &mut ids, &mut targets)?;
                let logits = window_logits(&network, &x, positions, Some(&mut dropout))?;
                (logits, y, chunk.len())
            };
            let loss = crate::nn::fused::cross_entropy(&logits, &y)?;
            let loss_value = loss.to_scalar::<f32>()? as f64;
            if !loss_value.is_finite() {
                return Err(non_finite(format!("loss is {loss_value}")));
            }
            let grads = loss.backward()?;
            let norm = gradient_norm(&grads, &vars)?;
            if !norm.is_finite() {
                return Err(non_finite(format!("gradient norm is {norm}")));
            }
            let scale = if config.clip_grad_norm > 0.0 && norm > config.clip_grad_norm {
                config.clip_grad_norm / norm
            } else {
                1.0
            };
            adam.step(&grads, scale)?;
            tally.add(&logits, &y, loss_value, in_batch)?;
            let by_count = config.progress_every_batches > 0
                && batch.is_multiple_of(config.progress_every_batches);
            let by_time = config.progress_every_seconds > 0.0
                && last_report.elapsed().as_secs_f64() >= config.progress_every_seconds;
            if (by_count || by_time) && batch < batches {
                last_report = Instant::now();
                let done = (epoch - first_epoch) as f64 + batch as f64 / batches as f64;
                let elapsed = started.elapsed().as_secs_f64();
                observer.event(TrainEvent::Batch(BatchProgress {
                    epoch,
                    epochs: config.epochs,
                    batch,
                    batches,
                    loss: tally.loss(),
                    accuracy: tally.accuracy(),
                    learning_rate: adam.settings.learning_rate,
                    samples_per_second: tally.windows as f64 / epoch_start.elapsed().as_secs_f64(),
                    elapsed_seconds: elapsed,
                    eta_seconds: elapsed / done * ((config.epochs - first_epoch + 1) as f64 - done),
                }));
            }
        }
        if let Some(name) = non_finite_parameter(&vars)? {
            return Err(TrainError::NonFinite {
                epoch,
                batch: batches,
                what: format!("weights of {name} became NaN or infinite"),
            });
        }
        let train_seconds = epoch_start.elapsed().as_secs_f64();
        let val = if validation.is_none() {
            None
        } else {
            Some(evaluate(&network, &validation, positions, device)?)
        };
        // The epoch's time includes its validation, as batch events' does.
        let epoch_seconds = epoch_start.elapsed().as_secs_f64();
        let metrics = EpochMetrics {
            epoch,
            loss: tally.loss(),
            accuracy: tally.accuracy(),
            top5_accuracy: tally.top5_accuracy(),
            perplexity: tally.loss().exp(),
            val_loss: val.as_ref().map(Tally::loss),
            val_accuracy: val.as_ref().map(Tally::accuracy),
            val_top5_accuracy: val.as_ref().map(Tally::top5_accuracy),
            val_perplexity: val.as_ref().map(|v| v.loss().exp()),
            learning_rate: adam.settings.learning_rate,
            samples_per_second: tally.windows as f64 / train_seconds,
            elapsed_seconds: state.history.last().map_or(0.0, |m| m.elapsed_seconds)
                + epoch_seconds,
        };
        if let Some(v) = metrics.val_loss.filter(|v| !v.is_finite()) {
            return Err(TrainError::NonFinite {
                epoch,
                batch: batches,
                what: format!("validation loss is {v}"),
            });
        }
        state.epoch = epoch;
        state.history.push(metrics.clone());
        // Best weights by the config's monitor.
        let best_value = metric_value(&metrics, config.best_monitor.metric);
        if config.best_monitor.improves(best_value, state.best_value) {
            state.best_value = Some(best_value);
            state.best_epoch = Some(epoch);
            if keep_best_weights {
                best_parameters = Some(snapshot(&vars)?);
            }
        }
        if let Some(es) = &config.early_stopping {
            let v = metric_value(&metrics, es.monitor.metric);
            if es.monitor.improves(v, state.early_stopping_best) {
                state.early_stopping_best = Some(v);
                state.early_stopping_wait = 0;
            } else {
                state.early_stopping_wait += 1;
                if state.early_stopping_wait >= es.patience {
                    state.stopped_early = true;
                }
            }
        }
        if let Some(rp) = &config.reduce_lr_on_plateau {
            let v = metric_value(&metrics, rp.monitor.metric);
            if rp.monitor.improves(v, state.plateau_best) {
                state.plateau_best = Some(v);
                state.plateau_wait = 0;
            } else {
                state.plateau_wait += 1;
                if state.plateau_wait >= rp.patience && adam.settings.learning_rate > rp.min_lr {
                    adam.settings.learning_rate =
                        (adam.settings.learning_rate * rp.factor).max(rp.min_lr);
                    state.plateau_wait = 0;
                }
            }
        }
        state.learning_rate = adam.settings.learning_rate;
        state.adam_step = adam.state().step;
        observer
            .checkpoint(&Checkpoint {
                state: state.clone(),
                parameters: snapshot(&vars)?,
                adam: adam.state().clone(),
                best_parameters: best_parameters.clone(),
            })
            .map_err(TrainError::Checkpoint)?;
        let run_epochs = (epoch - first_epoch + 1) as f64;
        observer.event(TrainEvent::Epoch {
            metrics,
            epochs: config.epochs,
            eta_seconds: started.elapsed().as_secs_f64() / run_epochs
                * (config.epochs - epoch) as f64,
        });
        if state.stopped_early {
            stop = early_stop_reason(config, &state);
        }
    }
    let stop = stop.unwrap_or(StopReason::Completed {
        epochs: config.epochs,
    });
    let restore = matches!(stop, StopReason::EarlyStopped { .. })
        && config
            .early_stopping
            .as_ref()
            .is_some_and(|e| e.restore_best_weights)
        || config.keep_best;
    let (parameters, weights_epoch) = match (restore, best_parameters, state.best_epoch) {
        (true, Some(best), Some(epoch)) => (best, epoch),
        _ => (snapshot(&vars)?, state.epoch),
    };
    Ok(Trained {
        parameters,
        history: state.history,
        stop,
        best_epoch: state.best_epoch,
        weights_epoch,
    })
}

fn early_stop_reason(config: &TrainConfig, state: &RunState) -> Option<StopReason> {
    let es = config.early_stopping.as_ref()?;
    Some(StopReason::EarlyStopped {
        epoch: state.epoch,
        best_epoch: best_epoch_by(&es.monitor, &state.history),
        metric: es.monitor.metric,
        patience: es.patience,
    })
}

/// The epoch with the best value of the monitor (first on ties).
fn best_epoch_by(monitor: &Monitor, history: &[EpochMetrics]) -> Option<u32> {
    let mut best: Option<(u32, f64)> = None;
    for m in history {
        let v = metric_value(m, monitor.metric);
        if monitor.improves(v, best.map(|b| b.1)) {
            best = Some((m.epoch, v));
        }
    }
    best.map(|b| b.0)
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
