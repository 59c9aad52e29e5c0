//! Starts the real server on 127.0.0.1 port 0 with a data dir, and connects
//! the generated clients to it.
#![allow(dead_code)]
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
