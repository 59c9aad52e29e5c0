//! Tuning jobs: grid, random and hyperband searches over the worker pool,
//! the leaderboard, the best model, cancel, and bad search spaces.
mod common;

use common::*;
use lstmd::proto as pb;
use tonic::Code;

fn choices(v: &[f64]) -> Option<pb::ParamSpace> {
    Some(pb::ParamSpace {
        choices: v.to_vec(),
        min: None,
        max: None,
    })
}

fn range(min: f64, max: f64) -> Option<pb::ParamSpace> {
    Some(pb::ParamSpace {
        choices: vec![],
        min: Some(min),
        max: Some(max),
    })
}

fn base(dataset_id: &str, epochs: u32) -> pb::CreateTuningJobRequest {
    pb::CreateTuningJobRequest {
        model_name: "tuned".into(),
        dataset_id: dataset_id.into(),
        spec: Some(pb::ModelSpec {
            window: Some(4),
            embedding_dim: Some(6),
            layers: vec![pb::RecurrentLayer {
                cell: pb::Cell::Lstm as i32,
                units: 8,
                ..Default::default()
            }],
            ..Default::default()
        }),
        config: Some(pb::TrainingConfig {
            epochs: Some(epochs),
            batch_size: Some(32),
            validation_split: Some(0.2),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn run(c: &mut Clients, request: pb::CreateTuningJobRequest) -> (pb::Job, Vec<pb::JobEvent>) {
    let job = c
        .jobs
        .create_tuning_job(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(job.kind, "tuning");
    let events = watch_all(c, &job.id).await;
    let job = c
        .jobs
        .get_job(pb::GetJobRequest { id: job.id })
        .await
        .unwrap()
        .into_inner();
    (job, events)
}

fn params(t: &pb::Trial) -> Vec<(String, String)> {
    t.hyperparameters
        .iter()
        .map(|h| (h.name.clone(), h.value.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2x2_grid_runs_four_trials_and_registers_the_best() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    let ds = ids_dataset(&mut c, "cycle", cycle(7, 300), 7).await;
    let mut request = base(&ds.id, 3);
    request.strategy = "grid".into();
    request.search_space = Some(pb::SearchSpace {
        units: choices(&[8.0, 16.0]),
        learning_rate: choices(&[0.001, 0.03]),
        ..Default::default()
    });
    let (job, events) = run(&mut c, request).await;
    let done = finished(&events);
    assert_eq!(
        done.state,
        pb::JobState::Succeeded as i32,
        "{}",
        done.reason
    );
    assert_eq!(job.trials.len(), 4);
    let mut grid: Vec<Vec<(String, String)>> = job.trials.iter().map(params).collect();
    grid.sort();
    assert_eq!(grid.len(), 4);
    grid.dedup();
    assert_eq!(grid.len(), 4, "four distinct configs");
    for t in &job.trials {
        assert_eq!(t.state, pb::JobState::Succeeded as i32);
        assert_eq!(t.epochs, 3);
        assert_eq!(t.history.len(), 3);
        // The score is the best val_loss over the trial's epochs.
        let best = t
            .history
            .iter()
            .map(|m| m.val_loss.unwrap())
            .fold(f64::INFINITY, f64::min);
        assert_eq!(t.score, Some(best));
    }
    // The leaderboard is best first, and the registered model is its head.
    let scores: Vec<f64> = job.trials.iter().map(|t| t.score.unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] <= w[1]), "{scores:?}");
    let model = done.model.clone().unwrap();
    assert_eq!(model.name, "tuned");
    let (_, metadata) = {
        let mut stream = c
            .models
            .export_model(pb::ExportModelRequest {
                name: "tuned".into(),
                version: model.version,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut meta = Vec::new();
        while let Some(chunk) = stream.message().await.unwrap() {
            if chunk.file == "metadata.json" {
                meta.extend(chunk.data);
            }
        }
        (
            (),
            serde_json::from_slice::<serde_json::Value>(&meta).unwrap(),
        )
    };
    assert_eq!(metadata["tuning"]["trial"], job.trials[0].number);
    assert_eq!(metadata["tuning"]["score"].as_f64(), job.trials[0].score);
    let winner_units = params(&job.trials[0])
        .into_iter()
        .find(|(k, _)| k == "units")
        .unwrap()
        .1;
    assert_eq!(
        metadata["spec"]["layers"][0]["units"].to_string(),
        winner_units
    );
    // Trial models were discarded.
    let models = c
        .models
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        models
            .models
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>(),
        vec!["tuned"]
    );
    // The stream told each trial's story.
    let whats: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(pb::job_event::Kind::Trial(t)) => Some(t.what.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(whats.iter().filter(|w| *w == "started").count(), 4);
    assert_eq!(whats.iter().filter(|w| *w == "ended").count(), 4);
    assert_eq!(whats.iter().filter(|w| *w == "reported").count(), 12);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_search_with_one_seed_samples_the_same_configs() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    let ds = ids_dataset(&mut c, "cycle", cycle(7, 200), 7).await;
    let request = |seed| {
        let mut r = base(&ds.id, 1);
        r.strategy = "random".into();
        r.max_trials = 3;
        r.seed = seed;
        r.search_space = Some(pb::SearchSpace {
            units: range(4.0, 32.0),
            dropout: choices(&[0.0, 0.3, 0.5]),
            learning_rate: range(1e-4, 1e-1),
            ..Default::default()
        });
        r
    };
    let sampled = |job: &pb::Job| {
        let mut trials = job.trials.clone();
        trials.sort_by_key(|t| t.number);
        trials.iter().map(params).collect::<Vec<_>>()
    };
    let (a, _) = run(&mut c, request(5)).await;
    let (b, _) = run(&mut c, request(5)).await;
    let (other, _) = run(&mut c, request(6)).await;
    assert_eq!(sampled(&a).len(), 3);
    assert_eq!(sampled(&a), sampled(&b));
    assert_ne!(sampled(&a), sampled(&other));
    for t in &a.trials {
        let lr: f64 = params(t)
            .into_iter()
            .find(|(k, _)| k == "learning_rate")
            .unwrap()
            .1
            .parse()
            .unwrap();
        assert!((1e-4..=1e-1).contains(&lr), "{lr}");
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyperband_stops_bad_configs_early_and_finds_the_best() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    let ds = ids_dataset(&mut c, "cycle", cycle(7, 300), 7).await;
    let mut request = base(&ds.id, 9);
    request.strategy = "hyperband".into();
    request.max_trials = 9;
    request.max_epochs = 9;
    request.reduction_factor = 3;
    request.seed = 3;
    // A learning rate of 1e-5 learns nothing in a few epochs; 0.03 learns fast.
    request.search_space = Some(pb::SearchSpace {
        learning_rate: choices(&[1e-5, 0.03]),
        ..Default::default()
    });
    let (job, events) = run(&mut c, request).await;
    let done = finished(&events);
    assert_eq!(
        done.state,
        pb::JobState::Succeeded as i32,
        "{}",
        done.reason
    );
    assert_eq!(job.trials.len(), 9);
    let lr = |t: &pb::Trial| {
        params(t)
            .into_iter()
            .find(|(k, _)| k == "learning_rate")
            .unwrap()
            .1
    };
    assert!(
        job.trials.iter().any(|t| lr(t) == "1e-5") && job.trials.iter().any(|t| lr(t) == "3e-2")
    );
    let total: u32 = job.trials.iter().map(|t| t.epochs).sum();
    assert!(
        total < 9 * 9,
        "hyperband trained {total} epochs, as many as running all to the end"
    );
    assert_eq!(total, 6 + 2 * 3 + 9, "rungs of 9x1, 3x3 and 1x9 epochs");
    assert_eq!(job.trials.iter().filter(|t| t.stopped_early).count(), 8);
    let best = &job.trials[0];
    assert_eq!(best.epochs, 9);
    assert_eq!(lr(best), "3e-2");
    // The continued trials resumed from their checkpoints: one job per rung.
    assert_eq!(best.job_ids.len(), 3);
    assert_eq!(
        best.history.iter().map(|m| m.epoch).collect::<Vec<_>>(),
        (1..=9).collect::<Vec<_>>()
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_search_and_its_running_trials() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    let ds = ids_dataset(&mut c, "cycle", cycle(7, 3000), 7).await;
    let mut request = base(&ds.id, 200);
    request.strategy = "grid".into();
    request.search_space = Some(pb::SearchSpace {
        units: choices(&[8.0, 16.0, 24.0]),
        ..Default::default()
    });
    let job = c
        .jobs
        .create_tuning_job(request)
        .await
        .unwrap()
        .into_inner();
    let mut stream = c
        .jobs
        .watch_job(pb::WatchJobRequest { id: job.id.clone() })
        .await
        .unwrap()
        .into_inner();
    let trial_job = loop {
        let e = stream.message().await.unwrap().unwrap();
        if let Some(pb::job_event::Kind::Trial(t)) = e.kind {
            if t.what == "reported" {
                break t.trial.unwrap().job_ids[0].clone();
            }
        }
    };
    c.jobs
        .cancel_job(pb::CancelJobRequest { id: job.id.clone() })
        .await
        .unwrap();
    let rest = collect(stream).await;
    assert_eq!(finished(&rest).state, pb::JobState::Cancelled as i32);
    let child = c
        .jobs
        .get_job(pb::GetJobRequest { id: trial_job })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(child.state, pb::JobState::Cancelled as i32);
    assert_eq!(child.parent_id, job.id);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_search_spaces_get_invalid_argument() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    let ds = ids_dataset(&mut c, "cycle", cycle(7, 300), 7).await;
    let with = |space: pb::SearchSpace, strategy: &str| {
        let mut r = base(&ds.id, 1);
        r.strategy = strategy.into();
        r.search_space = Some(space);
        r
    };
    let cases = [
        (
            with(
                pb::SearchSpace {
                    learning_rate: range(0.1, 0.01),
                    ..Default::default()
                },
                "random",
            ),
            "search_space.learning_rate.min must be <= max",
        ),
        (
            with(
                pb::SearchSpace {
                    learning_rate: range(-1.0, 0.01),
                    ..Default::default()
                },
                "random",
            ),
            "search_space.learning_rate.min",
        ),
        (
            with(
                pb::SearchSpace {
                    units: range(8.0, 16.0),
                    ..Default::default()
                },
                "grid",
            ),
            "search_space.units must list choices for a grid search",
        ),
        (
            with(
                pb::SearchSpace {
                    units: choices(&[0.0]),
                    ..Default::default()
                },
                "grid",
            ),
            "search_space.units.choices",
        ),
        (
            with(
                pb::SearchSpace {
                    dropout: choices(&[1.5]),
                    ..Default::default()
                },
                "grid",
            ),
            "search_space.dropout.choices",
        ),
        (
            with(pb::SearchSpace::default(), "bayesian"),
            "strategy must be grid, random or hyperband",
        ),
    ];
    for (request, needle) in cases {
        let err = c.jobs.create_tuning_job(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().contains(needle),
            "{:?} lacks {needle:?}",
            err.message()
        );
    }
    let mut no_validation = with(pb::SearchSpace::default(), "random");
    no_validation.config.as_mut().unwrap().validation_split = None;
    let err = c.jobs.create_tuning_job(no_validation).await.unwrap_err();
    assert!(err.message().contains("validation"), "{err:?}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_continues_the_search_without_rerunning_finished_trials() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    let ds = ids_dataset(&mut c, "cycle", cycle(7, 2000), 7).await;
    let mut request = base(&ds.id, 4);
    request.strategy = "grid".into();
    request.search_space = Some(pb::SearchSpace {
        units: choices(&[8.0, 12.0, 16.0]),
        ..Default::default()
    });
    let job = c
        .jobs
        .create_tuning_job(request)
        .await
        .unwrap()
        .into_inner();
    let mut stream = c
        .jobs
        .watch_job(pb::WatchJobRequest { id: job.id.clone() })
        .await
        .unwrap()
        .into_inner();
    let first = loop {
        let e = stream.message().await.unwrap().unwrap();
        if let Some(pb::job_event::Kind::Trial(t)) = e.kind {
            if t.what == "ended" {
                break t.trial.unwrap();
            }
        }
    };
    server.stop().await.unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    let events = watch_all(&mut c, &job.id).await;
    assert_eq!(
        finished(&events).state,
        pb::JobState::Succeeded as i32,
        "{}",
        finished(&events).reason
    );
    let job = c
        .jobs
        .get_job(pb::GetJobRequest { id: job.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(job.trials.len(), 3);
    let again = job
        .trials
        .iter()
        .find(|t| t.number == first.number)
        .unwrap();
    assert_eq!(
        again.job_ids, first.job_ids,
        "a finished trial is not run again"
    );
    assert!(job
        .trials
        .iter()
        .all(|t| t.state == pb::JobState::Succeeded as i32 && t.epochs == 4));
    server.stop().await.unwrap();
}
