//! Health, reflection (v1 and v1alpha) and concurrent watchers.
mod common;

use common::*;
use lstmd::proto as pb;
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_serving_and_reflection_lists_every_service() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let c = connect(&server).await;
    let mut health = HealthClient::new(c.channel.clone());
    let status = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);

    let wanted = [
        "grpc.health.v1.Health",
        "lstmd.v1.DatasetService",
        "lstmd.v1.JobService",
        "lstmd.v1.ModelService",
        "lstmd.v1.PredictionService",
    ];
    {
        use tonic_reflection::pb::v1alpha::{
            server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
            ServerReflectionRequest,
        };
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = ServerReflectionClient::new(c.channel.clone())
            .server_reflection_info(tokio_stream::iter(vec![request]))
            .await
            .unwrap()
            .into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) =
            stream.message().await.unwrap().unwrap().message_response
        else {
            panic!("not a list of services")
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for w in wanted {
            assert!(names.iter().any(|n| n == w), "v1alpha lacks {w}: {names:?}");
        }
    }
    {
        use tonic_reflection::pb::v1::{
            server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
            ServerReflectionRequest,
        };
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = ServerReflectionClient::new(c.channel.clone())
            .server_reflection_info(tokio_stream::iter(vec![request]))
            .await
            .unwrap()
            .into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) =
            stream.message().await.unwrap().unwrap().message_response
        else {
            panic!("not a list of services")
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for w in wanted {
            assert!(names.iter().any(|n| n == w), "v1 lacks {w}: {names:?}");
        }
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_watcher_gets_every_event_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    let ds = ids_dataset(&mut c, "cycle5", cycle(5, 400), 5).await;
    let job = c
        .jobs
        .create_training_job(pb::CreateTrainingJobRequest {
            model_name: "watched".into(),
            dataset_id: ds.id.clone(),
            spec: Some(pb::ModelSpec {
                preset: "deep".into(),
                window: Some(4),
                ..Default::default()
            }),
            config: Some(pb::TrainingConfig {
                epochs: Some(3),
                batch_size: Some(16),
                // A batch event after every batch.
                progress_every_batches: Some(1),
                progress_every_seconds: Some(0.0),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(job.state, pb::JobState::Queued as i32);
    let first = c
        .jobs
        .watch_job(pb::WatchJobRequest { id: job.id.clone() })
        .await
        .unwrap()
        .into_inner();
    let second = c
        .jobs
        .watch_job(pb::WatchJobRequest { id: job.id.clone() })
        .await
        .unwrap()
        .into_inner();
    let (a, b) = tokio::join!(collect(first), collect(second));
    assert_eq!(a, b);
    assert_eq!(finished(&a).state, pb::JobState::Succeeded as i32);
    let batches = a
        .iter()
        .filter(|e| matches!(e.kind, Some(pb::job_event::Kind::Batch(_))))
        .count();
    // 396 windows in batches of 16: 25 a epoch, the last one reported by
    // the epoch event.
    assert_eq!(batches, 3 * 24);
    assert_eq!(epochs(&a).len(), 3);
    let states: Vec<i32> = a
        .iter()
        .filter_map(|e| match &e.kind {
            Some(pb::job_event::Kind::State(s)) => Some(s.state),
            _ => None,
        })
        .collect();
    assert_eq!(
        states,
        vec![pb::JobState::Queued as i32, pb::JobState::Running as i32]
    );
    server.stop().await.unwrap();
}
