//! Training configuration: defaults, limits and validation.
use serde::{Deserialize, Serialize};

use crate::error::{check_range, InvalidField};
pub use crate::nn::LossPositions;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Optimizer {
    /// Weight decay as an L2 term added to the gradient (PyTorch `Adam`).
    Adam,
    /// Decoupled weight decay (PyTorch `AdamW`).
    AdamW,
}

/// A metric that callbacks watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Loss,
    Accuracy,
    Top5Accuracy,
    ValLoss,
    ValAccuracy,
    ValTop5Accuracy,
}

impl Metric {
    pub fn parse(field: &str, s: &str) -> Result<Self, InvalidField> {
        Ok(match s {
            "loss" => Metric::Loss,
            "accuracy" => Metric::Accuracy,
            "top5_accuracy" => Metric::Top5Accuracy,
            "val_loss" => Metric::ValLoss,
            "val_accuracy" => Metric::ValAccuracy,
            "val_top5_accuracy" => Metric::ValTop5Accuracy,
            _ => {
                return Err(InvalidField::new(
                    field,
                    format!(
                        "must be one of loss, accuracy, top5_accuracy, val_loss, val_accuracy, val_top5_accuracy, got {s:?}"
                    ),
                ))
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Metric::Loss => "loss",
            Metric::Accuracy => "accuracy",
            Metric::Top5Accuracy => "top5_accuracy",
            Metric::ValLoss => "val_loss",
            Metric::ValAccuracy => "val_accuracy",
            Metric::ValTop5Accuracy => "val_top5_accuracy",
        }
    }

    pub fn needs_validation(self) -> bool {
        matches!(
            self,
            Metric::ValLoss | Metric::ValAccuracy | Metric::ValTop5Accuracy
        )
    }

    /// Keras' `mode="auto"`: losses go down, accuracies up.
    pub fn auto_mode(self) -> Mode {
        match self {
            Metric::Loss | Metric::ValLoss => Mode::Min,
            _ => Mode::Max,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Min,
    Max,
}

/// What counts as better for a callback.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Monitor {
    pub metric: Metric,
    pub mode: Mode,
    /// An improvement must beat the best by more than this.
    pub min_delta: f64,
}

impl Monitor {
    pub fn improves(&self, value: f64, best: Option<f64>) -> bool {
        match best {
            None => value.is_finite(),
            Some(best) => match self.mode {
                Mode::Min => value < best - self.min_delta,
                Mode::Max => value > best + self.min_delta,
            },
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EarlyStopping {
    pub monitor: Monitor,
    /// Epochs without improvement before stopping.
    pub patience: u32,
    /// At the end, put back the weights of the best epoch.
    pub restore_best_weights: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReduceLrOnPlateau {
    pub monitor: Monitor,
    /// New rate = old rate * factor, in (0, 1).
    pub factor: f64,
    pub patience: u32,
    pub min_lr: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub epochs: u32,
    pub batch_size: usize,
    pub optimizer: Optimizer,
    pub learning_rate: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub epsilon: f64,
    pub weight_decay: f64,
    pub validation_split: f64,
    pub seed: u64,
    pub shuffle: bool,
    /// Scale gradients so their global L2 norm is at most this (0 = off).
    pub clip_grad_norm: f64,
    pub early_stopping: Option<EarlyStopping>,
    pub reduce_lr_on_plateau: Option<ReduceLrOnPlateau>,
    /// Register the best epoch's weights (by `best_monitor`) instead of the
    /// last epoch's; the best weights are kept in every checkpoint.
    pub keep_best: bool,
    /// What "best" means for keep_best and restore_best_weights.
    pub best_monitor: Monitor,
    /// A progress event every N batches (0 = not by count).
    pub progress_every_batches: u32,
    /// A progress event every T seconds (0 = not by time).
    pub progress_every_seconds: f64,
    /// Which predictions of each window the loss scores (configs written
    /// before the field trained the last one).
    #[serde(default = "LossPositions::before_the_field")]
    pub loss_positions: LossPositions,
    /// Truncated BPTT over `batch_size` parallel streams, the state carried
    /// from batch to batch and reset every epoch.
    #[serde(default)]
    pub stateful: bool,
}

/// A monitor as a client sends it.
#[derive(Clone, Debug, Default)]
pub struct MonitorRequest {
    pub metric: String,
    pub mode: String,
    pub min_delta: f64,
}

#[derive(Clone, Debug, Default)]
pub struct EarlyStoppingRequest {
    pub monitor: MonitorRequest,
    pub patience: u32,
    pub restore_best_weights: bool,
}

#[derive(Clone, Debug, Default)]
pub struct ReduceLrRequest {
    pub monitor: MonitorRequest,
    pub factor: Option<f64>,
    pub patience: u32,
    pub min_lr: f64,
}

/// A config as a client sends it: unset fields take defaults.
#[derive(Clone, Debug, Default)]
pub struct TrainConfigRequest {
    pub epochs: Option<u32>,
    pub batch_size: Option<usize>,
    pub optimizer: Option<String>,
    pub learning_rate: Option<f64>,
    pub beta1: Option<f64>,
    pub beta2: Option<f64>,
    pub epsilon: Option<f64>,
    pub weight_decay: Option<f64>,
    pub validation_split: Option<f64>,
    pub seed: Option<u64>,
    pub shuffle: Option<bool>,
    pub clip_grad_norm: Option<f64>,
    pub early_stopping: Option<EarlyStoppingRequest>,
    pub reduce_lr_on_plateau: Option<ReduceLrRequest>,
    pub keep_best: Option<bool>,
    pub progress_every_batches: Option<u32>,
    pub progress_every_seconds: Option<f64>,
    /// "every" (default) or "last".
    pub loss_positions: Option<String>,
    pub stateful: Option<bool>,
}

#[derive(Clone, Debug)]
pub struct TrainLimits {
    pub max_epochs: u32,
    pub max_batch_size: usize,
}

impl Default for TrainLimits {
    fn default() -> Self {
        Self {
            max_epochs: 100_000,
            max_batch_size: 65_536,
        }
    }
}

fn check_unit_interval(field: &str, v: f64) -> Result<f64, InvalidField> {
    if !(0.0..1.0).contains(&v) {
        return Err(InvalidField::new(
            field,
            format!("must be in [0, 1), got {v}"),
        ));
    }
    Ok(v)
}

fn check_non_negative(field: &str, v: f64) -> Result<f64, InvalidField> {
    if !(v >= 0.0 && v.is_finite()) {
        return Err(InvalidField::new(
            field,
            format!("must be a finite number >= 0, got {v}"),
        ));
    }
    Ok(v)
}

impl MonitorRequest {
    /// `metric` defaults to val_loss with validation data, loss without;
    /// `mode` to auto.
    fn resolve(&self, field: &str, has_validation: bool) -> Result<Monitor, InvalidField> {
        let metric = match self.metric.as_str() {
            "" if has_validation => Metric::ValLoss,
            "" => Metric::Loss,
            s => Metric::parse(&format!("{field}.monitor"), s)?,
        };
        if metric.needs_validation() && !has_validation {
            return Err(InvalidField::new(
                format!("{field}.monitor"),
                format!(
                    "is {} but the job has no validation data: set config.validation_split or validation_dataset_id",
                    metric.name()
                ),
            ));
        }
        let mode = match self.mode.as_str() {
            "" | "auto" => metric.auto_mode(),
            "min" => Mode::Min,
            "max" => Mode::Max,
            m => {
                return Err(InvalidField::new(
                    format!("{field}.mode"),
                    format!("must be auto, min or max, got {m:?}"),
                ))
            }
        };
        Ok(Monitor {
            metric,
            mode,
            min_delta: check_non_negative(&format!("{field}.min_delta"), self.min_delta)?,
        })
    }
}

impl TrainConfig {
    /// The rules that need the model: stateful training carries a state,
    /// which a bidirectional layer has not.
    pub fn check_with_spec(&self, spec: &crate::nn::ModelSpec) -> Result<(), InvalidField> {
        match spec.layers.iter().position(|l| l.bidirectional) {
            Some(i) if self.stateful => Err(InvalidField::new(
                "config.stateful",
                format!("needs unidirectional layers: spec.layers[{i}] is bidirectional, and a bidirectional layer has no state to carry"),
            )),
            _ => Ok(()),
        }
    }
}

impl TrainConfigRequest {
    /// Defaults: 10 epochs, batch 64, Adam(0.001, 0.9, 0.999, 1e-7) as
    /// Keras, no weight decay, no validation split, seed 0, shuffling on, no
    /// clipping, no callbacks, a progress event about once a second, the
    /// loss at every position (so the model answers prompts of any length
    /// up to its window), not stateful.
    /// `has_validation_dataset` tells whether a separate validation dataset
    /// was given.
    pub fn resolve(
        &self,
        limits: &TrainLimits,
        has_validation_dataset: bool,
    ) -> Result<TrainConfig, InvalidField> {
        let lr = check_learning_rate(self.learning_rate.unwrap_or(0.001))?;
        let epsilon = check_epsilon(self.epsilon.unwrap_or(1e-7))?;
        let optimizer = parse_optimizer(self.optimizer.as_deref())?;
        let validation_split = self.resolve_validation_split(has_validation_dataset)?;
        let has_validation = validation_split > 0.0 || has_validation_dataset;
        let early_stopping = (self.early_stopping.as_ref())
            .map(|e| e.resolve(has_validation))
            .transpose()?;
        let reduce_lr_on_plateau = (self.reduce_lr_on_plateau.as_ref())
            .map(|r| r.resolve(has_validation))
            .transpose()?;
        let best_monitor = match &early_stopping {
            Some(e) => e.monitor,
            None => MonitorRequest::default().resolve("config", has_validation)?,
        };
        let loss_positions = parse_loss_positions(self.loss_positions.as_deref())?;
        let progress_every_seconds = check_non_negative(
            "config.progress_every_seconds",
            self.progress_every_seconds.unwrap_or(1.0),
        )?;
        Ok(TrainConfig {
            epochs: check_range(
                "config.epochs",
                self.epochs.unwrap_or(10),
                1,
                limits.max_epochs,
            )?,
            batch_size: check_range(
                "config.batch_size",
                self.batch_size.unwrap_or(64),
                1,
                limits.max_batch_size,
            )?,
            optimizer,
            learning_rate: lr,
            beta1: check_unit_interval("config.beta1", self.beta1.unwrap_or(0.9))?,
            beta2: check_unit_interval("config.beta2", self.beta2.unwrap_or(0.999))?,
            epsilon,
            weight_decay: check_non_negative(
                "config.weight_decay",
                self.weight_decay.unwrap_or(0.0),
            )?,
            validation_split,
            seed: self.seed.unwrap_or(0),
            shuffle: self.shuffle.unwrap_or(true),
            clip_grad_norm: check_non_negative(
                "config.clip_grad_norm",
                self.clip_grad_norm.unwrap_or(0.0),
            )?,
            early_stopping,
            reduce_lr_on_plateau,
            keep_best: self.keep_best.unwrap_or(false),
            best_monitor,
            progress_every_batches: self.progress_every_batches.unwrap_or(0),
            progress_every_seconds,
            loss_positions,
            stateful: self.stateful.unwrap_or(false),
        })
    }

    /// The validation split, in [0, 1] and 0 when a validation dataset is
    /// given.
    fn resolve_validation_split(&self, has_validation_dataset: bool) -> Result<f64, InvalidField> {
        let split = check_unit_interval(
            "config.validation_split",
            self.validation_split.unwrap_or(0.0),
        )?;
        if split > 0.0 && has_validation_dataset {
            return Err(InvalidField::new(
                "config.validation_split",
                "must be 0 when validation_dataset_id is set",
            ));
        }
        Ok(split)
    }
}

impl EarlyStoppingRequest {
    fn resolve(&self, has_validation: bool) -> Result<EarlyStopping, InvalidField> {
        Ok(EarlyStopping {
            monitor: self
                .monitor
                .resolve("config.early_stopping", has_validation)?,
            patience: self.patience,
            restore_best_weights: self.restore_best_weights,
        })
    }
}

impl ReduceLrRequest {
    /// Defaults: factor 0.1, as Keras.
    fn resolve(&self, has_validation: bool) -> Result<ReduceLrOnPlateau, InvalidField> {
        let factor = self.factor.unwrap_or(0.1);
        if !(factor > 0.0 && factor < 1.0) {
            return Err(InvalidField::new(
                "config.reduce_lr_on_plateau.factor",
                format!("must be in (0, 1), got {factor}"),
            ));
        }
        Ok(ReduceLrOnPlateau {
            monitor: (self.monitor).resolve("config.reduce_lr_on_plateau", has_validation)?,
            factor,
            patience: self.patience,
            min_lr: check_non_negative("config.reduce_lr_on_plateau.min_lr", self.min_lr)?,
        })
    }
}

fn check_learning_rate(lr: f64) -> Result<f64, InvalidField> {
    if lr > 0.0 && lr.is_finite() {
        return Ok(lr);
    }
    Err(InvalidField::new(
        "config.learning_rate",
        format!("must be > 0 and finite, got {lr}"),
    ))
}

fn check_epsilon(epsilon: f64) -> Result<f64, InvalidField> {
    if epsilon > 0.0 && epsilon <= 1.0 {
        return Ok(epsilon);
    }
    Err(InvalidField::new(
        "config.epsilon",
        format!("must be in (0, 1], got {epsilon}"),
    ))
}

fn parse_optimizer(name: Option<&str>) -> Result<Optimizer, InvalidField> {
    match name {
        None | Some("") | Some("adam") => Ok(Optimizer::Adam),
        Some("adamw") => Ok(Optimizer::AdamW),
        Some(o) => Err(InvalidField::new(
            "config.optimizer",
            format!("must be adam or adamw, got {o:?}"),
        )),
    }
}

fn parse_loss_positions(name: Option<&str>) -> Result<LossPositions, InvalidField> {
    match name {
        None | Some("") | Some("every") => Ok(LossPositions::Every),
        Some("last") => Ok(LossPositions::Last),
        Some(p) => Err(InvalidField::new(
            "config.loss_positions",
            format!("must be every or last, got {p:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callbacks_need_validation_data_for_val_metrics() {
        let req = TrainConfigRequest {
            early_stopping: Some(EarlyStoppingRequest {
                monitor: MonitorRequest {
                    metric: "val_accuracy".into(),
                    ..Default::default()
                },
                patience: 2,
                restore_best_weights: true,
            }),
            ..Default::default()
        };
        let err = req.resolve(&TrainLimits::default(), false).unwrap_err();
        assert_eq!(err.field, "config.early_stopping.monitor");
        let ok = req.resolve(&TrainLimits::default(), true).unwrap();
        let es = ok.early_stopping.unwrap();
        assert_eq!(es.monitor.mode, Mode::Max);
        assert_eq!(ok.best_monitor, es.monitor);
    }

    #[test]
    fn monitor_improvement_respects_mode_and_min_delta() {
        let m = Monitor {
            metric: Metric::ValLoss,
            mode: Mode::Min,
            min_delta: 0.1,
        };
        assert!(m.improves(1.0, None));
        assert!(!m.improves(0.95, Some(1.0)));
        assert!(m.improves(0.85, Some(1.0)));
        assert!(!m.improves(f64::NAN, None));
    }
}
