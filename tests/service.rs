//! The first end-to-end slice over real gRPC: datasets, training with a
//! streamed progress, models, predictions, restart, and bad input.
mod common;

use common::*;
use lstmd::proto as pb;
use tonic::Code;

fn deep_request(dataset_id: &str, model: &str, epochs: u32) -> pb::CreateTrainingJobRequest {
    pb::CreateTrainingJobRequest {
        model_name: model.into(),
        dataset_id: dataset_id.into(),
        spec: Some(pb::ModelSpec {
            preset: "deep".into(),
            window: Some(4),
            ..Default::default()
        }),
        config: Some(pb::TrainingConfig {
            epochs: Some(epochs),
            batch_size: Some(32),
            learning_rate: Some(0.01),
            seed: Some(7),
            validation_split: Some(0.1),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn predict_request(model: &str, sequences: Vec<Vec<u32>>) -> pb::PredictRequest {
    pb::PredictRequest {
        model: model.into(),
        version: 0,
        sequences: sequences
            .into_iter()
            .map(|ids| pb::Sequence {
                ids,
                text: String::new(),
            })
            .collect(),
        top_k: Some(3),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn train_watch_predict_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    let ds = ids_dataset(&mut c, "cycle7", cycle(7, 700), 10).await;
    assert_eq!(ds.token_count, 700);
    assert_eq!(ds.vocab_size, 10);

    let events = collect(
        c.jobs
            .train(deep_request(&ds.id, "cycler", 12))
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    // In order, numbered 1..=n, ending with the terminal event.
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>());
    let done = finished(&events);
    assert_eq!(
        done.state,
        pb::JobState::Succeeded as i32,
        "{}",
        done.reason
    );
    let model = done.model.clone().unwrap();
    assert_eq!((model.name.as_str(), model.version), ("cycler", 1));
    let history = epochs(&events);
    assert_eq!(
        history.iter().map(|m| m.epoch).collect::<Vec<_>>(),
        (1..=12).collect::<Vec<_>>()
    );
    let last = history.last().unwrap();
    assert!(last.accuracy > 0.9, "train accuracy {}", last.accuracy);
    assert!(
        last.val_accuracy.unwrap() > 0.9,
        "val accuracy {:?}",
        last.val_accuracy
    );

    // The job record agrees with the stream.
    let job_id = events[0].job_id.clone();
    let job = c
        .jobs
        .get_job(pb::GetJobRequest { id: job_id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(job.state, pb::JobState::Succeeded as i32);
    assert_eq!(job.history.len(), 12);
    assert_eq!(job.spec.unwrap().layers.len(), 2);
    let listed = c
        .jobs
        .list_jobs(pb::ListJobsRequest {
            state: pb::JobState::Succeeded as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed.jobs.iter().map(|j| j.id.clone()).collect::<Vec<_>>(),
        vec![job_id.clone()]
    );
    let failed = c
        .jobs
        .list_jobs(pb::ListJobsRequest {
            state: pb::JobState::Failed as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(failed.jobs.is_empty());

    // WatchJob on a finished job replays the same events.
    let replay = collect(
        c.jobs
            .watch_job(pb::WatchJobRequest { id: job_id })
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    assert_eq!(replay, events);

    // The model predicts the pattern's next token for windows of the length
    // it was trained on; shorter and longer sequences share the batch.
    let seqs = vec![
        vec![3, 4, 5, 6],
        vec![0, 1],
        vec![5, 6, 0, 1],
        vec![2, 3, 4, 5, 6, 0, 1, 2],
    ];
    let before = c
        .predict
        .predict(predict_request("cycler", seqs.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((before.model.as_str(), before.version), ("cycler", 1));
    assert_eq!(before.predictions.len(), 4);
    for (p, want) in [&before.predictions[0], &before.predictions[2]]
        .into_iter()
        .zip([0, 2])
    {
        assert_eq!(p.top.len(), 3);
        assert_eq!(p.top[0].id, want, "{p:?}");
        assert!(p.top[0].probability > 0.5);
        assert!(p.top[0].probability >= p.top[1].probability);
    }
    // Each sequence alone gives the same answer as in the batch.
    for (i, s) in seqs.iter().enumerate() {
        let alone = c
            .predict
            .predict(predict_request("cycler", vec![s.clone()]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(alone.predictions[0], before.predictions[i]);
    }

    let info = c
        .models
        .get_model(pb::GetModelRequest {
            name: "cycler".into(),
            version: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.history.len(), 12);
    let summary = info.summary.unwrap();
    let kinds: Vec<&str> = summary.layers.iter().map(|l| l.kind.as_str()).collect();
    assert_eq!(kinds, vec!["Embedding", "LSTM", "LSTM", "Dense"]);
    assert_eq!(summary.layers[1].output_shape, vec![-1, 4, 64]);
    assert_eq!(summary.layers[3].output_shape, vec![-1, 10]);
    assert!(info.weights_bytes > 4 * summary.total_parameters);
    let models = c
        .models
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(models.models.len(), 1);

    // Restart on the same data dir: the model loads from disk and gives the
    // same probabilities.
    server.stop().await.unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    let after = c
        .predict
        .predict(predict_request("cycler", seqs))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after, before);
    let ds_again = c
        .datasets
        .get_dataset(pb::GetDatasetRequest { id: ds.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ds_again, ds);
    server.stop().await.unwrap();
}

fn assert_status<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, needle: &str) {
    let status = result.expect_err("the call must fail");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(needle),
        "{:?} lacks {needle:?}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_status_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    let ds = ids_dataset(&mut c, "small", cycle(5, 50), 5).await;

    // Datasets.
    let create = |data, name: &str| pb::CreateDatasetRequest {
        name: name.into(),
        data: Some(data),
        ..Default::default()
    };
    use pb::create_dataset_request::Data;
    assert_status(
        c.datasets
            .create_dataset(create(
                Data::Ids(pb::TokenIds {
                    ids: vec![],
                    vocab_size: 5,
                }),
                "empty",
            ))
            .await,
        Code::InvalidArgument,
        "ids.ids must hold at least 2 tokens",
    );
    assert_status(
        c.datasets
            .create_dataset(create(
                Data::Ids(pb::TokenIds {
                    ids: vec![1, 2, 7],
                    vocab_size: 5,
                }),
                "big",
            ))
            .await,
        Code::InvalidArgument,
        "ids.ids[2] must be < vocab size 5, got 7",
    );
    assert_status(
        c.datasets
            .create_dataset(create(Data::Text(String::new()), "blank"))
            .await,
        Code::InvalidArgument,
        "text must hold at least 2 tokens",
    );
    assert_status(
        c.datasets
            .create_dataset(create(Data::Text("abc".into()), "../escape"))
            .await,
        Code::InvalidArgument,
        "name must be 1..=64 characters",
    );
    assert_status(
        c.datasets
            .create_dataset(create(
                Data::Ids(pb::TokenIds {
                    ids: vec![1, 2],
                    vocab_size: 5,
                }),
                "small",
            ))
            .await,
        Code::AlreadyExists,
        "small",
    );
    assert_status(
        c.datasets
            .get_dataset(pb::GetDatasetRequest {
                id: "ds-nope".into(),
            })
            .await,
        Code::NotFound,
        "ds-nope",
    );

    // Training jobs.
    let job = |spec: pb::ModelSpec, dataset_id: &str| pb::CreateTrainingJobRequest {
        model_name: "m".into(),
        dataset_id: dataset_id.into(),
        spec: Some(spec),
        config: None,
        ..Default::default()
    };
    assert_status(
        c.jobs
            .create_training_job(job(
                pb::ModelSpec {
                    preset: "huge".into(),
                    ..Default::default()
                },
                &ds.id,
            ))
            .await,
        Code::InvalidArgument,
        "spec.preset must be one of dropout, tuning, bidirectional, deep",
    );
    assert_status(
        c.jobs
            .create_training_job(job(
                pb::ModelSpec {
                    preset: "deep".into(),
                    window: Some(0),
                    ..Default::default()
                },
                &ds.id,
            ))
            .await,
        Code::InvalidArgument,
        "spec.window must be 1..=4096, got 0",
    );
    let bad_layer = pb::ModelSpec {
        preset: "deep".into(),
        layers: vec![
            pb::RecurrentLayer {
                cell: pb::Cell::Gru as i32,
                units: 8,
                ..Default::default()
            },
            pb::RecurrentLayer {
                cell: pb::Cell::Lstm as i32,
                units: 0,
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    assert_status(
        c.jobs.create_training_job(job(bad_layer, &ds.id)).await,
        Code::InvalidArgument,
        "spec.layers[1].units must be 1..=4096, got 0",
    );
    assert_status(
        c.jobs
            .create_training_job(job(
                pb::ModelSpec {
                    preset: "deep".into(),
                    vocab_size: Some(3),
                    ..Default::default()
                },
                &ds.id,
            ))
            .await,
        Code::InvalidArgument,
        "spec.vocab_size must be at least the dataset's vocabulary size 5",
    );
    assert_status(
        c.jobs
            .create_training_job(job(
                pb::ModelSpec {
                    preset: "deep".into(),
                    window: Some(50),
                    ..Default::default()
                },
                &ds.id,
            ))
            .await,
        Code::InvalidArgument,
        "too few for one window of spec.window 50",
    );
    assert_status(
        c.jobs
            .create_training_job(job(
                pb::ModelSpec {
                    preset: "deep".into(),
                    ..Default::default()
                },
                "ds-missing",
            ))
            .await,
        Code::NotFound,
        "dataset_id \"ds-missing\"",
    );
    let mut bad_config = job(
        pb::ModelSpec {
            preset: "deep".into(),
            ..Default::default()
        },
        &ds.id,
    );
    bad_config.config = Some(pb::TrainingConfig {
        batch_size: Some(0),
        ..Default::default()
    });
    assert_status(
        c.jobs.create_training_job(bad_config).await,
        Code::InvalidArgument,
        "config.batch_size",
    );
    assert_status(
        c.jobs
            .get_job(pb::GetJobRequest {
                id: "job-nope".into(),
            })
            .await,
        Code::NotFound,
        "job-nope",
    );
    assert_status(
        c.jobs
            .watch_job(pb::WatchJobRequest {
                id: "job-nope".into(),
            })
            .await,
        Code::NotFound,
        "job-nope",
    );

    // Predictions.
    assert_status(
        c.predict
            .predict(predict_request("no-such-model", vec![vec![1]]))
            .await,
        Code::NotFound,
        "no-such-model",
    );
    assert_status(
        c.models
            .get_model(pb::GetModelRequest {
                name: "no-such-model".into(),
                version: 0,
            })
            .await,
        Code::NotFound,
        "name \"no-such-model\"",
    );
    let mut small_job = job(
        pb::ModelSpec {
            preset: "deep".into(),
            window: Some(3),
            ..Default::default()
        },
        &ds.id,
    );
    small_job.config = Some(pb::TrainingConfig {
        epochs: Some(1),
        ..Default::default()
    });
    let events = collect(c.jobs.train(small_job).await.unwrap().into_inner()).await;
    assert_eq!(finished(&events).state, pb::JobState::Succeeded as i32);
    assert_status(
        c.predict
            .predict(predict_request("m", vec![vec![1, 2], vec![4, 5]]))
            .await,
        Code::InvalidArgument,
        "sequences[1].ids[1] must be < vocab size 5, got 5",
    );
    assert_status(
        c.predict.predict(predict_request("m", vec![vec![]])).await,
        Code::InvalidArgument,
        "sequences[0] must hold 1 or more tokens",
    );
    assert_status(
        c.predict.predict(predict_request("m", vec![])).await,
        Code::InvalidArgument,
        "sequences must hold 1..=",
    );
    let mut k0 = predict_request("m", vec![vec![1]]);
    k0.top_k = Some(0);
    assert_status(
        c.predict.predict(k0).await,
        Code::InvalidArgument,
        "top_k must be 1..=5, got 0",
    );
    let mut v9 = predict_request("m", vec![vec![1]]);
    v9.version = 9;
    assert_status(c.predict.predict(v9).await, Code::NotFound, "version 9");
    let text = pb::PredictRequest {
        model: "m".into(),
        sequences: vec![pb::Sequence {
            ids: vec![],
            text: "hi".into(),
        }],
        ..Default::default()
    };
    assert_status(
        c.predict.predict(text).await,
        Code::InvalidArgument,
        "sequences[0].text",
    );
    server.stop().await.unwrap();
}
