//! JobService.
use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::{wrappers::ReceiverStream, Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::convert::{
    config_request, event_to_proto, job_to_proto, spec_request, state_from_proto,
};
use crate::data::{DataError, DatasetRecord, Datasets};
use crate::error::{check_name, check_range};
use crate::jobs::{JobManager, TrainingRequest, WatchItem};
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
            other => Ok(other?),
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
        let spec_req = spec_request(r.spec)?;
        let mut config_req = config_request(r.config);
        // The tutorial's `tuning` model lowers the learning rate explicitly.
        if spec_req.preset.as_deref() == Some("tuning") && config_req.learning_rate.is_none() {
            config_req.learning_rate = Some(0.001);
        }
        let spec = spec_req.resolve(Some(dataset.vocab_size), &self.spec_limits)?;
        let config = config_req.resolve(&self.train_limits, validation.is_some())?;
        let model_name = if r.model_name.is_empty() {
            dataset.name.clone()
        } else {
            r.model_name
        };
        check_name("model_name", &model_name)?;
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
            model_name,
            dataset_id: dataset.id,
            validation_dataset_id: validation.map(|v| v.id),
            spec,
            config,
        })
    }

    async fn event_stream(&self, id: &str) -> Result<EventStream, Status> {
        let rx = self.jobs.watch(id).await?;
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
        let job = self.jobs.submit(validated).await?;
        tracing::info!(job = %job.id, model = %job.request.model_name, "training job queued");
        Ok(Response::new(job_to_proto(&job)))
    }

    async fn create_tuning_job(
        &self,
        _request: Request<pb::CreateTuningJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        Err(Status::unimplemented(
            "CreateTuningJob is not implemented yet",
        ))
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let job = self.jobs.get(&request.into_inner().id).await?;
        Ok(Response::new(job_to_proto(&job)))
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let r = request.into_inner();
        let state = state_from_proto(r.state)?;
        let page_size = if r.page_size == 0 { 100 } else { r.page_size };
        let page_size = check_range("page_size", page_size, 1, 1000)? as usize;
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
            .await?
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
        let job = self.jobs.cancel(&request.into_inner().id).await?;
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
        let job = self.jobs.submit(validated).await?;
        tracing::info!(job = %job.id, model = %job.request.model_name, "training job queued (Train)");
        Ok(Response::new(self.event_stream(&job.id).await?))
    }
}
