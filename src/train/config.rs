//! Training configuration: defaults, limits and validation.
use serde::{Deserialize, Serialize};

use crate::error::{check_range, InvalidField};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub epochs: u32,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub epsilon: f64,
    pub validation_split: f64,
    pub seed: u64,
    pub shuffle: bool,
}

/// A config as a client sends it: unset fields take defaults.
#[derive(Clone, Debug, Default)]
pub struct TrainConfigRequest {
    pub epochs: Option<u32>,
    pub batch_size: Option<usize>,
    pub learning_rate: Option<f64>,
    pub beta1: Option<f64>,
    pub beta2: Option<f64>,
    pub epsilon: Option<f64>,
    pub validation_split: Option<f64>,
    pub seed: Option<u64>,
    pub shuffle: Option<bool>,
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

impl TrainConfigRequest {
    /// Defaults: 10 epochs, batch 64, Adam(0.001, 0.9, 0.999, 1e-7) as
    /// Keras, no validation split, seed 0, shuffling on.
    pub fn resolve(&self, limits: &TrainLimits) -> Result<TrainConfig, InvalidField> {
        let lr = self.learning_rate.unwrap_or(0.001);
        if !(lr > 0.0 && lr <= 10.0) {
            return Err(InvalidField::new(
                "config.learning_rate",
                format!("must be in (0, 10], got {lr}"),
            ));
        }
        let epsilon = self.epsilon.unwrap_or(1e-7);
        if !(epsilon > 0.0 && epsilon <= 1.0) {
            return Err(InvalidField::new(
                "config.epsilon",
                format!("must be in (0, 1], got {epsilon}"),
            ));
        }
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
            learning_rate: lr,
            beta1: check_unit_interval("config.beta1", self.beta1.unwrap_or(0.9))?,
            beta2: check_unit_interval("config.beta2", self.beta2.unwrap_or(0.999))?,
            epsilon,
            validation_split: check_unit_interval(
                "config.validation_split",
                self.validation_split.unwrap_or(0.0),
            )?,
            seed: self.seed.unwrap_or(0),
            shuffle: self.shuffle.unwrap_or(true),
        })
    }
}
