//! Starts the real server on 127.0.0.1 port 0 with a data dir, and connects
//! the generated clients to it.
#![allow(dead_code)]
pub mod cluster;
pub mod pki;

use std::path::Path;

use lstmd::config::ServeArgs;
use lstmd::proto as pb;
use lstmd::proto::{
    dataset_service_client::DatasetServiceClient, job_service_client::JobServiceClient,
    model_service_client::ModelServiceClient, prediction_service_client::PredictionServiceClient,
};
use lstmd::server::RunningServer;
use tonic::transport::Channel;

pub fn args(dir: &Path) -> ServeArgs {
    let mut args = ServeArgs::defaults("127.0.0.1:0".parse().unwrap(), dir.to_path_buf());
    args.workers = Some(1);
    args
}

pub async fn start(dir: &Path) -> RunningServer {
    start_with(args(dir)).await
}

pub async fn start_with(args: ServeArgs) -> RunningServer {
    lstmd::server::start(args, std::future::pending())
        .await
        .expect("server starts")
}

pub struct Clients {
    pub channel: Channel,
    pub datasets: DatasetServiceClient<Channel>,
    pub jobs: JobServiceClient<Channel>,
    pub models: ModelServiceClient<Channel>,
    pub predict: PredictionServiceClient<Channel>,
}

pub async fn connect(server: &RunningServer) -> Clients {
    let channel = Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .expect("connects");
    Clients {
        datasets: DatasetServiceClient::new(channel.clone()),
        jobs: JobServiceClient::new(channel.clone()),
        models: ModelServiceClient::new(channel.clone()),
        predict: PredictionServiceClient::new(channel.clone()),
        channel,
    }
}

/// A learnable pattern: the cycle 0..period repeated; each token determines
/// the next one.
pub fn cycle(period: u32, len: usize) -> Vec<u32> {
    (0..len as u32).map(|i| i % period).collect()
}

pub async fn ids_dataset(
    c: &mut Clients,
    name: &str,
    ids: Vec<u32>,
    vocab_size: u32,
) -> pb::Dataset {
    c.datasets
        .create_dataset(pb::CreateDatasetRequest {
            name: name.into(),
            data: Some(pb::create_dataset_request::Data::Ids(pb::TokenIds {
                ids,
                vocab_size,
            })),
            ..Default::default()
        })
        .await
        .expect("dataset is created")
        .into_inner()
}

/// Drains a job event stream to its end.
pub async fn collect(mut stream: tonic::Streaming<pb::JobEvent>) -> Vec<pb::JobEvent> {
    let mut events = Vec::new();
    while let Some(event) = stream.message().await.expect("stream stays healthy") {
        events.push(event);
    }
    events
}

pub fn finished(events: &[pb::JobEvent]) -> &pb::Finished {
    match events.last().and_then(|e| e.kind.as_ref()) {
        Some(pb::job_event::Kind::Finished(f)) => f,
        other => panic!("last event is not terminal: {other:?}"),
    }
}

pub fn epochs(events: &[pb::JobEvent]) -> Vec<pb::EpochMetrics> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(pb::job_event::Kind::Epoch(ep)) => ep.metrics,
            _ => None,
        })
        .collect()
}

/// Tokens with no signal: a fixed pseudo-random sequence.
pub fn noise(vocab: u32, len: usize, seed: u64) -> Vec<u32> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 33) % vocab as u64) as u32
        })
        .collect()
}

/// The bytes of a registered model's weights file.
pub fn weights_file(data_dir: &Path, name: &str, version: u32) -> Vec<u8> {
    std::fs::read(data_dir.join(format!("blobs/models/{name}/{version}/model.safetensors")))
        .expect("weights file exists")
}

pub async fn train(c: &mut Clients, request: pb::CreateTrainingJobRequest) -> Vec<pb::JobEvent> {
    collect(
        c.jobs
            .train(request)
            .await
            .expect("Train starts")
            .into_inner(),
    )
    .await
}

pub fn spec(preset: &str, window: u32) -> Option<pb::ModelSpec> {
    Some(pb::ModelSpec {
        preset: preset.into(),
        window: Some(window),
        ..Default::default()
    })
}

/// The real `lstmd` binary, serving on a free loopback port.
pub struct Binary {
    pub child: std::process::Child,
    pub addr: std::net::SocketAddr,
}

impl Binary {
    pub fn start(data_dir: &Path, extra: &[&str]) -> Binary {
        Binary::start_env(data_dir, extra, &[])
    }

