//! Prometheus metrics: one process-wide recorder (the `metrics` facade with
//! `metrics-exporter-prometheus`), served as text on `GET /metrics` by a
//! small HTTP/1 listener (`--metrics-listen`).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `lstmd_grpc_requests_total` | counter | `rpc`, `code` |
//! | `lstmd_grpc_request_duration_seconds` | histogram | `rpc` |
//! | `lstmd_predict_batch_sequences` | histogram | |
//! | `lstmd_predict_queue_seconds` | histogram | |
//! | `lstmd_model_cache_hits_total`, `lstmd_model_cache_misses_total` | counter | |
//! | `lstmd_model_cache_loaded_bytes`, `lstmd_model_cache_models` | gauge | |
//! | `lstmd_jobs` | gauge (computed at scrape time) | `state` |
//! | `lstmd_training_samples_per_second` | gauge | `worker` |
//! | `lstmd_sessions_open` | gauge | |
//! | `lstmd_model_requests_total`, `lstmd_model_errors_total` | counter | `model`, `version` |
//! | `lstmd_model_request_duration_seconds` | histogram | `model`, `version` |
//! | `lstmd_model_batch_sequences` | histogram (sequences a forward pass) | `model`, `version` |
use std::convert::Infallible;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use crate::api::rpc::{REQUESTS_TOTAL, REQUEST_SECONDS};
use crate::jobs::{JobManager, JobState};

const JOBS: &str = "lstmd_jobs";
const SESSIONS_OPEN: &str = "lstmd_sessions_open";
/// Open metrics connections beyond this are closed at once.
const MAX_CONNECTIONS: usize = 64;

/// The process-wide recorder, installed on first use (a process holds one
/// recorder, whatever number of servers it runs; tests run several).
pub fn install() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: Mutex<Option<PrometheusHandle>> = Mutex::new(None);
    let mut slot = HANDLE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(h) = &*slot {
        return Ok(h.clone());
    }
    let seconds = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        60.0, 300.0, 1800.0,
    ];
    let queue_seconds = [
        0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
        1.0,
    ];
    let sequences = [
        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0, 16384.0,
    ];
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(REQUEST_SECONDS.into()), &seconds)?
        .set_buckets_for_metric(
            Matcher::Full("lstmd_predict_queue_seconds".into()),
            &queue_seconds,
        )?
        .set_buckets_for_metric(
            Matcher::Full("lstmd_predict_batch_sequences".into()),
            &sequences,
        )?
        .build_recorder();
    let handle = recorder.handle();
    if let Err(e) = metrics::set_global_recorder(recorder) {
        anyhow::bail!("cannot install the metrics recorder: {e}");
    }
    describe();
    // Histograms buffer samples until upkeep folds them in; without a
    // scraper they would grow, so fold them in every few seconds.
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_secs(5));
            upkeep.run_upkeep();
        })?;
    *slot = Some(handle.clone());
    Ok(handle)
}

fn describe() {
    describe_counter!(
        REQUESTS_TOTAL,
        "gRPC calls finished, by RPC and status code (CANCELLED: the client went away)"
    );
    describe_histogram!(
        REQUEST_SECONDS,
        Unit::Seconds,
        "gRPC call latency, to the end of the response stream, by RPC"
    );
    describe_histogram!(
        "lstmd_predict_batch_sequences",
        Unit::Count,
        "Sequences in each Predict call"
    );
    describe_histogram!(
        "lstmd_predict_queue_seconds",
        Unit::Seconds,
        "Time a Predict call waits in its model's batcher queue"
    );
    use crate::predict::stats::{MODEL_BATCH, MODEL_ERRORS, MODEL_LATENCY, MODEL_REQUESTS};
    describe_counter!(
        MODEL_REQUESTS,
        "Predict and ModelInfer calls that reached a model version"
    );
    describe_counter!(MODEL_ERRORS, "Of those, the calls that failed");
    describe_histogram!(
        MODEL_LATENCY,
        Unit::Seconds,
        "Time from admission to answer, by model version"
    );
    describe_histogram!(
        MODEL_BATCH,
        Unit::Count,
        "Sequences in each forward pass of a model version's batcher"
    );
    describe_counter!(
        "lstmd_model_cache_hits_total",
        "Predictions served by a model already in the cache"
    );
    describe_counter!(
        "lstmd_model_cache_misses_total",
        "Predictions that had to load their model first"
    );
    describe_gauge!(
        "lstmd_model_cache_loaded_bytes",
        Unit::Bytes,
        "Bytes of weights files loaded into the model cache"
    );
    describe_gauge!(
        "lstmd_model_cache_models",
        Unit::Count,
        "Model versions loaded in the cache"
    );
    describe_gauge!(JOBS, Unit::Count, "Jobs known to this server, by state");
    describe_gauge!(
        "lstmd_training_samples_per_second",
        "Training throughput of each worker's current job (0 when idle)"
    );
    describe_gauge!(
        SESSIONS_OPEN,
        Unit::Count,
        "Open stateful prediction sessions"
    );
    metrics::gauge!(SESSIONS_OPEN).set(0.0);
    metrics::gauge!("lstmd_model_cache_loaded_bytes").increment(0.0);
    metrics::gauge!("lstmd_model_cache_models").increment(0.0);
    metrics::counter!("lstmd_model_cache_hits_total").increment(0);
    metrics::counter!("lstmd_model_cache_misses_total").increment(0);
}

fn state_name(state: JobState) -> &'static str {
    match state {
        JobState::Queued => "queued",
        JobState::Running => "running",
        JobState::Succeeded => "succeeded",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
    }
}

/// Sets `lstmd_jobs{state}` from the job manager's records.
async fn count_jobs(jobs: &JobManager) {
    let Ok(list) = jobs.list().await else {
        return;
    };
    let states = [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ];
    for state in states {
        let n = list.iter().filter(|r| r.state == state).count();
        metrics::gauge!(JOBS, "state" => state_name(state)).set(n as f64);
    }
}

type HttpResponse = http::Response<Full<Bytes>>;

fn text(status: http::StatusCode, content_type: &'static str, body: String) -> HttpResponse {
    let mut response = http::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}

async fn respond<B>(
    request: http::Request<B>,
    handle: &PrometheusHandle,
    jobs: &JobManager,
) -> HttpResponse {
    match (request.method(), request.uri().path()) {
        (&http::Method::GET | &http::Method::HEAD, "/metrics") => {
            count_jobs(jobs).await;
            handle.run_upkeep();
            text(
                http::StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                handle.render(),
            )
        }
        (_, "/metrics") => text(
            http::StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "GET /metrics\n".into(),
        ),
        _ => text(
            http::StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "metrics are at /metrics\n".into(),
        ),
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped (its
/// connections go with it).
pub async fn serve(listener: TcpListener, handle: PrometheusHandle, jobs: JobManager) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                crate::net::tune_accepted(&stream);
                stream
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        if connections.len() >= MAX_CONNECTIONS {
            continue;
        }
        let (handle, jobs) = (handle.clone(), jobs.clone());
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let (handle, jobs) = (handle.clone(), jobs.clone());
                async move { Ok::<_, Infallible>(respond(request, &handle, &jobs).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            // A scraper that holds a connection idle does not keep it forever.
            let _ = tokio::time::timeout(Duration::from_secs(300), connection).await;
        });
    }
}
