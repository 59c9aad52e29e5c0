//! The sockets: the gRPC listener, and the side listeners stopped with it
//! (a plaintext health-only listener for Kubernetes probes; Prometheus
//! `/metrics`). All are bound before anything starts, so a busy port fails
//! the start.
use std::net::SocketAddr;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

use crate::config::ServeArgs;
use crate::jobs::JobManager;

pub(super) struct Listeners {
    pub grpc: TcpListener,
    pub health: Option<TcpListener>,
    pub metrics: Option<TcpListener>,
}

async fn bind(what: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({what})"))
}

async fn bind_optional(
    what: &str,
    addr: Option<SocketAddr>,
) -> anyhow::Result<Option<TcpListener>> {
    match addr {
        Some(a) => Ok(Some(bind(what, a).await?)),
        None => Ok(None),
    }
}

fn local_addr(listener: &Option<TcpListener>) -> anyhow::Result<Option<SocketAddr>> {
    Ok(listener.as_ref().map(|l| l.local_addr()).transpose()?)
}

impl Listeners {
    pub async fn bind(args: &ServeArgs) -> anyhow::Result<Self> {
        Ok(Listeners {
            grpc: bind("--listen", args.listen).await?,
            health: bind_optional("--health-listen", args.health_listen).await?,
            metrics: bind_optional("--metrics-listen", args.metrics_listen).await?,
        })
    }

    /// The addresses actually bound (port 0 picks one): gRPC, health, metrics.
    pub fn addrs(&self) -> anyhow::Result<(SocketAddr, Option<SocketAddr>, Option<SocketAddr>)> {
        Ok((
            self.grpc.local_addr()?,
            local_addr(&self.health)?,
            local_addr(&self.metrics)?,
        ))
    }
}

/// Starts the side listeners; the caller aborts the tasks when the gRPC
/// server stops.
pub(super) fn spawn_side_listeners(
    health: Option<TcpListener>,
    reporter: &HealthReporter,
    metrics: Option<(TcpListener, PrometheusHandle)>,
    jobs: &JobManager,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let mut tasks = Vec::new();
    if let Some(listener) = health {
        tasks.push(spawn_health_only(listener, reporter)?);
    }
    if let Some((listener, handle)) = metrics {
        tasks.push(tokio::spawn(crate::metrics::serve(
            listener,
            handle,
            jobs.clone(),
        )));
    }
    Ok(tasks)
}

/// Health (sharing the main listener's statuses) and the reflection of
/// health alone, so grpcurl can call it there too.
fn spawn_health_only(
    listener: TcpListener,
    reporter: &HealthReporter,
) -> anyhow::Result<JoinHandle<()>> {
    let health = HealthServer::new(HealthService::from_health_reporter(reporter.clone()));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    Ok(tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(health)
            .add_service(reflection)
            .serve_with_incoming(crate::net::incoming(listener))
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the health listener failed");
        }
    }))
}