    /// `start`, with these environment variables set for the server.
    pub fn start_env(data_dir: &Path, extra: &[&str], env: &[(&str, String)]) -> Binary {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.with_extension("log"))
            .unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_lstmd"))
            .args([
                "serve",
                "--listen",
                &addr.to_string(),
                "--workers",
                "1",
                "--data-dir",
            ])
            .arg(data_dir)
            .args(extra)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("the lstmd binary starts");
        Binary { child, addr }
    }

    /// Connects once health says SERVING (the binary is a fresh process).
    pub async fn connect(&self) -> Clients {
        use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
        for _ in 0..300 {
            if let Ok(channel) = Channel::from_shared(format!("http://{}", self.addr))
                .unwrap()
                .connect()
                .await
            {
                let status = HealthClient::new(channel.clone())
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .map(|r| r.into_inner().status);
                if status.is_ok_and(|s| s == 1) {
                    return Clients {
                        datasets: DatasetServiceClient::new(channel.clone()),
                        jobs: JobServiceClient::new(channel.clone()),
                        models: ModelServiceClient::new(channel.clone()),
                        predict: PredictionServiceClient::new(channel.clone()),
                        channel,
                    };
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("the binary never became SERVING on {}", self.addr);
    }

    /// Waits for the process to exit, up to `limit`; None if it did not.
    pub fn wait_exit(&mut self, limit: std::time::Duration) -> Option<std::process::ExitStatus> {
        let start = std::time::Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits on a job stream until an epoch event numbered `epoch` arrives.
pub async fn wait_for_epoch(
    stream: &mut tonic::Streaming<pb::JobEvent>,
    epoch: u32,
) -> Vec<pb::JobEvent> {
    let mut seen = Vec::new();
    while let Some(event) = stream.message().await.expect("stream stays healthy") {
        let done = matches!(&event.kind, Some(pb::job_event::Kind::Epoch(e)) if e.metrics.as_ref().is_some_and(|m| m.epoch >= epoch));
        seen.push(event);
        if done {
            return seen;
        }
    }
    panic!("the stream ended before epoch {epoch}: {seen:?}");
}

pub fn long_job(dataset_id: &str, model: &str, epochs: u32) -> pb::CreateTrainingJobRequest {
    pb::CreateTrainingJobRequest {
        model_name: model.into(),
        dataset_id: dataset_id.into(),
        spec: spec("deep", 6),
        config: Some(pb::TrainingConfig {
            epochs: Some(epochs),
            batch_size: Some(16),
            seed: Some(1),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Submits a training job and opens a watch on it.
pub async fn submit_watched(
    c: &mut Clients,
    request: pb::CreateTrainingJobRequest,
) -> (pb::Job, tonic::Streaming<pb::JobEvent>) {
    let job = c
        .jobs
        .create_training_job(request)
        .await
        .expect("the job is created")
        .into_inner();
    let stream = c
        .jobs
        .watch_job(pb::WatchJobRequest { id: job.id.clone() })
        .await
        .expect("WatchJob starts")
        .into_inner();
    (job, stream)
}

/// The ids of the datasets the server lists.
pub async fn dataset_ids(c: &mut Clients) -> Vec<String> {
    let listed = c
        .datasets
        .list_datasets(pb::ListDatasetsRequest::default())
        .await
        .expect("ListDatasets answers")
        .into_inner();
    listed.datasets.into_iter().map(|d| d.id).collect()
}

/// A model `name` of `preset` (window 4) trained `epochs` epochs on the
/// cycle 0..7.
pub async fn train_on_cycle(c: &mut Clients, name: &str, preset: &str, epochs: u32) {
    let ds = ids_dataset(c, &format!("{name}-data"), cycle(7, 500), 7).await;
    let events = train(
        c,
        pb::CreateTrainingJobRequest {
            model_name: name.into(),
            dataset_id: ds.id,
            spec: spec(preset, 4),
            config: Some(pb::TrainingConfig {
                epochs: Some(epochs),
                batch_size: Some(32),
                learning_rate: Some(0.01),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(finished(&events).state, pb::JobState::Succeeded as i32);
}

/// Every event of a job, from its first to its terminal one.
pub async fn watch_all(c: &mut Clients, id: &str) -> Vec<pb::JobEvent> {
    collect(
        c.jobs
            .watch_job(pb::WatchJobRequest { id: id.into() })
            .await
            .expect("WatchJob starts")
            .into_inner(),
    )
    .await
}

/// Reads a stream to its end, which must be an error status.
pub async fn end_status(stream: &mut tonic::Streaming<pb::JobEvent>) -> tonic::Status {
    loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("stream ended without a status"),
            Err(status) => return status,
        }
    }
}

/// Waits on a job stream until a state event whose message contains
/// `needle`; returns the events read.
pub async fn wait_for_state(
    stream: &mut tonic::Streaming<pb::JobEvent>,
    needle: &str,
) -> Vec<pb::JobEvent> {
    let mut seen = Vec::new();
    while let Some(event) = stream.message().await.expect("stream stays healthy") {
        let found = matches!(&event.kind, Some(pb::job_event::Kind::State(s)) if s.message.contains(needle));
        seen.push(event);
        if found {
            return seen;
        }
    }
    panic!("the stream ended before a state event with {needle:?}: {seen:?}");
}

/// The generated clients on an existing channel (TLS, tokens, ...).
pub fn clients(channel: Channel) -> Clients {
    Clients {
        datasets: DatasetServiceClient::new(channel.clone()),
        jobs: JobServiceClient::new(channel.clone()),
        models: ModelServiceClient::new(channel.clone()),
        predict: PredictionServiceClient::new(channel.clone()),
        channel,
    }
}

/// A plain HTTP/1.1 GET: (status code, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("the HTTP listener accepts");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("an HTTP response has a head");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    (status, body.to_string())
}

/// The value of a Prometheus sample `name{labels}` whose labels include
/// every pair of `labels` (0 when absent).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = match series.split_once('{') {
                Some((n, rest)) => (n, rest),
                None => (series, ""),
            };
            (n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// The metrics text of a server started with `metrics_listen`.
pub async fn scrape(server: &RunningServer) -> String {
    let (status, body) = http_get(server.metrics_addr.expect("metrics are on"), "/metrics").await;
    assert_eq!(status, 200, "{body}");
    body
}
