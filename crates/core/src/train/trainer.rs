//! The training loop: shuffled mini-batches of windows, Adam/AdamW, softmax
//! cross-entropy, metrics, validation, callbacks (early stopping,
//! reduce-on-plateau, keep-best), gradient clipping, progress events and
//! epoch checkpoints. The loss scores the last position of each window or
//! every position; stateful runs read parallel streams and carry the
//! recurrent state from batch to batch (truncated BPTT), reset each epoch.
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use rand::seq::SliceRandom;

use super::adam::{Adam, AdamSettings};
use super::batches::{batch_tensors, carried_logits, stream_tensors, window_logits};
use super::callbacks::{callbacks, early_stop_reason, returns_best_weights, EpochEnd};
use super::checkpoint::{Checkpoint, RunState};
use super::config::{Metric, TrainConfig};
use super::evaluate::evaluate;
use super::parameters::{gradient_norm, non_finite_parameter, snapshot};
use super::split::{data, stream, Data, DROPOUT, SHUFFLE};
use super::tally::Tally;
use super::TrainError;
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

/// Trains a model (fresh, or from `input.resume`).
pub fn train(input: TrainInput, observer: &mut dyn TrainObserver) -> Result<Trained, TrainError> {
    let mut run = Run::new(input)?;
    let config = run.config;
    let mut stop = None;
    if run.state.stopped_early {
        stop = early_stop_reason(config, &run.state);
    }
    for epoch in run.first_epoch..=config.epochs {
        if stop.is_some() {
            break;
        }
        let epoch_start = Instant::now();
        let tally = run.train_epoch(epoch, observer)?;
        let metrics = run.epoch_metrics(epoch, &tally, epoch_start)?;
        run.state.epoch = epoch;
        run.state.history.push(metrics.clone());
        run.end_epoch(&metrics)?;
        observer
            .checkpoint(&run.checkpoint()?)
            .map_err(TrainError::Checkpoint)?;
        let run_epochs = (epoch - run.first_epoch + 1) as f64;
        observer.event(TrainEvent::Epoch {
            metrics,
            epochs: config.epochs,
            eta_seconds: run.started.elapsed().as_secs_f64() / run_epochs
                * (config.epochs - epoch) as f64,
        });
        if run.state.stopped_early {
            stop = early_stop_reason(config, &run.state);
        }
    }
    run.finish(stop.unwrap_or(StopReason::Completed {
        epochs: config.epochs,
    }))
}

/// A run in progress: its data, parameters, optimizer and counters.
struct Run<'a> {
    spec: &'a ModelSpec,
    config: &'a TrainConfig,
    device: &'a Device,
    data: Data<'a>,
    vars: Vec<(String, Var)>,
    network: Network,
    adam: Adam,
    state: RunState,
    best_parameters: Option<Vec<(String, Tensor)>>,
    /// Batches an epoch.
    batches: u32,
    first_epoch: u32,
    started: Instant,
    // Reused between batches.
    ids: Vec<u32>,
    targets: Vec<u32>,
}

impl<'a> Run<'a> {
    fn new(input: TrainInput<'a>) -> Result<Self, TrainError> {
        let TrainInput {
            spec,
            config,
            tokens,
            validation_tokens,
            device,
            resume,
        } = input;
        let data = data(spec, config, tokens, validation_tokens)?;
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
        let (state, best_parameters) = match resume {
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
            data.streams.batches()
        } else {
            data.train_idx.len().div_ceil(config.batch_size)
        } as u32;
        Ok(Run {
            spec,
            config,
            device,
            data,
            vars,
            network,
            adam,
            first_epoch: state.epoch + 1,
            state,
            best_parameters,
            batches,
            started: Instant::now(),
            ids: Vec::new(),
            targets: Vec::new(),
        })
    }

    /// One pass over the training data, with batch events as configured.
    fn train_epoch(
        &mut self,
        epoch: u32,
        observer: &mut dyn TrainObserver,
    ) -> Result<Tally, TrainError> {
        let config = self.config;
        let epoch_start = Instant::now();
        let mut last_report = Instant::now();
        let mut order = self.data.train_idx.clone();
        if config.shuffle {
            order.shuffle(&mut stream(config.seed, SHUFFLE, epoch));
        }
        let mut dropout = Dropout::from_rng(stream(config.seed, DROPOUT, epoch));
        let mut tally = Tally::default();
        // Stateful streams start every epoch from zeros.
        let mut carried = None;
        for b in 0..self.batches as usize {
            let batch = b as u32 + 1;
            if observer.cancelled() {
                return Err(TrainError::Cancelled);
            }
            let (logits, y, in_batch) = self.forward(b, &order, &mut carried, &mut dropout)?;
            let loss = self.step(&logits, &y, epoch, batch)?;
            tally.add(&logits, &y, loss, in_batch)?;
            let by_count = config.progress_every_batches > 0
                && batch.is_multiple_of(config.progress_every_batches);
            let by_time = config.progress_every_seconds > 0.0
                && last_report.elapsed().as_secs_f64() >= config.progress_every_seconds;
            if (by_count || by_time) && batch < self.batches {
                last_report = Instant::now();
                observer.event(TrainEvent::Batch(self.progress(
                    epoch,
                    batch,
                    &tally,
                    epoch_start,
                )));
            }
        }
        if let Some(name) = non_finite_parameter(&self.vars)? {
            return Err(TrainError::NonFinite {
                epoch,
                batch: self.batches,
                what: format!("weights of {name} became NaN or infinite"),
            });
        }
        Ok(tally)
    }

