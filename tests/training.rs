//! The training engine over gRPC: learning, early stopping with restored
//! best weights, reduce-on-plateau, numerical failure with the checkpoint
//! kept, bit-identical reruns, dropout only in training.
mod common;

use common::*;
use lstmd::proto as pb;

fn monitor(metric: &str) -> Option<pb::Monitor> {
    Some(pb::Monitor {
        metric: metric.into(),
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_preset_learns_a_pattern_to_high_validation_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    let ds = ids_dataset(&mut c, "cycle", cycle(9, 900), 9).await;
    let events = train(
        &mut c,
        pb::CreateTrainingJobRequest {
            model_name: "deep".into(),
            dataset_id: ds.id,
            spec: spec("deep", 5),
            config: Some(pb::TrainingConfig {
                epochs: Some(15),
                batch_size: Some(32),
                learning_rate: Some(0.01),
                validation_split: Some(0.2),
                seed: Some(3),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(finished(&events).state, pb::JobState::Succeeded as i32);
    let last = epochs(&events).pop().unwrap();
    assert!(last.val_accuracy.unwrap() > 0.95, "{last:?}");
    assert!(last.val_top5_accuracy.unwrap() >= last.val_accuracy.unwrap());
    assert!((last.perplexity - last.loss.exp()).abs() < 1e-9);
    assert!(last.val_perplexity.unwrap() < 1.5, "{last:?}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_stopping_on_noise_stops_early_and_registers_the_best_epochs_weights() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    let ds = ids_dataset(&mut c, "noise", noise(6, 800, 1), 6).await;
    let config = |epochs: u32, early: bool| pb::TrainingConfig {
        epochs: Some(epochs),
        batch_size: Some(32),
        learning_rate: Some(0.01),
        validation_split: Some(0.25),
        seed: Some(11),
        early_stopping: early.then(|| pb::EarlyStopping {
            monitor: monitor("val_loss"),
            patience: 2,
            restore_best_weights: true,
        }),
        ..Default::default()
    };
    let request = |name: &str, config| pb::CreateTrainingJobRequest {
        model_name: name.into(),
        dataset_id: ds.id.clone(),
        spec: Some(pb::ModelSpec {
            preset: "deep".into(),
            window: Some(4),
            layers: vec![pb::RecurrentLayer {
                cell: pb::Cell::Gru as i32,
                units: 32,
                ..Default::default()
            }],
            ..Default::default()
        }),
        config: Some(config),
        ..Default::default()
    };
    let events = train(&mut c, request("stopped", config(60, true))).await;
    let done = finished(&events).clone();
    assert_eq!(
        done.state,
        pb::JobState::Succeeded as i32,
        "{}",
        done.reason
    );
    assert!(done.stopped_early, "{}", done.reason);
    let history = epochs(&events);
    let ran = history.len() as u32;
    assert!(ran < 60, "ran all {ran} epochs");
    let best = done.best_epoch;
    // The best epoch is the one with the lowest val_loss, and patience 2
    // means training ran exactly two epochs past it.
    let min_epoch = history
        .iter()
        .min_by(|a, b| a.val_loss.unwrap().total_cmp(&b.val_loss.unwrap()))
        .unwrap()
        .epoch;
    assert_eq!(best, min_epoch);
    assert_eq!(ran, best + 2);
    assert_eq!(done.weights_epoch, best);
    assert!(
        done.reason
            .contains(&format!("early stopping at epoch {ran}")),
        "{}",
        done.reason
    );
    assert!(
        done.reason.contains(&format!("best epoch {best}")),
        "{}",
        done.reason
    );

    // The same seed and config trained for exactly `best` epochs ends with
    // the weights early stopping restored, bit for bit.
    let events = train(&mut c, request("reference", config(best, false))).await;
    assert_eq!(finished(&events).state, pb::JobState::Succeeded as i32);
    assert_eq!(
        weights_file(dir.path(), "stopped", 1),
        weights_file(dir.path(), "reference", 1)
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reduce_on_plateau_lowers_the_learning_rate_in_the_events() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    let ds = ids_dataset(&mut c, "noise", noise(6, 600, 2), 6).await;
    let events = train(
        &mut c,
        pb::CreateTrainingJobRequest {
            model_name: "plateau".into(),
            dataset_id: ds.id,
            spec: spec("deep", 4),
            config: Some(pb::TrainingConfig {
                epochs: Some(12),
                batch_size: Some(32),
                learning_rate: Some(0.02),
                validation_split: Some(0.25),
                reduce_lr_on_plateau: Some(pb::ReduceLrOnPlateau {
                    monitor: monitor("val_loss"),
                    factor: Some(0.5),
                    patience: 1,
                    min_lr: 0.001,
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(finished(&events).state, pb::JobState::Succeeded as i32);
    let rates: Vec<f64> = epochs(&events).iter().map(|m| m.learning_rate).collect();
    assert!((rates[0] - 0.02).abs() < 1e-9, "{rates:?}");
    assert!(
        rates.windows(2).all(|w| w[1] <= w[0]),
        "never raised: {rates:?}"
    );
    let last = *rates.last().unwrap();
    assert!(last < 0.02, "a plateau on noise lowers the rate: {rates:?}");
    assert!(last >= 0.001 - 1e-12, "not below min_lr: {rates:?}");
    // Each reduction halves the rate (or stops at min_lr).
    for w in rates.windows(2).filter(|w| w[1] < w[0]) {
        assert!((w[1] - (w[0] * 0.5).max(0.001)).abs() < 1e-9, "{rates:?}");
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_learning_rate_fails_with_a_nan_reason_and_keeps_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    let ds = ids_dataset(&mut c, "cycle", cycle(5, 200), 5).await;
    let spec_ = spec("deep", 4);
    let events = train(
        &mut c,
        pb::CreateTrainingJobRequest {
            model_name: "exploding".into(),
            dataset_id: ds.id,
            spec: spec_,
            config: Some(pb::TrainingConfig {
                epochs: Some(3),
                // One batch an epoch: the first step moves every weight by
                // about the learning rate, the next forward overflows.
                batch_size: Some(1024),
                learning_rate: Some(1e38),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;
    let done = finished(&events);
    assert_eq!(done.state, pb::JobState::Failed as i32);
    assert!(done.reason.contains("epoch 2, batch 1"), "{}", done.reason);
    assert!(
        done.reason.contains("NaN") || done.reason.contains("inf"),
        "{}",
        done.reason
    );
    assert!(
        done.reason.contains("the epoch 1 checkpoint is kept"),
        "{}",
        done.reason
    );
    assert_eq!(epochs(&events).len(), 1);
    // The checkpoint on disk is epoch 1's, readable and finite.
    let job_id = &events[0].job_id;
    let bytes = std::fs::read(
        dir.path()
            .join(format!("blobs/{}", lstmd::jobs::checkpoint_key(job_id))),
    )
    .unwrap();
    let spec = lstmd::nn::spec::preset("deep").map(|mut s| {
        s.window = 4;
        s.vocab_size = 5;
        s
    });
    let names: Vec<String> = lstmd::nn::naming::parameter_shapes(&spec.unwrap())
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let cp =
        lstmd::train::Checkpoint::from_bytes(&bytes, &names, &candle_core::Device::Cpu).unwrap();
    assert_eq!(cp.state.epoch, 1);
    assert_eq!(cp.state.history.len(), 1);
    for (name, t) in &cp.parameters {
        // 0 * x is NaN exactly where x is not finite.
        let s = t
            .affine(0.0, 0.0)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_dtype(candle_core::DType::F64)
            .unwrap();
        assert!(
            s.to_scalar::<f64>().unwrap().is_finite(),
            "{name} is not finite in the kept checkpoint"
        );
    }
    let job = c
        .jobs
        .get_job(pb::GetJobRequest { id: job_id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(job.state, pb::JobState::Failed as i32);
    assert!(job.model.is_none());
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_seed_gives_identical_bytes_and_dropout_never_touches_predictions() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    let ds = ids_dataset(&mut c, "cycle", cycle(7, 400), 7).await;
    let request = |seed: u64| pb::CreateTrainingJobRequest {
        model_name: "dropout".into(),
        dataset_id: ds.id.clone(),
        // The tutorial's dropout model: LSTM 64, Dropout 0.5, LSTM 64, Dropout 0.5.
        spec: spec("dropout", 4),
        config: Some(pb::TrainingConfig {
            epochs: Some(2),
            batch_size: Some(32),
            seed: Some(seed),
            validation_split: Some(0.1),
            ..Default::default()
        }),
        ..Default::default()
    };
    for seed in [5, 5, 6] {
        let events = train(&mut c, request(seed)).await;
        assert_eq!(finished(&events).state, pb::JobState::Succeeded as i32);
    }
    let (a, b, other) = (
        weights_file(dir.path(), "dropout", 1),
        weights_file(dir.path(), "dropout", 2),
        weights_file(dir.path(), "dropout", 3),
    );
    assert_eq!(a, b, "same seed, same bytes");
    assert_ne!(a, other, "another seed, other weights");

    // Predictions of a dropout model are deterministic.
    let predict = pb::PredictRequest {
        model: "dropout".into(),
        version: 1,
        sequences: vec![pb::Sequence {
            ids: vec![1, 2, 3, 4],
            text: String::new(),
        }],
        top_k: Some(7),
        ..Default::default()
    };
    let p1 = c
        .predict
        .predict(predict.clone())
        .await
        .unwrap()
        .into_inner();
    let p2 = c.predict.predict(predict).await.unwrap().into_inner();
    assert_eq!(p1, p2);
    server.stop().await.unwrap();
}

#[test]
fn dropout_changes_training_outputs_only() {
    use candle_core::{Device, Tensor};
    use lstmd::nn::{initial_parameters, spec::preset, Dropout, Network};
    let spec = preset("dropout").unwrap();
    let params = initial_parameters(&spec, 1, &Device::Cpu)
        .unwrap()
        .into_iter()
        .collect();
    let net = Network::from_tensors(&spec, &params).unwrap();
    let ids = Tensor::from_vec((0..20u32).collect::<Vec<_>>(), (2, 10), &Device::Cpu).unwrap();
    let values = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let eval1 = values(net.forward(&ids, None).unwrap());
    let eval2 = values(net.forward(&ids, None).unwrap());
    assert_eq!(eval1, eval2);
    let mut dropout = Dropout::new(9);
    let train1 = values(net.forward(&ids, Some(&mut dropout)).unwrap());
    let train2 = values(net.forward(&ids, Some(&mut dropout)).unwrap());
    assert_ne!(train1, eval1);
    assert_ne!(train1, train2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_separate_validation_dataset_is_measured_every_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    let ds = ids_dataset(&mut c, "train", cycle(5, 300), 5).await;
    let val = ids_dataset(&mut c, "held-out", cycle(5, 60), 5).await;
    let other = ids_dataset(&mut c, "other", cycle(9, 60), 9).await;
    let request = |validation: &str, split: Option<f32>| pb::CreateTrainingJobRequest {
        model_name: "v".into(),
        dataset_id: ds.id.clone(),
        validation_dataset_id: validation.into(),
        spec: spec("deep", 4),
        config: Some(pb::TrainingConfig {
            epochs: Some(3),
            learning_rate: Some(0.01),
            validation_split: split,
            ..Default::default()
        }),
    };
    let events = train(&mut c, request(&val.id, None)).await;
    assert_eq!(finished(&events).state, pb::JobState::Succeeded as i32);
    let history = epochs(&events);
    assert!(history
        .iter()
        .all(|m| m.val_loss.is_some() && m.val_accuracy.is_some()));
    let job = c
        .jobs
        .get_job(pb::GetJobRequest {
            id: events[0].job_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(job.validation_dataset_id, val.id);
    let err = c
        .jobs
        .create_training_job(request(&other.id, None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("validation_dataset_id"), "{err:?}");
    let err = c
        .jobs
        .create_training_job(request(&val.id, Some(0.2)))
        .await
        .unwrap_err();
    assert!(
        err.message().contains("config.validation_split must be 0"),
        "{err:?}"
    );
    let err = c
        .jobs
        .create_training_job(request("ds-missing", None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    server.stop().await.unwrap();
}
