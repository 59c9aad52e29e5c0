//! Wires the layers together and runs the gRPC server: health (NOT_SERVING
//! until ready and again while shutting down), reflection v1 and v1alpha,
//! and the four lstmd services behind the bearer-token interceptor; every
//! call goes through the RPC layer (span, request id, metrics, deadline).
//! Optionally TLS (mTLS), a plaintext health-only listener for Kubernetes
//! probes, and the Prometheus `/metrics` listener.
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic_health::ServingStatus;

use crate::api::auth::{Auth, TokenFile};
use crate::api::rpc::RpcLayer;
use crate::api::{DatasetApi, InferenceApi, JobApi, ModelApi, PredictionApi};
use crate::config::{parse_device, SecurityArgs, ServeArgs};
use crate::data::Datasets;
use crate::jobs::{Admission, JobManager, JobsConfig};
use crate::oip::grpc_inference_service_server::GrpcInferenceServiceServer;
use crate::predict::Predictor;
use crate::proto::{
    dataset_service_server::DatasetServiceServer, job_service_server::JobServiceServer,
    model_service_server::ModelServiceServer, prediction_service_server::PredictionServiceServer,
};
use crate::store::{LocalStore, ModelRegistry, Store};

/// A server running in this process (tests use it; `main` too).
pub struct RunningServer {
    pub addr: SocketAddr,
    /// Where `/metrics` is served (`--metrics-listen`).
    pub metrics_addr: Option<SocketAddr>,
    /// Where the plaintext health-only listener is (`--health-listen`).
    pub health_addr: Option<SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    // Gone once every part of the server has let go of the data dir and
    // its record database is closed.
    data_dir_open: Weak<()>,
    predictor: Arc<Predictor>,
}

impl RunningServer {
    /// The inference facade, for in-process benchmarks and tests.
    pub fn predictor(&self) -> &Arc<Predictor> {
        &self.predictor
    }

    /// Asks the server to stop and waits until it has.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.finish().await
    }

    /// Waits until the server stops by itself.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let _keep = self.shutdown.take();
        self.finish().await
    }

    /// Waits for the server task, then (briefly) for the worker and manager
    /// threads to close the data dir, so it can be opened again at once.
    async fn finish(self) -> anyhow::Result<()> {
        let result = self.task.await?;
        drop(self.predictor);
        for _ in 0..3000 {
            if self.data_dir_open.strong_count() == 0 {
                return result;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        result.and(Err(anyhow::anyhow!(
            "the data dir is still held 30 s after the server stopped"
        )))
    }
}

fn read(what: &str, path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))
}

/// The TLS settings of `--tls-cert`/`--tls-key` (and `--tls-client-ca`).
fn tls_config(security: &SecurityArgs) -> anyhow::Result<Option<ServerTlsConfig>> {
    let (Some(cert), Some(key)) = (&security.tls_cert, &security.tls_key) else {
        return Ok(None);
    };
    let identity = Identity::from_pem(read("--tls-cert", cert)?, read("--tls-key", key)?);
    let mut config = ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &security.tls_client_ca {
        // Clients without a certificate signed by this CA are refused.
        config = config.client_ca_root(Certificate::from_pem(read("--tls-client-ca", ca)?));
    }
    Ok(Some(config))
}

async fn bind(what: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({what})"))
}