    /// Batch `b`'s scored logits, its targets and its window count.
    fn forward(
        &mut self,
        b: usize,
        order: &[usize],
        carried: &mut Option<Vec<LayerState>>,
        dropout: &mut Dropout,
    ) -> candle_core::Result<(Tensor, Tensor, usize)> {
        let (config, positions, device) = (self.config, self.config.loss_positions, self.device);
        let (ids, targets) = (&mut self.ids, &mut self.targets);
        if config.stateful {
            let streams = &self.data.streams;
            let (x, y) = stream_tensors(
                streams,
                b,
                self.spec.window,
                positions,
                device,
                ids,
                targets,
            )?;
            let logits = carried_logits(&self.network, &x, positions, carried, Some(dropout))?;
            Ok((logits, y, streams.streams()))
        } else {
            let lo = b * config.batch_size;
            let chunk = &order[lo..(lo + config.batch_size).min(order.len())];
            let (x, y) = batch_tensors(&self.data.windows, chunk, positions, device, ids, targets)?;
            let logits = window_logits(&self.network, &x, positions, Some(dropout))?;
            Ok((logits, y, chunk.len()))
        }
    }

    /// Backward pass, clipping and one optimizer step; the batch's loss.
    fn step(
        &mut self,
        logits: &Tensor,
        y: &Tensor,
        epoch: u32,
        batch: u32,
    ) -> Result<f64, TrainError> {
        let non_finite = |what: String| TrainError::NonFinite { epoch, batch, what };
        let loss = crate::nn::fused::cross_entropy(logits, y)?;
        let loss_value = loss.to_scalar::<f32>()? as f64;
        if !loss_value.is_finite() {
            return Err(non_finite(format!("loss is {loss_value}")));
        }
        let grads = loss.backward()?;
        let norm = gradient_norm(&grads, &self.vars)?;
        if !norm.is_finite() {
            return Err(non_finite(format!("gradient norm is {norm}")));
        }
        let clip = self.config.clip_grad_norm;
        let scale = if clip > 0.0 && norm > clip {
            clip / norm
        } else {
            1.0
        };
        self.adam.step(&grads, scale)?;
        Ok(loss_value)
    }

    fn progress(
        &self,
        epoch: u32,
        batch: u32,
        tally: &Tally,
        epoch_start: Instant,
    ) -> BatchProgress {
        let epochs = self.config.epochs;
        let done = (epoch - self.first_epoch) as f64 + batch as f64 / self.batches as f64;
        let elapsed = self.started.elapsed().as_secs_f64();
        BatchProgress {
            epoch,
            epochs,
            batch,
            batches: self.batches,
            loss: tally.loss(),
            accuracy: tally.accuracy(),
            learning_rate: self.adam.settings.learning_rate,
            samples_per_second: tally.windows as f64 / epoch_start.elapsed().as_secs_f64(),
            elapsed_seconds: elapsed,
            eta_seconds: elapsed / done * ((epochs - self.first_epoch + 1) as f64 - done),
        }
    }

    /// The epoch's metrics, validation included.
    fn epoch_metrics(
        &self,
        epoch: u32,
        tally: &Tally,
        epoch_start: Instant,
    ) -> Result<EpochMetrics, TrainError> {
        let train_seconds = epoch_start.elapsed().as_secs_f64();
        let validation = &self.data.validation;
        let val = if validation.is_none() {
            None
        } else {
            let positions = self.config.loss_positions;
            Some(evaluate(&self.network, validation, positions, self.device)?)
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
            learning_rate: self.adam.settings.learning_rate,
            samples_per_second: tally.windows as f64 / train_seconds,
            elapsed_seconds: self.state.history.last().map_or(0.0, |m| m.elapsed_seconds)
                + epoch_seconds,
        };
        if let Some(v) = metrics.val_loss.filter(|v| !v.is_finite()) {
            return Err(TrainError::NonFinite {
                epoch,
                batch: self.batches,
                what: format!("validation loss is {v}"),
            });
        }
        Ok(metrics)
    }

    /// Runs the epoch-end callbacks and records what the checkpoint keeps.
    fn end_epoch(&mut self, metrics: &EpochMetrics) -> candle_core::Result<()> {
        let mut end = EpochEnd {
            metrics,
            state: &mut self.state,
            learning_rate: &mut self.adam.settings.learning_rate,
            vars: &self.vars,
            best_parameters: &mut self.best_parameters,
        };
        for callback in callbacks(self.config) {
            callback.epoch_end(&mut end)?;
        }
        self.state.learning_rate = self.adam.settings.learning_rate;
        self.state.adam_step = self.adam.state().step;
        Ok(())
    }

    fn checkpoint(&self) -> candle_core::Result<Checkpoint> {
        Ok(Checkpoint {
            state: self.state.clone(),
            parameters: snapshot(&self.vars)?,
            adam: self.adam.state().clone(),
            best_parameters: self.best_parameters.clone(),
        })
    }

    fn finish(self, stop: StopReason) -> Result<Trained, TrainError> {
        let restore = returns_best_weights(self.config, &stop);
        let (parameters, weights_epoch) =
            match (restore, self.best_parameters, self.state.best_epoch) {
                (true, Some(best), Some(epoch)) => (best, epoch),
                _ => (snapshot(&self.vars)?, self.state.epoch),
            };
        Ok(Trained {
            parameters,
            history: self.state.history,
            stop,
            best_epoch: self.state.best_epoch,
            weights_epoch,
        })
    }
}
