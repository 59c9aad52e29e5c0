//! The job system: FIFO with one worker, cancel, stalled watchers, restart,
//! kill -9 and resume, SIGTERM with an open stream.
mod common;

use std::time::Duration;

use common::*;
use lstmd::proto as pb;
use tonic::Code;

fn job_request(dataset_id: &str, model: &str, epochs: u32) -> pb::CreateTrainingJobRequest {
    pb::CreateTrainingJobRequest {
        model_name: model.into(),
        dataset_id: dataset_id.into(),
        spec: spec("deep", 4),
        config: Some(pb::TrainingConfig {
            epochs: Some(epochs),
            batch_size: Some(32),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn ms(t: &Option<pbjson_types::Timestamp>) -> i64 {
    let t = t.as_ref().expect("timestamp is set");
    t.seconds * 1000 + t.nanos as i64 / 1_000_000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_runs_three_jobs_in_submission_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    let ds = ids_dataset(&mut c, "cycle", cycle(5, 300), 5).await;
    let mut ids = Vec::new();
    for name in ["first", "second", "third"] {
        let job = c
            .jobs
            .create_training_job(job_request(&ds.id, name, 2))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(job.state, pb::JobState::Queued as i32);
        ids.push(job.id);
    }
    // GetJob answers while jobs wait.
    let waiting = c
        .jobs
        .get_job(pb::GetJobRequest { id: ids[2].clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(
        waiting.state == pb::JobState::Queued as i32
            || waiting.state == pb::JobState::Running as i32
    );
    for id in &ids {
        let events = watch_all(&mut c, id).await;
        assert_eq!(finished(&events).state, pb::JobState::Succeeded as i32);
    }
    let mut jobs = Vec::new();
    for id in &ids {
        jobs.push(
            c.jobs
                .get_job(pb::GetJobRequest { id: id.clone() })
                .await
                .unwrap()
                .into_inner(),
        );
    }
    for pair in jobs.windows(2) {
        assert!(
            ms(&pair[0].finished_at) <= ms(&pair[1].started_at),
            "{} ran before {} ended",
            pair[1].model_name,
            pair[0].model_name
        );
    }
    // ListJobs: newest first, filtered and paged.
    let page1 = c
        .jobs
        .list_jobs(pb::ListJobsRequest {
            state: pb::JobState::Succeeded as i32,
            page_size: 2,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        page1
            .jobs
            .iter()
            .map(|j| j.model_name.as_str())
            .collect::<Vec<_>>(),
        vec!["third", "second"]
    );
    let page2 = c
        .jobs
        .list_jobs(pb::ListJobsRequest {
            state: pb::JobState::Succeeded as i32,
            page_size: 2,
            page_token: page1.next_page_token,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        page2
            .jobs
            .iter()
            .map(|j| j.model_name.as_str())
            .collect::<Vec<_>>(),
        vec!["first"]
    );
    assert!(page2.next_page_token.is_empty());
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_a_queued_and_a_running_job() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    let ds = ids_dataset(&mut c, "cycle", cycle(7, 3000), 7).await;
    let running = c
        .jobs
        .create_training_job(long_job(&ds.id, "long", 500))
        .await
        .unwrap()
        .into_inner();
    let queued = c
        .jobs
        .create_training_job(long_job(&ds.id, "waiting", 2))
        .await
        .unwrap()
        .into_inner();

    let cancelled = c
        .jobs
        .cancel_job(pb::CancelJobRequest {
            id: queued.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.state, pb::JobState::Cancelled as i32);
    let events = watch_all(&mut c, &queued.id).await;
    assert_eq!(finished(&events).reason, "cancelled while queued");

    let mut stream = c
        .jobs
        .watch_job(pb::WatchJobRequest {
            id: running.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    wait_for_epoch(&mut stream, 1).await;
    c.jobs
        .cancel_job(pb::CancelJobRequest {
            id: running.id.clone(),
        })
        .await
        .unwrap();
    let rest = collect(stream).await;
    let done = finished(&rest);
    assert_eq!(done.state, pb::JobState::Cancelled as i32);
    assert!(
        done.reason.contains("checkpoint is kept"),
        "{}",
        done.reason
    );
    let ckpt = dir.path().join(format!(
        "blobs/{}",
        lstmd::jobs::checkpoint_key(&running.id)
    ));
    assert!(ckpt.exists(), "the last checkpoint stays");
    let job = c
        .jobs
        .get_job(pb::GetJobRequest {
            id: running.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(job.state, pb::JobState::Cancelled as i32);
    assert!(job.history.len() < 500);

    let again = c
        .jobs
        .cancel_job(pb::CancelJobRequest {
            id: running.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
    let missing = c
        .jobs
        .cancel_job(pb::CancelJobRequest {
            id: "job-none".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_never_reads_does_not_hold_training_back() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    let ds = ids_dataset(&mut c, "cycle", cycle(5, 600), 5).await;
    let mut request = job_request(&ds.id, "busy", 4);
    let config = request.config.as_mut().unwrap();
    config.batch_size = Some(4);
    config.progress_every_batches = Some(1); // far more events than any buffer
    config.progress_every_seconds = Some(0.0);
    let job = c
        .jobs
        .create_training_job(request)
        .await
        .unwrap()
        .into_inner();
    // Opened and never read.
    let _stalled = c
        .jobs
        .watch_job(pb::WatchJobRequest { id: job.id.clone() })
        .await
        .unwrap()
        .into_inner();
    let reader = c
        .jobs
        .watch_job(pb::WatchJobRequest { id: job.id.clone() })
        .await
        .unwrap()
        .into_inner();
    let events = tokio::time::timeout(Duration::from_secs(120), collect(reader))
        .await
        .expect("training finishes");
    assert_eq!(finished(&events).state, pb::JobState::Succeeded as i32);
    assert!(events.len() > 500, "{} events", events.len());
    // The stalled watcher still gets everything when it finally reads.
    let job = c
        .jobs
        .get_job(pb::GetJobRequest { id: job.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(job.state, pb::JobState::Succeeded as i32);
    let late = collect(_stalled).await;
    assert_eq!(late, events);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_and_their_events_survive_a_restart_and_queued_jobs_run() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    let ds = ids_dataset(&mut c, "cycle", cycle(7, 3000), 7).await;
    let done = train(&mut c, job_request(&ds.id, "done", 2)).await;
    assert_eq!(finished(&done).state, pb::JobState::Succeeded as i32);
    let long = c
        .jobs
        .create_training_job(long_job(&ds.id, "long", 500))
        .await
        .unwrap()
        .into_inner();
    let queued = c
        .jobs
        .create_training_job(job_request(&ds.id, "queued", 2))
        .await
        .unwrap()
        .into_inner();
    let mut stream = c
        .jobs
        .watch_job(pb::WatchJobRequest {
            id: long.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    wait_for_epoch(&mut stream, 1).await;
    server.stop().await.unwrap();
    // The open watch ended with a clear status.
    let end = end_status(&mut stream).await;
    assert_eq!(end.code(), Code::Unavailable);
    assert!(
        end.message().contains("resumes from its last checkpoint"),
        "{end:?}"
    );

    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    let replay = watch_all(&mut c, &done[0].job_id).await;
    assert_eq!(replay, done);
    let listed = c
        .jobs
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.jobs.len(), 3);
    // The long job resumed first (it was running); cancel it so the queued one runs.
    let mut stream = c
        .jobs
        .watch_job(pb::WatchJobRequest {
            id: long.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let seen = wait_for_state(&mut stream, "resumed").await;
    let resumed = matches!(&seen.last().unwrap().kind, Some(pb::job_event::Kind::State(s)) if s.message.contains("checkpoint"));
    assert!(resumed, "{seen:?}");
    c.jobs
        .cancel_job(pb::CancelJobRequest {
            id: long.id.clone(),
        })
        .await
        .unwrap();
    let events = watch_all(&mut c, &queued.id).await;
    assert_eq!(finished(&events).state, pb::JobState::Succeeded as i32);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_training_then_the_job_resumes_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut bin = Binary::start(&data, &[]);
    let mut c = bin.connect().await;
    let ds = ids_dataset(&mut c, "cycle", cycle(7, 3000), 7).await;
    let epochs = 8;
    let job = c
        .jobs
        .create_training_job(long_job(&ds.id, "survivor", epochs))
        .await
        .unwrap()
        .into_inner();
    let mut stream = c
        .jobs
        .watch_job(pb::WatchJobRequest { id: job.id.clone() })
        .await
        .unwrap()
        .into_inner();
    wait_for_epoch(&mut stream, 2).await;
    bin.child.kill().unwrap(); // SIGKILL
    bin.child.wait().unwrap();
    drop(bin);

    let bin = Binary::start(&data, &[]);
    let mut c = bin.connect().await;
    let events = watch_all(&mut c, &job.id).await;
    let done = finished(&events);
    assert_eq!(
        done.state,
        pb::JobState::Succeeded as i32,
        "{}",
        done.reason
    );
    let resumed_at = events
        .iter()
        .find_map(|e| match &e.kind {
            Some(pb::job_event::Kind::State(s)) if s.message.contains("resumed") => {
                Some(s.message.clone())
            }
            _ => None,
        })
        .expect("a resume event");
    assert!(resumed_at.contains("checkpoint"), "{resumed_at}");
    // Every epoch appears once in the history, in order.
    let job = c
        .jobs
        .get_job(pb::GetJobRequest { id: job.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        job.history.iter().map(|m| m.epoch).collect::<Vec<_>>(),
        (1..=epochs).collect::<Vec<_>>()
    );
    // Every model file loads, through the service and as safetensors.
    let model = done.model.clone().unwrap();
    let p = c
        .predict
        .predict(pb::PredictRequest {
            model: model.name.clone(),
            version: model.version,
            sequences: vec![pb::Sequence {
                ids: vec![0, 1, 2, 3, 4, 5],
                text: String::new(),
            }],
            top_k: Some(1),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.predictions[0].top[0].id, 6);
    for entry in walk(&data.join("blobs/models")) {
        if entry.extension().is_some_and(|e| e == "safetensors") {
            candle_core::safetensors::load(&entry, &candle_core::Device::Cpu)
                .expect("model file loads");
        }
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_an_open_watch_stream_exits_within_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut bin = Binary::start(&data, &["--shutdown-grace", "5"]);
    let mut c = bin.connect().await;
    let ds = ids_dataset(&mut c, "cycle", cycle(7, 3000), 7).await;
    let job = c
        .jobs
        .create_training_job(long_job(&ds.id, "long", 500))
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
    let status = std::process::Command::new("kill")
        .args(["-TERM", &bin.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = bin
        .wait_exit(Duration::from_secs(15))
        .expect("exits within the grace period");
    assert!(exit.success(), "{exit:?}");
    let end = end_status(&mut stream).await;
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    drop(bin);
    // The job was left RUNNING with its checkpoint, to resume.
    let bin = Binary::start(&data, &[]);
    let mut c = bin.connect().await;
    let mut stream = c
        .jobs
        .watch_job(pb::WatchJobRequest { id: job.id.clone() })
        .await
        .unwrap()
        .into_inner();
    let seen = wait_for_state(&mut stream, "resumed").await;
    assert!(seen.iter().any(|e| matches!(&e.kind, Some(pb::job_event::Kind::State(s)) if s.message.contains("interrupted by a server shutdown"))));
    c.jobs
        .cancel_job(pb::CancelJobRequest { id: job.id.clone() })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = args(dir.path());
    args.max_queued_jobs = 1;
    let server = start_with(args).await;
    let mut c = connect(&server).await;
    let ds = ids_dataset(&mut c, "cycle", cycle(7, 3000), 7).await;
    let running = c
        .jobs
        .create_training_job(long_job(&ds.id, "a", 500))
        .await
        .unwrap()
        .into_inner();
    let mut stream = c
        .jobs
        .watch_job(pb::WatchJobRequest {
            id: running.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    wait_for_epoch(&mut stream, 1).await;
    let queued = c
        .jobs
        .create_training_job(long_job(&ds.id, "b", 1))
        .await
        .unwrap()
        .into_inner();
    let refused = c
        .jobs
        .create_training_job(long_job(&ds.id, "c", 1))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("queue is full"), "{refused:?}");
    for id in [queued.id, running.id] {
        c.jobs
            .cancel_job(pb::CancelJobRequest { id })
            .await
            .unwrap();
    }
    server.stop().await.unwrap();
}
