//! Wires the layers together and runs the gRPC server: health (NOT_SERVING
//! until ready and again while shutting down), reflection v1 and v1alpha,
//! and the lstmd and OIP services behind the bearer-token interceptor; every
//! call goes through the RPC layer (span, request id, metrics, deadline).
//! Optionally TLS (mTLS), a plaintext health-only listener for Kubernetes
//! probes, and the Prometheus `/metrics` listener.
mod domain;
mod listeners;
mod services;
mod shutdown;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{oneshot, watch};
use tonic_health::ServingStatus;

use crate::api::auth::{Auth, TokenFile};
use crate::api::rpc::RpcLayer;
use crate::config::{parse_device, ServeArgs};
use crate::predict::Predictor;
use domain::Domain;
use listeners::Listeners;
use services::Services;

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

/// Binds `args.listen` and serves until `shutdown` resolves (or
/// `RunningServer::stop`).
pub async fn start(
    args: ServeArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<RunningServer> {
    let device = parse_device(&args.device).map_err(anyhow::Error::msg)?;
    crate::nn::fused::threads::configure(args.kernel_threads);
    tls::choose_crypto_provider();
    // Settings that can be wrong are checked before anything starts.
    let (builder, auth) = secured_transport(&args)?;
    let metrics = match args.metrics_listen {
        Some(_) => Some(crate::metrics::install()?),
        None => None,
    };
    let listeners = Listeners::bind(&args).await?;
    let (addr, health_addr, metrics_addr) = listeners.addrs()?;

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    let domain = Domain::open(&args, device)?;
    let (stopping_tx, stopping_rx) = watch::channel(false);
    let ready = Arc::new(AtomicBool::new(false));
    let services = Services::new(&domain, &args, &auth, stopping_rx, &ready);
    let side_tasks = listeners::spawn_side_listeners(
        listeners.health,
        &reporter,
        listeners.metrics.zip(metrics),
        &domain.jobs,
    )?;

    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let drain = shutdown::spawn(
        async move {
            tokio::select! {
                _ = shutdown => {}
                _ = stop_rx => {}
            }
        },
        shutdown::Sequence {
            grace: Duration::from_secs(args.shutdown_grace),
            stopping: stopping_tx,
            ready: Arc::clone(&ready),
            reporter: reporter.clone(),
            jobs: domain.jobs.clone(),
        },
    );
    let router = builder
        .layer(RpcLayer)
        .add_service(health)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(services.dataset)
        .add_service(services.job)
        .add_service(services.model)
        .add_service(services.prediction)
        .add_service(services.inference);
    let incoming = crate::net::incoming(listeners.grpc);
    let task = tokio::spawn(async move {
        let serve = router.serve_with_incoming_shutdown(incoming, drain.drained());
        let result = drain.bounded(serve).await;
        for task in side_tasks {
            task.abort();
        }
        result
    });
    reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    ready.store(true, Ordering::Relaxed);
    log_serving(&args, addr, metrics_addr, health_addr);
    Ok(RunningServer {
        addr,
        metrics_addr,
        health_addr,
        shutdown: Some(stop_tx),
        task,
        data_dir_open: domain.data_dir_open,
        predictor: domain.predictor,
    })
}

/// The transport with TLS (and mTLS) as the flags ask, and the bearer-token
/// check.
fn secured_transport(args: &ServeArgs) -> anyhow::Result<(tonic::transport::Server, Auth)> {
    let mut builder = tonic::transport::Server::builder();
    if args.max_connection_age > 0 {
        // GOAWAY after this long: clients open a new connection for new
        // calls (and land on another replica behind a plain Service),
        // while calls in flight, watch streams included, run to their end.
        builder = builder.max_connection_age(Duration::from_secs(args.max_connection_age));
    }
    if let Some(tls) = tls::tls_config(&args.security)? {
        builder = builder
            .tls_config(tls)
            .context("invalid --tls-cert, --tls-key or --tls-client-ca")?;
    }
    let auth = Auth::new(match &args.security.auth_token_file {
        Some(path) => Some(Arc::new(TokenFile::open(path)?)),
        None => None,
    });
    Ok((builder, auth))
}

fn log_serving(
    args: &ServeArgs,
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    health_addr: Option<SocketAddr>,
) {
    tracing::info!(
        %addr,
        tls = args.security.tls_cert.is_some(),
        mtls = args.security.tls_client_ca.is_some(),
        auth = args.security.auth_token_file.is_some(),
        metrics = %metrics_addr.map_or_else(|| "off".into(), |a| a.to_string()),
        health_only = %health_addr.map_or_else(|| "off".into(), |a| a.to_string()),
        data_dir = %args.data_dir.display(),
        stores = %match &args.stores.blobs {
            Some(blobs) => format!("PostgreSQL records, blobs in {blobs}"),
            None => "the data dir".to_string(),
        },
        device = %args.device,
        "lstmd serving"
    );
}

/// Reflection of the lstmd and health protos; grpcurl asks for either
/// version, so both are served.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}