/// Binds `args.listen` and serves until `shutdown` resolves (or
/// `RunningServer::stop`).
pub async fn start(
    args: ServeArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<RunningServer> {
    let device = parse_device(&args.device).map_err(anyhow::Error::msg)?;
    crate::nn::fused::threads::configure(args.kernel_threads);
    // Settings that can be wrong are checked before anything starts.
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls_config(&args.security)? {
        builder = builder
            .tls_config(tls)
            .context("invalid --tls-cert, --tls-key or --tls-client-ca")?;
    }
    let auth = Auth::new(match &args.security.auth_token_file {
        Some(path) => Some(Arc::new(TokenFile::open(path)?)),
        None => None,
    });
    let metrics = match args.metrics_listen {
        Some(_) => Some(crate::metrics::install()?),
        None => None,
    };
    let listener = bind("--listen", args.listen).await?;
    let addr = listener.local_addr()?;
    let health_listener = match args.health_listen {
        Some(a) => Some(bind("--health-listen", a).await?),
        None => None,
    };
    let metrics_listener = match args.metrics_listen {
        Some(a) => Some(bind("--metrics-listen", a).await?),
        None => None,
    };
    let health_addr = health_listener
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?;
    let metrics_addr = metrics_listener
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?;

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;

    let local = LocalStore::open(&args.data_dir)
        .with_context(|| format!("cannot open data dir {}", args.data_dir.display()))?;
    let data_dir_open = local.closed_signal();
    let store: Arc<dyn Store> = Arc::new(local);
    let registry = Arc::new(ModelRegistry::new(Arc::clone(&store)));
    // Versions and labels in memory before the first request needs them.
    registry
        .load_catalog()
        .context("cannot read the model registry")?;
    let datasets = Arc::new(Datasets::new(Arc::clone(&store), args.limits.data()));
    // The data dir holds exactly what the records name: files a crash left
    // without their record go before anything writes.
    registry.remove_orphans()?;
    datasets.remove_orphans()?;
    let jobs = JobManager::start(
        JobsConfig {
            workers: args.workers(),
            max_queued: args.max_queued_jobs,
            device: device.clone(),
        },
        Arc::clone(&store),
        Arc::clone(&datasets),
        Arc::clone(&registry),
    )?;
    let predictor = Arc::new(Predictor::new(
        Arc::clone(&registry),
        device.clone(),
        args.limits.predict(),
    ));

    // Set when shutdown begins, for the calls that wait on their clients.
    let (stopping_tx, stopping_rx) = tokio::sync::watch::channel(false);
    // Configured first, then wrapped: the interceptor wrapper has no size
    // methods. Health and reflection are not wrapped: they stay open.
    let max = args.max_message_bytes;
    let dataset_svc = InterceptedService::new(
        DatasetServiceServer::new(DatasetApi::new(
            Arc::clone(&datasets),
            jobs.clone(),
            Arc::clone(&registry),
            args.limits.max_uploads_in_flight,
            stopping_rx,
        ))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max),
        auth.clone(),
    );
    let job_svc = InterceptedService::new(
        JobServiceServer::new(JobApi {
            jobs: jobs.clone(),
            admission: Arc::new(Admission {
                datasets,
                spec_limits: args.limits.spec(),
                train_limits: args.limits.train(),
            }),
        })
        .max_decoding_message_size(max)
        .max_encoding_message_size(max),
        auth.clone(),
    );
    // OIP's ServerReady: true while serving, false from shutdown on.
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let inference_svc = InterceptedService::new(
        GrpcInferenceServiceServer::new(InferenceApi {
            predictor: Arc::clone(&predictor),
            registry: Arc::clone(&registry),
            ready: Arc::clone(&ready),
        })
        .max_decoding_message_size(max)
        .max_encoding_message_size(max),
        auth.clone(),
    );
    let model_svc = InterceptedService::new(
        ModelServiceServer::new(ModelApi {
            registry,
            predictor: Arc::clone(&predictor),
            spec_limits: args.limits.spec(),
            max_import_bytes: args.limits.max_model_bytes,
        })
        .max_decoding_message_size(max)
        .max_encoding_message_size(max),
        auth.clone(),
    );
    // Idle sessions go even when nobody touches them.
    let sweeper = Arc::downgrade(&predictor);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            match sweeper.upgrade() {
                Some(p) => p.sweep_sessions(),
                None => return,
            }
        }
    });
    let predictor_handle = Arc::clone(&predictor);
    let prediction_svc = InterceptedService::new(
        PredictionServiceServer::new(PredictionApi {
            predictor,
            session_idle_timeout_seconds: args.limits.session_idle_timeout as u32,
        })
        .max_decoding_message_size(max)
        .max_encoding_message_size(max),
        auth,
    );

    // Side listeners, stopped with the server.
    let mut side_tasks = Vec::new();
    if let Some(listener) = health_listener {
        let health = health.clone();
        // Reflection of health alone, so grpcurl can call it there too.
        let health_reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;
        side_tasks.push(tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(health)
                .add_service(health_reflection)
                .serve_with_incoming(crate::net::incoming(listener))
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the health listener failed");
            }
        }));
    }
    if let (Some(listener), Some(handle)) = (metrics_listener, metrics) {
        side_tasks.push(tokio::spawn(crate::metrics::serve(
            listener,
            handle,
            jobs.clone(),
        )));
    }

    let grace = Duration::from_secs(args.shutdown_grace);
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let shutdown_reporter = reporter.clone();
    let shutdown_ready = Arc::clone(&ready);
    // Shutdown, on the first of the caller's signal and `stop()`: report
    // NOT_SERVING, stop the jobs (they keep their checkpoints; watch streams
    // end with a clear message), then let tonic drain in-flight calls. The
    // whole sequence is bounded by the grace period.
    let (deadline_tx, mut deadline_rx) = tokio::sync::watch::channel(None);
    let (drain_tx, mut drain_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown => {}
            _ = stop_rx => {}
        }
        let _ = deadline_tx.send(Some(tokio::time::Instant::now() + grace));
        let _ = stopping_tx.send(true);
        shutdown_ready.store(false, std::sync::atomic::Ordering::Relaxed);
        shutdown_reporter
            .set_service_status("", ServingStatus::NotServing)
            .await;
        tracing::info!("shutting down: refusing new jobs, checkpointing running ones");
        if tokio::time::timeout(grace, jobs.shutdown()).await.is_err() {
            tracing::warn!("training workers still busy after the grace period");
        }
        let _ = drain_tx.send(true);
    });
    let router = builder
        .layer(RpcLayer)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(dataset_svc)
        .add_service(job_svc)
        .add_service(model_svc)
        .add_service(prediction_svc)
        .add_service(inference_svc);
    let task = tokio::spawn(async move {
        let serve =
            router.serve_with_incoming_shutdown(crate::net::incoming(listener), async move {
                let _ = drain_rx.wait_for(|d| *d).await;
            });
        // Open streams can hold a graceful shutdown forever (tonic #1820).
        let result = tokio::select! {
            r = serve => r.context("gRPC server failed"),
            _ = async {
                let Ok(deadline) = deadline_rx.wait_for(Option::is_some).await.map(|d| d.expect("is some")) else {
                    return std::future::pending().await;
                };
                tokio::time::sleep_until(deadline).await;
            } => {
                tracing::warn!(grace_seconds = grace.as_secs(), "calls still open after the grace period; exiting");
                Ok(())
            }
        };
        for task in side_tasks {
            task.abort();
        }
        result
    });
    reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    ready.store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(
        %addr,
        tls = args.security.tls_cert.is_some(),
        mtls = args.security.tls_client_ca.is_some(),
        auth = args.security.auth_token_file.is_some(),
        metrics = %metrics_addr.map_or_else(|| "off".into(), |a| a.to_string()),
        health_only = %health_addr.map_or_else(|| "off".into(), |a| a.to_string()),
        data_dir = %args.data_dir.display(),
        device = %args.device,
        "lstmd serving"
    );
    Ok(RunningServer {
        addr,
        metrics_addr,
        health_addr,
        shutdown: Some(stop_tx),
        task,
        data_dir_open,
        predictor: predictor_handle,
    })
}
