//! A (name, version) pair names one set of weights for ever: version numbers
//! grow per name across deletes (of any version, the latest included) and
//! restarts, a job whose model was deleted while it ran registers a new
//! version, and a session on a deleted model ends.
mod common;

use common::*;
use lstmd::proto as pb;
use tonic::Code;

fn tiny_job(dataset_id: &str, model: &str, epochs: u32) -> pb::CreateTrainingJobRequest {
    pb::CreateTrainingJobRequest {
        model_name: model.into(),
        dataset_id: dataset_id.into(),
        spec: Some(pb::ModelSpec {
            vocab_size: Some(7),
            embedding_dim: Some(4),
            window: Some(4),
            layers: vec![pb::RecurrentLayer {
                cell: pb::Cell::Lstm as i32,
                units: 8,
                bidirectional: false,
                dropout: 0.0,
            }],
            ..Default::default()
        }),
        config: Some(pb::TrainingConfig {
            epochs: Some(epochs),
            batch_size: Some(8),
            seed: Some(3),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn export(c: &mut Clients, name: &str, version: u32) -> Vec<pb::ImportModelChunk> {
    let mut stream = c
        .models
        .export_model(pb::ExportModelRequest {
            name: name.into(),
            version,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut chunks = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        chunks.push(pb::ImportModelChunk {
            name: String::new(),
            file: chunk.file,
            data: chunk.data,
            ..Default::default()
        });
    }
    chunks
}

async fn import(c: &mut Clients, name: &str, chunks: &[pb::ImportModelChunk]) -> u32 {
    let chunks: Vec<_> = chunks
        .iter()
        .map(|c| pb::ImportModelChunk {
            name: name.into(),
            ..c.clone()
        })
        .collect();
    c.models
        .import_model(tokio_stream::iter(chunks))
        .await
        .expect("the import succeeds")
        .into_inner()
        .version
}

async fn delete(c: &mut Clients, name: &str, version: u32) -> Vec<u32> {
    c.models
        .delete_model(pb::DeleteModelRequest {
            name: name.into(),
            version,
        })
        .await
        .expect("the delete succeeds")
        .into_inner()
        .versions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_are_never_reused_across_deletes_restarts_and_running_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    let ds = ids_dataset(&mut c, "cycle", cycle(7, 3000), 7).await;
    let events = train(&mut c, tiny_job(&ds.id, "source", 1)).await;
    assert_eq!(finished(&events).state, pb::JobState::Succeeded as i32);
    let files = export(&mut c, "source", 1).await;

    // Import A (v1), delete it, import B: B is v2.
    assert_eq!(import(&mut c, "m", &files).await, 1);
    assert_eq!(delete(&mut c, "m", 0).await, vec![1]);
    assert_eq!(import(&mut c, "m", &files).await, 2);
    // Deleting the latest version alone does not free its number either.
    assert_eq!(import(&mut c, "m", &files).await, 3);
    assert_eq!(delete(&mut c, "m", 3).await, vec![3]);
    assert_eq!(import(&mut c, "m", &files).await, 4);
    assert_eq!(delete(&mut c, "m", 0).await, vec![2, 4]);
    server.stop().await.unwrap();

    // Nor does a restart.
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    assert_eq!(import(&mut c, "m", &files).await, 5);

    // A job training "m" while "m" is deleted registers a new version.
    let job = c
        .jobs
        .create_training_job(long_job(&ds.id, "m", 3))
        .await
        .unwrap()
        .into_inner();
    let mut stream = c
        .jobs
        .watch_job(pb::WatchJobRequest { id: job.id.clone() })
        .await
        .unwrap()
        .into_inner();
    wait_for_epoch(&mut stream, 1).await;
    assert_eq!(delete(&mut c, "m", 0).await, vec![5]);
    let events = collect(stream).await;
    let done = finished(&events);
    assert_eq!(
        done.state,
        pb::JobState::Succeeded as i32,
        "{}",
        done.reason
    );
    assert_eq!(done.model.as_ref().map(|m| m.version), Some(6));
    let listed = c
        .models
        .get_model(pb::GetModelRequest {
            name: "m".into(),
            version: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.version, 6);
    assert_eq!(listed.job_id, job.id);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_on_a_deleted_model_ends_with_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    let ds = ids_dataset(&mut c, "cycle", cycle(7, 400), 7).await;
    let events = train(&mut c, tiny_job(&ds.id, "m", 1)).await;
    assert_eq!(finished(&events).state, pb::JobState::Succeeded as i32);
    let session = c
        .predict
        .open_session(pb::OpenSessionRequest {
            model: "m".into(),
            version: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session_id;
    let feed = |session: String| pb::FeedSessionRequest {
        session_id: session,
        tokens: Some(pb::Sequence {
            ids: vec![1, 2, 3],
            text: String::new(),
        }),
        top_k: Some(2),
        state: Vec::new(),
    };
    c.predict
        .feed_session(feed(session.clone()))
        .await
        .expect("the session answers while its model exists");
    assert_eq!(delete(&mut c, "m", 0).await, vec![1]);
    let ended = c
        .predict
        .feed_session(feed(session.clone()))
        .await
        .expect_err("the session ended with its model");
    assert_eq!(ended.code(), Code::NotFound, "{ended:?}");
    assert!(ended.message().contains("deleted"), "{}", ended.message());
    server.stop().await.unwrap();
}
