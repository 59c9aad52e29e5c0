//! JobService: requests into the job layer's asks, its answers back.
use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::{wrappers::ReceiverStream, Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::blocking::blocking;
use super::convert::{
    cell_from_proto, config_request, event_to_proto, job_to_proto, spec_request, state_from_proto,
};
use super::status::OrStatus;
use crate::error::{check_range, InvalidField};
use crate::jobs::{Admission, JobManager, TrainingAsk, TrainingRequest, TuningAsk, WatchItem};
use crate::proto as pb;
use crate::proto::job_service_server::JobService;
use crate::tune::{Param, SearchSpace};

pub struct JobApi {
    pub jobs: JobManager,
    pub admission: Arc<Admission>,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::JobEvent, Status>> + Send>>;

fn param(field: &str, p: Option<pb::ParamSpace>) -> Result<Option<Param>, InvalidField> {
    let Some(p) = p else { return Ok(None) };
    match (p.choices.is_empty(), p.min, p.max) {
        (false, None, None) => Ok(Some(Param::Choices(p.choices))),
        (true, Some(min), Some(max)) => Ok(Some(Param::Range { min, max })),
        (true, None, None) => Ok(None),
        _ => Err(InvalidField::new(
            field,
            "must give either choices or both min and max",
        )),
    }
}

fn search_space(s: pb::SearchSpace) -> Result<SearchSpace, InvalidField> {
    let cells = s
        .cells
        .iter()
        .enumerate()
        .map(|(i, &c)| cell_from_proto(format!("search_space.cells[{i}]"), c))
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

/// The fields a training job and the base of a search share.
fn training_ask(
    model_name: String,
    dataset_id: String,
    validation_dataset_id: String,
    spec: Option<pb::ModelSpec>,
    config: Option<pb::TrainingConfig>,
) -> Result<TrainingAsk, InvalidField> {
    Ok(TrainingAsk {
        model_name,
        dataset_id,
        validation_dataset_id,
        spec: spec_request(spec)?,
        config: config_request(config),
    })
}

fn training_ask_of(r: pb::CreateTrainingJobRequest) -> Result<TrainingAsk, InvalidField> {
    training_ask(
        r.model_name,
        r.dataset_id,
        r.validation_dataset_id,
        r.spec,
        r.config,
    )
}

fn tuning_ask(r: &pb::CreateTuningJobRequest) -> Result<TuningAsk, InvalidField> {
    Ok(TuningAsk {
        space: search_space(r.search_space.clone().unwrap_or_default())?,
        strategy: r.strategy.clone(),
        objective: r.objective.clone(),
        max_trials: r.max_trials,
        parallel_trials: r.parallel_trials,
        max_epochs: r.max_epochs,
        reduction_factor: r.reduction_factor,
        seed: r.seed,
        keep_trial_models: r.keep_trial_models,
    })
}

impl JobApi {
    /// A training request checked by the job layer's rules.
    async fn admit(&self, ask: TrainingAsk) -> Result<TrainingRequest, Status> {
        let admission = Arc::clone(&self.admission);
        blocking(move || admission.training(ask)).await
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
        let ask = training_ask_of(request.into_inner()).or_status()?;
        let validated = self.admit(ask).await?;
        let job = self.jobs.submit(validated).await.or_status()?;
        tracing::info!(job = %job.id, model = %job.request.model_name, "training job queued");
        Ok(Response::new(job_to_proto(&job)))
    }

    async fn create_tuning_job(
        &self,
        request: Request<pb::CreateTuningJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let mut r = request.into_inner();
        let ask = training_ask(
            std::mem::take(&mut r.model_name),
            std::mem::take(&mut r.dataset_id),
            std::mem::take(&mut r.validation_dataset_id),
            r.spec.take(),
            r.config.take(),
        );
        let base = self.admit(ask.or_status()?).await?;
        let ask = tuning_ask(&r).or_status()?;
        let tuning = self.admission.tuning(ask, &base).or_status()?;
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
        let ask = training_ask_of(request.into_inner()).or_status()?;
        let validated = self.admit(ask).await?;
        let job = self.jobs.submit(validated).await.or_status()?;
        tracing::info!(job = %job.id, model = %job.request.model_name, "training job queued (Train)");
        Ok(Response::new(self.event_stream(&job.id).await?))
    }
}
