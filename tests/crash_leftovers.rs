//! What a `kill -9` of the real binary leaves: event numbers a watcher saw
//! are never reused after the restart, and partial model writes (`.tmp-*`
//! files, version folders without a record) are gone once the server is
//! back, so the data dir holds exactly what the records name. Deleting a
//! model leaves no empty folder, and a restart removes the checkpoints no
//! job can resume from.
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use lstmd::proto as pb;

/// Every file under `dir`, relative to it.
fn files_under(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.insert(path.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out
}

/// Folders under `dir` that hold nothing.
fn empty_folders(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries: Vec<_> = std::fs::read_dir(&d).unwrap().flatten().collect();
        if entries.is_empty() && d != dir {
            out.push(d.strip_prefix(dir).unwrap().to_path_buf());
        }
        stack.extend(entries.iter().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_numbers_a_watcher_saw_are_never_reused_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut bin = Binary::start(&data, &[]);
    let mut c = bin.connect().await;
    let ds = ids_dataset(&mut c, "cycle", cycle(7, 3000), 7).await;
    let mut request = long_job(&ds.id, "numbered", 3);
    if let Some(config) = request.config.as_mut() {
        config.progress_every_batches = Some(1);
    }
    let job = c
        .jobs
        .create_training_job(request)
        .await
        .unwrap()
        .into_inner();
    let mut stream = c
        .jobs
        .watch_job(pb::WatchJobRequest { id: job.id.clone() })
        .await
        .unwrap()
        .into_inner();
    // Batch progress is sent before it is durable: kill while it flows.
    let mut live = BTreeMap::new();
    let mut batches = 0;
    while batches < 12 {
        let event = stream.message().await.unwrap().expect("the job runs");
        if matches!(event.kind, Some(pb::job_event::Kind::Batch(_))) {
            batches += 1;
        }
        live.insert(event.seq, event);
    }
    bin.child.kill().unwrap(); // SIGKILL
    bin.child.wait().unwrap();
    drop(bin);

    let bin = Binary::start(&data, &[]);
    let mut c = bin.connect().await;
    let replayed = watch_all(&mut c, &job.id).await;
    assert_eq!(finished(&replayed).state, pb::JobState::Succeeded as i32);
    let seqs: Vec<u64> = replayed.iter().map(|e| e.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "sequence numbers only grow: {seqs:?}"
    );
    // A number the watcher saw names the same event after the restart, or
    // no event at all (a batch event that never became durable); the
    // watcher saw every number up to the last it got, so any other event
    // (those after the restart) comes after that.
    let last_seen = *live.keys().last().unwrap();
    for event in &replayed {
        match live.get(&event.seq) {
            Some(seen) => assert_eq!(seen, event, "seq {} names two events", event.seq),
            None => assert!(
                event.seq > last_seen,
                "seq {} is new after the restart but not past the last one seen live, {last_seen}",
                event.seq
            ),
        }
    }
}

fn big_job(dataset_id: &str) -> pb::CreateTrainingJobRequest {
    pb::CreateTrainingJobRequest {
        model_name: "big".into(),
        dataset_id: dataset_id.into(),
        spec: Some(pb::ModelSpec {
            vocab_size: Some(50),
            embedding_dim: Some(16),
            window: Some(4),
            // About 17 MB of weights: a write long enough to be cut.
            layers: vec![pb::RecurrentLayer {
                cell: pb::Cell::Lstm as i32,
                units: 1024,
                bidirectional: false,
                dropout: 0.0,
            }],
            ..Default::default()
        }),
        config: Some(pb::TrainingConfig {
            epochs: Some(1),
            batch_size: Some(256),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A model write in flight, seen from outside: a `.tmp-*` file, or a
/// version folder that lacks one of its two files.
fn partial_model_write(models: &Path) -> bool {
    files_under(models).iter().any(|f| {
        let name = f.file_name().unwrap_or_default().to_string_lossy();
        let folder = models.join(f.parent().unwrap_or(Path::new("")));
        name.starts_with(".tmp-")
            || !folder.join("model.safetensors").exists()
            || !folder.join("metadata.json").exists()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_during_a_model_write_leaves_nothing_once_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let models = data.join("blobs/models");
    let mut bin = Binary::start(&data, &[]);
    let mut c = bin.connect().await;
    let ds = ids_dataset(&mut c, "cycle", cycle(50, 200), 50).await;
    let events = train(&mut c, big_job(&ds.id)).await;
    assert_eq!(finished(&events).state, pb::JobState::Succeeded as i32);
    let mut stream = c
        .models
        .export_model(pb::ExportModelRequest {
            name: "big".into(),
            version: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut chunks = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        chunks.push(pb::ImportModelChunk {
            name: "big".into(),
            file: chunk.file,
            data: chunk.data,
            ..Default::default()
        });
    }

    // Import the model again and again, and kill -9 the server the moment
    // a write is seen in flight; a few tries catch one.
    let mut cut = false;
    for _ in 0..8 {
        let mut client = c.models.clone();
        let upload = chunks.clone();
        let import =
            tokio::spawn(async move { client.import_model(tokio_stream::iter(upload)).await });
        let seen = tokio::task::spawn_blocking({
            let models = models.clone();
            move || {
                let start = std::time::Instant::now();
                while start.elapsed() < Duration::from_secs(20) {
                    if partial_model_write(&models) {
                        return true;
                    }
                }
                false
            }
        });
        let seen = seen.await.unwrap();
        if seen {
            bin.child.kill().unwrap(); // SIGKILL
            bin.child.wait().unwrap();
            cut = partial_model_write(&models);
            let _ = import.await;
            drop(bin);
            bin = Binary::start(&data, &[]);
            c = bin.connect().await;
            if cut {
                break;
            }
        } else {
            let _ = import.await;
        }
    }
    assert!(cut, "no kill landed during a model write in 8 tries");

    // Exactly what the records name, and no empty folder.
    let mut named = BTreeSet::from([PathBuf::from("records.redb"), PathBuf::from(".write-check")]);
    for d in c
        .datasets
        .list_datasets(pb::ListDatasetsRequest {})
        .await
        .unwrap()
        .into_inner()
        .datasets
    {
        named.insert(format!("blobs/datasets/{}/tokens.u32", d.id).into());
    }
    let mut versions = Vec::new();
    for v in 1..=10 {
        let found = c
            .models
            .get_model(pb::GetModelRequest {
                name: "big".into(),
                version: v,
            })
            .await;
        if found.is_ok() {
            versions.push(v);
            for file in ["model.safetensors", "metadata.json"] {
                named.insert(format!("blobs/models/big/{v}/{file}").into());
            }
        }
    }
    assert!(versions.contains(&1), "{versions:?}");
    assert_eq!(files_under(&data), named);
    assert_eq!(
        empty_folders(&data),
        vec![PathBuf::from("staging")],
        "only the staging folder may be empty"
    );

    // Deleting the model removes its folder too.
    c.models
        .delete_model(pb::DeleteModelRequest {
            name: "big".into(),
            version: 0,
        })
        .await
        .unwrap();
    assert!(!models.join("big").exists());
}

/// A checkpoint nothing can resume from (its job succeeded, or has no
/// record) goes at startup; a cancelled job's checkpoint stays, as its
/// reason says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_removes_checkpoints_no_job_can_resume_from() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = |job: &str| {
        dir.path()
            .join(format!("blobs/{}", lstmd::jobs::checkpoint_key(job)))
    };
    let plant = |job: &str| {
        let path = checkpoint(job);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"a checkpoint a crash left").unwrap();
    };
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    let ds = ids_dataset(&mut c, "cycle", cycle(5, 300), 5).await;
    let succeeded = c
        .jobs
        .create_training_job(long_job(&ds.id, "done", 1))
        .await
        .unwrap()
        .into_inner();
    let done = watch_all(&mut c, &succeeded.id).await;
    assert_eq!(finished(&done).state, pb::JobState::Succeeded as i32);
    assert!(!checkpoint(&succeeded.id).exists(), "success removes it");
    let queued = c
        .jobs
        .create_training_job(long_job(&ds.id, "cancelled", 10_000))
        .await
        .unwrap()
        .into_inner();
    c.jobs
        .cancel_job(pb::CancelJobRequest {
            id: queued.id.clone(),
        })
        .await
        .unwrap();
    // Long enough that the cancel lands before it can succeed.
    let cancelled = watch_all(&mut c, &queued.id).await;
    assert_eq!(finished(&cancelled).state, pb::JobState::Cancelled as i32);
    server.stop().await.unwrap();

    for job in [
        succeeded.id.as_str(),
        queued.id.as_str(),
        "job-without-record",
    ] {
        plant(job);
    }
    let server = start(dir.path()).await;
    assert!(
        !checkpoint(&succeeded.id).exists(),
        "a succeeded job's goes"
    );
    assert!(
        !checkpoint("job-without-record").exists(),
        "an unrecorded one goes"
    );
    assert!(!dir
        .path()
        .join("blobs/checkpoints/job-without-record")
        .exists());
    assert!(checkpoint(&queued.id).exists(), "a cancelled job's stays");
    server.stop().await.unwrap();
}
