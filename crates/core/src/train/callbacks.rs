//! The epoch-end callbacks of the training loop, run in this order after
//! each epoch's metrics: keep the best weights, early stopping, reduce the
//! learning rate on a plateau. Their counters live in `RunState`, so a run
//! resumed from a checkpoint carries on where it stopped.
use candle_core::{Tensor, Var};

use super::checkpoint::RunState;
use super::config::{EarlyStopping, Metric, Monitor, ReduceLrOnPlateau, TrainConfig};
use super::parameters::snapshot;
use super::StopReason;
use crate::nn::metadata::EpochMetrics;

/// What a callback sees and may change at the end of an epoch.
pub(super) struct EpochEnd<'a> {
    pub metrics: &'a EpochMetrics,
    pub state: &'a mut RunState,
    pub learning_rate: &'a mut f64,
    pub vars: &'a [(String, Var)],
    pub best_parameters: &'a mut Option<Vec<(String, Tensor)>>,
}

pub(super) trait EpochCallback {
    fn epoch_end(&self, end: &mut EpochEnd) -> candle_core::Result<()>;
}

/// The callbacks `config` asks for, in the order they run.
pub(super) fn callbacks(config: &TrainConfig) -> Vec<Box<dyn EpochCallback + '_>> {
    let mut all: Vec<Box<dyn EpochCallback>> = vec![Box::new(BestWeights {
        monitor: &config.best_monitor,
        keep: keeps_best_weights(config),
    })];
    if let Some(es) = &config.early_stopping {
        all.push(Box::new(es));
    }
    if let Some(rp) = &config.reduce_lr_on_plateau {
        all.push(Box::new(rp));
    }
    all
}

/// Whether the run keeps a copy of the best epoch's weights.
fn keeps_best_weights(config: &TrainConfig) -> bool {
    config.keep_best
        || config
            .early_stopping
            .as_ref()
            .is_some_and(|e| e.restore_best_weights)
}

/// Whether the run's final weights are the best epoch's.
pub(super) fn returns_best_weights(config: &TrainConfig, stop: &StopReason) -> bool {
    matches!(stop, StopReason::EarlyStopped { .. })
        && config
            .early_stopping
            .as_ref()
            .is_some_and(|e| e.restore_best_weights)
        || config.keep_best
}

/// Tracks the best epoch by the config's monitor (and copies its weights
/// when they will be needed).
struct BestWeights<'a> {
    monitor: &'a Monitor,
    keep: bool,
}

impl EpochCallback for BestWeights<'_> {
    fn epoch_end(&self, end: &mut EpochEnd) -> candle_core::Result<()> {
        let value = metric_value(end.metrics, self.monitor.metric);
        if self.monitor.improves(value, end.state.best_value) {
            end.state.best_value = Some(value);
            end.state.best_epoch = Some(end.metrics.epoch);
            if self.keep {
                *end.best_parameters = Some(snapshot(end.vars)?);
            }
        }
        Ok(())
    }
}

/// Stops the run after `patience` epochs without improvement.
impl EpochCallback for &EarlyStopping {
    fn epoch_end(&self, end: &mut EpochEnd) -> candle_core::Result<()> {
        let state = &mut *end.state;
        let value = metric_value(end.metrics, self.monitor.metric);
        if self.monitor.improves(value, state.early_stopping_best) {
            state.early_stopping_best = Some(value);
            state.early_stopping_wait = 0;
        } else {
            state.early_stopping_wait += 1;
            if state.early_stopping_wait >= self.patience {
                state.stopped_early = true;
            }
        }
        Ok(())
    }
}

/// Multiplies the learning rate by `factor` (down to `min_lr`) after
/// `patience` epochs without improvement.
impl EpochCallback for &ReduceLrOnPlateau {
    fn epoch_end(&self, end: &mut EpochEnd) -> candle_core::Result<()> {
        let state = &mut *end.state;
        let value = metric_value(end.metrics, self.monitor.metric);
        if self.monitor.improves(value, state.plateau_best) {
            state.plateau_best = Some(value);
            state.plateau_wait = 0;
        } else {
            state.plateau_wait += 1;
            if state.plateau_wait >= self.patience && *end.learning_rate > self.min_lr {
                *end.learning_rate = (*end.learning_rate * self.factor).max(self.min_lr);
                state.plateau_wait = 0;
            }
        }
        Ok(())
    }
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

pub(super) fn early_stop_reason(config: &TrainConfig, state: &RunState) -> Option<StopReason> {
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
