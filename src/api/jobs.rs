//! JobService.
use crate::api::status::OrStatus;
use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::{wrappers::ReceiverStream, Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::convert::{
    config_request, event_to_proto, job_to_proto, spec_request, state_from_proto,
};
use crate::data::{DataError, DatasetRecord, Datasets};
use crate::error::{check_name, check_range};
use crate::jobs::{JobManager, TrainingRequest, TuningRequest, WatchItem};
use crate::tune::{plan, Objective, Param, SearchSpace, Strategy};

/// Trials one tuning job may plan.
const MAX_TRIALS: u32 = 1000;

fn param(field: &str, p: Option<pb::ParamSpace>) -> Result<Option<Param>, Status> {
    let Some(p) = p else { return Ok(None) };
    match (p.choices.is_empty(), p.min, p.max) {
        (false, None, None) => Ok(Some(Param::Choices(p.choices))),
        (true, Some(min), Some(max)) => Ok(Some(Param::Range { min, max })),
        (true, None, None) => Ok(None),
        _ => Err(Status::invalid_argument(format!(
            "{field} must give either choices or both min and max"
        ))),
    }
}

fn search_space(s: pb::SearchSpace) -> Result<SearchSpace, Status> {
    let cells = s
        .cells
        .iter()
        .enumerate()
        .map(|(i, c)| match pb::Cell::try_from(*c) {
            Ok(pb::Cell::Lstm) => Ok(crate::nn::Cell::Lstm),
            Ok(pb::Cell::Gru) => Ok(crate::nn::Cell::Gru),
            Ok(pb::Cell::Rnn) => Ok(crate::nn::Cell::Rnn),
            _ => Err(Status::invalid_argument(format!(
                "search_space.cells[{i}] must be CELL_LSTM, CELL_GRU or CELL_RNN, got {c}"
            ))),
        })
        .collect::<Result<_, _>>()?;
    Ok(SearchSpace {
        units: param("search_space.units", s.units)?,
        num_layers: param("search_space.num_layers", s.num_layers)?,
        cells,
        bidirectional: s.bidirectional,
        dropout: param("search_space.dropout", s.dropout)?,
        learning_rate: param("search_space.learning_rate", s.learning_rate)?,
        batch_size: param("search_space.batch_size", s.batch_size)?,
        embedding_dim: param("search_space.embedding_dim", s.embedding_dim)?,
    })
}
use crate::nn::SpecLimits;
use crate::proto as pb;
use crate::proto::job_service_server::JobService;
use crate::train::TrainLimits;

pub struct JobApi {
    pub jobs: JobManager,
    pub datasets: Arc<Datasets>,
    pub spec_limits: SpecLimits,
    pub train_limits: TrainLimits,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::JobEvent, Status>> + Send>>;

impl JobApi {
    /// Resolves presets and defaults and checks the request against the
    /// dataset, so a job that is queued can run.
    async fn dataset(&self, field: &str, id: &str) -> Result<DatasetRecord, Status> {
        let not_found = || Status::not_found(format!("{field} {id:?} names no dataset"));
        check_name(field, id).map_err(|_| not_found())?;
        let datasets = Arc::clone(&self.datasets);
        let id = id.to_string();
        match tokio::task::spawn_blocking(move || datasets.get(&id))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
        {
            Err(DataError::NotFound(_)) => Err(not_found()),
            other => Ok(other.or_status()?),
        }
    }

    /// Resolves presets and defaults and checks the request against the
    /// dataset, so a job that is queued can run.
    async fn validate(&self, r: pb::CreateTrainingJobRequest) -> Result<TrainingRequest, Status> {
        let dataset = self.dataset("dataset_id", &r.dataset_id).await?;
        let validation = if r.validation_dataset_id.is_empty() {
            None
        } else {
            let v = self
                .dataset("validation_dataset_id", &r.validation_dataset_id)
                .await?;
            if v.vocabulary != dataset.vocabulary || v.vocab_size > dataset.vocab_size {
                return Err(Status::invalid_argument(format!(
                    "validation_dataset_id {} must share the vocabulary of dataset_id {}",
                    v.id, dataset.id
                )));
            }
            Some(v)
        };
        let spec_req = spec_request(r.spec).or_status()?;
        let mut config_req = config_request(r.config);
        // The tutorial's `tuning` model lowers the learning rate explicitly.
        if spec_req.preset.as_deref() == Some("tuning") && config_req.learning_rate.is_none() {
            config_req.learning_rate = Some(0.001);
        }
        let spec = spec_req
            .resolve(Some(dataset.vocab_size), &self.spec_limits)
            .or_status()?;
        // A text model's outputs are its vocabulary's entries, one each (the
        // rule ImportModel checks too, so an export always imports).
        if dataset.vocabulary.is_some() && spec.vocab_size != dataset.vocab_size {
            return Err(Status::invalid_argument(format!(
                "spec.vocab_size must equal the vocabulary size {} of text dataset {}, got {}",
                dataset.vocab_size, dataset.id, spec.vocab_size
            )));
        }
        let config = config_req
            .resolve(&self.train_limits, validation.is_some())
            .or_status()?;
        config.check_with_spec(&spec).or_status()?;
        // Required, as the proto says: a job never picks a name by itself.
        let model_name = r.model_name;
        check_name("model_name", &model_name).or_status()?;
        for (field, d) in std::iter::once(("dataset_id", &dataset))
            .chain(validation.iter().map(|v| ("validation_dataset_id", v)))
        {
            if d.token_count < spec.window as u64 + 1 {
                return Err(Status::invalid_argument(format!(
                    "{field} {} has {} tokens, too few for one window of spec.window {} plus its target",
                    d.id, d.token_count, spec.window
                )));
            }
        }
        Ok(TrainingRequest {
            parent: None,
            resume_from: None,
            keep_checkpoint: false,
            model_name,
            dataset_id: dataset.id,
            validation_dataset_id: validation.map(|v| v.id),
            spec,
            config,
        })
    }

    /// Checks the search against the base request and plans its trials;
    /// every planned trial's spec must be valid.
    fn validate_tuning(
        &self,
        r: &pb::CreateTuningJobRequest,
        base: &TrainingRequest,
    ) -> Result<TuningRequest, Status> {
        let has_validation =
            base.config.validation_split > 0.0 || base.validation_dataset_id.is_some();
        if !has_validation {
            return Err(Status::invalid_argument(
                "config.validation_split must be > 0 (or validation_dataset_id set): the objective is measured on validation data",
            ));
        }
        let space = search_space(r.search_space.clone().unwrap_or_default())?;
        space
            .validate(&self.spec_limits, self.train_limits.max_batch_size)
            .or_status()?;
        let strategy = Strategy::parse(&r.strategy).or_status()?;
        let max_trials = if r.max_trials == 0 { 10 } else { r.max_trials };
        let max_trials = check_range("max_trials", max_trials, 1, MAX_TRIALS).or_status()? as usize;
        let parallel = if r.parallel_trials == 0 {
            1
        } else {
            r.parallel_trials
        };
        let parallel_trials =
            check_range("parallel_trials", parallel, 1, MAX_TRIALS).or_status()? as usize;
        let max_epochs = if r.max_epochs == 0 {
            base.config.epochs
        } else {
            r.max_epochs
        };
        let max_epochs =
            check_range("max_epochs", max_epochs, 1, self.train_limits.max_epochs).or_status()?;
        let eta = if r.reduction_factor == 0 {
            3
        } else {
            r.reduction_factor
        };
        let reduction_factor = check_range("reduction_factor", eta, 2, 100).or_status()?;
        let plan = plan(&space, strategy, max_trials, r.seed).or_status()?;
        for h in &plan {
            h.apply(
                &base.spec,
                &base.config,
                &self.spec_limits,
                self.train_limits.max_batch_size,
            )
            .or_status()?;
        }
        Ok(TuningRequest {
            space,
            strategy,
            max_trials,
            parallel_trials,
            objective: Objective::parse(&r.objective).or_status()?,
            seed: r.seed,
            max_epochs,
            reduction_factor,
            keep_trial_models: r.keep_trial_models,
            plan,
        })
    }

    async fn event_stream(&self, id: &str) -> Result<EventStream, Status> {
        let rx = self.jobs.watch(id).await.or_status()?;
        Ok(Box::pin(ReceiverStream::new(rx).map(|item| match item {
            WatchItem::Event(e) => Ok(event_to_proto(&e)),
            WatchItem::ShuttingDown => Err(Status::unavailable(
                "the server is shutting down; the job resumes from its last checkpoint when it restarts",
            )),
        })))
    }
}

#[tonic::async_trait]
impl JobService for JobApi {
    async fn create_training_job(
        &self,
        request: Request<pb::CreateTrainingJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let validated = self.validate(request.into_inner()).await?;
        let job = self.jobs.submit(validated).await.or_status()?;
        tracing::info!(job = %job.id, model = %job.request.model_name, "training job queued");
        Ok(Response::new(job_to_proto(&job)))
    }

    async fn create_tuning_job(
        &self,
        request: Request<pb::CreateTuningJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let r = request.into_inner();
        let base = self
            .validate(pb::CreateTrainingJobRequest {
                model_name: r.model_name.clone(),
                dataset_id: r.dataset_id.clone(),
                spec: r.spec.clone(),
                config: r.config.clone(),
                validation_dataset_id: r.validation_dataset_id.clone(),
            })
            .await?;
        let tuning = self.validate_tuning(&r, &base)?;
        let job = self.jobs.submit_tuning(base, tuning).await.or_status()?;
        tracing::info!(job = %job.id, model = %job.request.model_name, "tuning job started");
        Ok(Response::new(job_to_proto(&job)))
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let job = self.jobs.get(&request.into_inner().id).await.or_status()?;
        Ok(Response::new(job_to_proto(&job)))
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let r = request.into_inner();
        let state = state_from_proto(r.state).or_status()?;
        let page_size = if r.page_size == 0 { 100 } else { r.page_size };
        let page_size = check_range("page_size", page_size, 1, 1000).or_status()? as usize;
        let offset: usize = if r.page_token.is_empty() {
            0
        } else {
            r.page_token.parse().map_err(|_| {
                Status::invalid_argument("page_token is not a token this server issued")
            })?
        };
        let matching: Vec<_> = self
            .jobs
            .list()
            .await
            .or_status()?
            .into_iter()
            .filter(|j| state.is_none_or(|s| j.state == s))
            .collect();
        let end = (offset + page_size).min(matching.len());
        let jobs = matching.get(offset..end).unwrap_or_default();
        Ok(Response::new(pb::ListJobsResponse {
            jobs: jobs.iter().map(job_to_proto).collect(),
            next_page_token: if end < matching.len() {
                end.to_string()
            } else {
                String::new()
            },
        }))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let job = self
            .jobs
            .cancel(&request.into_inner().id)
            .await
            .or_status()?;
        tracing::info!(job = %job.id, "cancel requested");
        Ok(Response::new(job_to_proto(&job)))
    }

    type WatchJobStream = EventStream;

    async fn watch_job(
        &self,
        request: Request<pb::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        Ok(Response::new(
            self.event_stream(&request.into_inner().id).await?,
        ))
    }

    type TrainStream = EventStream;

    async fn train(
        &self,
        request: Request<pb::CreateTrainingJobRequest>,
    ) -> Result<Response<Self::TrainStream>, Status> {
        let validated = self.validate(request.into_inner()).await?;
        let job = self.jobs.submit(validated).await.or_status()?;
        tracing::info!(job = %job.id, model = %job.request.model_name, "training job queued (Train)");
        Ok(Response::new(self.event_stream(&job.id).await?))
    }
}
