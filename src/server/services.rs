//! The five lstmd services over the domain, each behind the bearer-token
//! interceptor and the message-size limit. Health and reflection are added
//! by the caller unwrapped: they stay open.
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;

use super::domain::Domain;
use crate::api::auth::Auth;
use crate::api::{DatasetApi, InferenceApi, JobApi, ModelApi, PredictionApi};
use crate::config::ServeArgs;
use crate::jobs::Admission;
use crate::oip::grpc_inference_service_server::GrpcInferenceServiceServer;
use crate::proto::{
    dataset_service_server::DatasetServiceServer, job_service_server::JobServiceServer,
    model_service_server::ModelServiceServer, prediction_service_server::PredictionServiceServer,
};

type Guarded<S> = InterceptedService<S, Auth>;

pub(super) struct Services {
    pub dataset: Guarded<DatasetServiceServer<DatasetApi>>,
    pub job: Guarded<JobServiceServer<JobApi>>,
    pub model: Guarded<ModelServiceServer<ModelApi>>,
    pub prediction: Guarded<PredictionServiceServer<PredictionApi>>,
    pub inference: Guarded<GrpcInferenceServiceServer<InferenceApi>>,
}

/// Sets a generated server's size limits, then wraps it: the interceptor
/// wrapper has no size methods.
macro_rules! guarded {
    ($server:expr, $max:expr, $auth:expr) => {
        InterceptedService::new(
            $server
                .max_decoding_message_size($max)
                .max_encoding_message_size($max),
            $auth.clone(),
        )
    };
}

impl Services {
    /// `stopping` turns true when shutdown begins (for the calls that wait on
    /// their clients); `ready` is OIP's ServerReady.
    pub fn new(
        domain: &Domain,
        args: &ServeArgs,
        auth: &Auth,
        stopping: watch::Receiver<bool>,
        ready: &Arc<AtomicBool>,
    ) -> Self {
        let max = args.max_message_bytes;
        let limits = &args.limits;
        let dataset = DatasetApi::new(
            Arc::clone(&domain.datasets),
            domain.jobs.clone(),
            Arc::clone(&domain.registry),
            limits.max_uploads_in_flight,
            stopping,
        );
        let job = JobApi {
            jobs: domain.jobs.clone(),
            admission: Arc::new(Admission {
                datasets: Arc::clone(&domain.datasets),
                spec_limits: limits.spec(),
                train_limits: limits.train(),
            }),
        };
        let model = ModelApi {
            registry: Arc::clone(&domain.registry),
            predictor: Arc::clone(&domain.predictor),
            spec_limits: limits.spec(),
            max_import_bytes: limits.max_model_bytes,
        };
        let prediction = PredictionApi {
            predictor: Arc::clone(&domain.predictor),
            session_idle_timeout_seconds: limits.session_idle_timeout as u32,
        };
        let inference = InferenceApi {
            predictor: Arc::clone(&domain.predictor),
            registry: Arc::clone(&domain.registry),
            ready: Arc::clone(ready),
        };
        Services {
            dataset: guarded!(DatasetServiceServer::new(dataset), max, auth),
            job: guarded!(JobServiceServer::new(job), max, auth),
            model: guarded!(ModelServiceServer::new(model), max, auth),
            prediction: guarded!(PredictionServiceServer::new(prediction), max, auth),
            inference: guarded!(GrpcInferenceServiceServer::new(inference), max, auth),
        }
    }
}
