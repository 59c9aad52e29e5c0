//! What a job must satisfy before it is queued, so a queued job can run:
//! its datasets exist and agree, presets and defaults are resolved, the
//! spec fits the data, and a search's every planned trial is valid.
use std::sync::Arc;

use super::{JobError, TrainingRequest, TuningRequest};
use crate::data::{DataError, DatasetRecord, Datasets};
use crate::error::{check_name, check_range, InvalidField};
use crate::nn::{SpecLimits, SpecRequest};
use crate::train::{TrainConfigRequest, TrainLimits};
use crate::tune::{plan, Objective, SearchSpace, Strategy};

/// Trials one tuning job may plan.
const MAX_TRIALS: u32 = 1000;

/// A training job as a client asks for it, before any default.
pub struct TrainingAsk {
    pub model_name: String,
    pub dataset_id: String,
    /// Empty: none.
    pub validation_dataset_id: String,
    pub spec: SpecRequest,
    pub config: TrainConfigRequest,
}

/// A search as a client asks for it; a count of 0 takes its default.
pub struct TuningAsk {
    pub space: SearchSpace,
    pub strategy: String,
    pub objective: String,
    pub max_trials: u32,
    pub parallel_trials: u32,
    pub max_epochs: u32,
    pub reduction_factor: u32,
    pub seed: u64,
    pub keep_trial_models: bool,
}

/// The rules, with what they read: the datasets and the server's limits.
pub struct Admission {
    pub datasets: Arc<Datasets>,
    pub spec_limits: SpecLimits,
    pub train_limits: TrainLimits,
}

impl Admission {
    /// A dataset a field names; NoDataset when it names none. Blocking.
    fn dataset(&self, field: &'static str, id: &str) -> Result<DatasetRecord, JobError> {
        let no_dataset = || JobError::NoDataset {
            field,
            id: id.to_string(),
        };
        check_name(field, id).map_err(|_| no_dataset())?;
        match self.datasets.get(id) {
            Err(DataError::NotFound(_)) => Err(no_dataset()),
            other => Ok(other?),
        }
    }

    /// The training request a queued job runs. Blocking (reads datasets).
    pub fn training(&self, ask: TrainingAsk) -> Result<TrainingRequest, JobError> {
        let dataset = self.dataset("dataset_id", &ask.dataset_id)?;
        let validation = match ask.validation_dataset_id.as_str() {
            "" => None,
            id => Some(self.dataset("validation_dataset_id", id)?),
        };
        if let Some(v) = &validation {
            if v.vocabulary != dataset.vocabulary || v.vocab_size > dataset.vocab_size {
                return Err(InvalidField::new(
                    "validation_dataset_id",
                    format!(
                        "{} must share the vocabulary of dataset_id {}",
                        v.id, dataset.id
                    ),
                )
                .into());
            }
        }
        let mut config_req = ask.config;
        // The tutorial's `tuning` model lowers the learning rate explicitly.
        if ask.spec.preset.as_deref() == Some("tuning") && config_req.learning_rate.is_none() {
            config_req.learning_rate = Some(0.001);
        }
        let spec = ask
            .spec
            .resolve(Some(dataset.vocab_size), &self.spec_limits)?;
        // A text model's outputs are its vocabulary's entries, one each (the
        // rule ImportModel checks too, so an export always imports).
        if dataset.vocabulary.is_some() && spec.vocab_size != dataset.vocab_size {
            return Err(InvalidField::new(
                "spec.vocab_size",
                format!(
                    "must equal the vocabulary size {} of text dataset {}, got {}",
                    dataset.vocab_size, dataset.id, spec.vocab_size
                ),
            )
            .into());
        }
        let config = config_req.resolve(&self.train_limits, validation.is_some())?;
        config.check_with_spec(&spec)?;
        // Required, as the proto says: a job never picks a name by itself.
        check_name("model_name", &ask.model_name)?;
        for (field, d) in std::iter::once(("dataset_id", &dataset))
            .chain(validation.iter().map(|v| ("validation_dataset_id", v)))
        {
            if d.token_count < spec.window as u64 + 1 {
                return Err(InvalidField::new(
                    field,
                    format!(
                        "{} has {} tokens, too few for one window of spec.window {} plus its target",
                        d.id, d.token_count, spec.window
                    ),
                )
                .into());
            }
        }
        Ok(TrainingRequest {
            parent: None,
            resume_from: None,
            keep_checkpoint: false,
            model_name: ask.model_name,
            dataset_id: dataset.id,
            validation_dataset_id: validation.map(|v| v.id),
            spec,
            config,
        })
    }

    /// The search over `base`, its trials planned; every planned trial's
    /// spec and config must be valid.
    pub fn tuning(
        &self,
        ask: TuningAsk,
        base: &TrainingRequest,
    ) -> Result<TuningRequest, JobError> {
        let has_validation =
            base.config.validation_split > 0.0 || base.validation_dataset_id.is_some();
        if !has_validation {
            return Err(InvalidField::new(
                "config.validation_split",
                "must be > 0 (or validation_dataset_id set): the objective is measured on validation data",
            )
            .into());
        }
        let max_batch_size = self.train_limits.max_batch_size;
        ask.space.validate(&self.spec_limits, max_batch_size)?;
        let strategy = Strategy::parse(&ask.strategy)?;
        let or = |value: u32, default: u32| if value == 0 { default } else { value };
        let max_trials = check_range("max_trials", or(ask.max_trials, 10), 1, MAX_TRIALS)?;
        let parallel_trials =
            check_range("parallel_trials", or(ask.parallel_trials, 1), 1, MAX_TRIALS)?;
        let max_epochs = or(ask.max_epochs, base.config.epochs);
        let max_epochs = check_range("max_epochs", max_epochs, 1, self.train_limits.max_epochs)?;
        let reduction_factor =
            check_range("reduction_factor", or(ask.reduction_factor, 3), 2, 100)?;
        let plan = plan(&ask.space, strategy, max_trials as usize, ask.seed)?;
        for h in &plan {
            h.apply(&base.spec, &base.config, &self.spec_limits, max_batch_size)?;
        }
        Ok(TuningRequest {
            space: ask.space,
            strategy,
            max_trials: max_trials as usize,
            parallel_trials: parallel_trials as usize,
            objective: Objective::parse(&ask.objective)?,
            seed: ask.seed,
            max_epochs,
            reduction_factor,
            keep_trial_models: ask.keep_trial_models,
            plan,
        })
    }
}
