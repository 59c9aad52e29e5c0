//! Wires the layers together and runs the gRPC server: health (NOT_SERVING
//! until ready and again while shutting down), reflection v1 and v1alpha,
//! and the four lstmd services.
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;
use tonic_health::ServingStatus;

use crate::api::{DatasetApi, JobApi, ModelApi, PredictionApi};
use crate::config::{parse_device, ServeArgs};
use crate::data::{DataLimits, Datasets};
use crate::jobs::{JobManager, JobsConfig};
use crate::predict::Predictor;
use crate::proto::{
    dataset_service_server::DatasetServiceServer, job_service_server::JobServiceServer,
    model_service_server::ModelServiceServer, prediction_service_server::PredictionServiceServer,
};
use crate::store::{LocalStore, ModelRegistry, Store};

/// A server running in this process (tests use it; `main` too).
pub struct RunningServer {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningServer {
    /// Asks the server to stop and waits until it has.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.await?
    }

    /// Waits until the server stops by itself.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let _keep = self.shutdown.take();
        self.task.await?
    }
}

/// Binds `args.listen` and serves until `shutdown` resolves (or
/// `RunningServer::stop`).
pub async fn start(
    args: ServeArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<RunningServer> {
    let device = parse_device(&args.device).map_err(anyhow::Error::msg)?;
    crate::nn::fused::threads::configure(args.kernel_threads);
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;

    let store: Arc<dyn Store> = Arc::new(
        LocalStore::open(&args.data_dir)
            .with_context(|| format!("cannot open data dir {}", args.data_dir.display()))?,
    );
    let registry = Arc::new(ModelRegistry::new(Arc::clone(&store)));
    let datasets = Arc::new(Datasets::new(
        Arc::clone(&store),
        DataLimits {
            max_vocab_size: args.limits.max_vocab_size,
        },
    ));
    let jobs = JobManager::start(
        JobsConfig {
            workers: args.workers(),
            max_queued: args.max_queued_jobs,
            device: device.clone(),
            progress_interval: Duration::from_millis(args.progress_interval_ms),
        },
        Arc::clone(&datasets),
        Arc::clone(&registry),
    );
    let predictor = Arc::new(Predictor::new(
        Arc::clone(&registry),
        device.clone(),
        args.limits.predict(),
    ));

    let max = args.max_message_bytes;
    let dataset_svc = DatasetServiceServer::new(DatasetApi {
        datasets: Arc::clone(&datasets),
    })
    .max_decoding_message_size(max)
    .max_encoding_message_size(max);
    let job_svc = JobServiceServer::new(JobApi {
        jobs,
        datasets,
        spec_limits: args.limits.spec(),
        train_limits: args.limits.train(),
    })
    .max_decoding_message_size(max)
    .max_encoding_message_size(max);
    let model_svc = ModelServiceServer::new(ModelApi { registry })
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let prediction_svc = PredictionServiceServer::new(PredictionApi { predictor })
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let grace = Duration::from_secs(args.shutdown_grace);
    let shutdown_reporter = reporter.clone();
    // Resolves on the first of the caller's signal and `stop()`, after
    // reporting NOT_SERVING.
    let (signalled_tx, signalled_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown => {}
            _ = stop_rx => {}
        }
        shutdown_reporter
            .set_service_status("", ServingStatus::NotServing)
            .await;
        tracing::info!("shutting down");
        let _ = signalled_tx.send(true);
    });
    let mut graceful = signalled_rx.clone();
    let mut deadline = signalled_rx;
    let router = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(dataset_svc)
        .add_service(job_svc)
        .add_service(model_svc)
        .add_service(prediction_svc);
    let task = tokio::spawn(async move {
        let serve =
            router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                let _ = graceful.wait_for(|s| *s).await;
            });
        // Open streams can hold a graceful shutdown forever: bound the wait.
        tokio::select! {
            r = serve => r.context("gRPC server failed"),
            _ = async {
                let _ = deadline.wait_for(|s| *s).await;
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!(grace_seconds = grace.as_secs(), "streams still open after the grace period; exiting");
                Ok(())
            }
        }
    });
    reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    tracing::info!(%addr, data_dir = %args.data_dir.display(), device = %args.device, "lstmd serving");
    Ok(RunningServer {
        addr,
        shutdown: Some(stop_tx),
        task,
    })
}
