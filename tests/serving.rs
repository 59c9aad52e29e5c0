//! Serving controls through the real server: version labels (set, moved,
//! removed; Predict and OIP by label), a model's batching settings, its
//! statistics in GetModel, warm-up readiness, the Open Inference Protocol
//! (with the generated tonic client; CI also runs tritonclient against it,
//! scripts/oip_check.py), and shedding under 512 concurrent clients.
mod common;

use common::*;
use lstmd::oip;
use lstmd::oip::grpc_inference_service_client::GrpcInferenceServiceClient;
use lstmd::proto as pb;
use tonic::Code;

/// Trains a new version of `name` (each call a dataset of its own).
async fn trained(c: &mut Clients, name: &str) {
    let tag = next_tag();
    let ds = ids_dataset(c, &format!("{name}-data-{tag}"), cycle(7, 300), 7).await;
    let events = train(
        c,
        pb::CreateTrainingJobRequest {
            model_name: name.into(),
            dataset_id: ds.id,
            spec: spec("dropout", 4),
            config: Some(pb::TrainingConfig {
                epochs: Some(2),
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

fn next_tag() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn predict_by(model: &str, version: u32, label: &str, ids: &[u32]) -> pb::PredictRequest {
    pb::PredictRequest {
        model: if label.is_empty() {
            model.into()
        } else {
            format!("{model}@{label}")
        },
        version,
        sequences: vec![pb::Sequence {
            ids: ids.to_vec(),
            text: String::new(),
        }],
        top_k: Some(7),
        whole_input: false,
    }
}

async fn set_label(
    c: &mut Clients,
    name: &str,
    label: &str,
    version: u32,
) -> Result<pb::SetModelLabelResponse, tonic::Status> {
    c.models
        .set_model_label(pb::SetModelLabelRequest {
            name: name.into(),
            label: label.into(),
            version,
        })
        .await
        .map(|r| r.into_inner())
}

async fn get_model(c: &mut Clients, name: &str, version: u32) -> pb::Model {
    c.models
        .get_model(pb::GetModelRequest {
            name: name.into(),
            version,
        })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_move_atomically_and_route_predictions() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    trained(&mut c, "m").await;
    trained(&mut c, "m").await; // v2

    let set = set_label(&mut c, "m", "stable", 1).await.unwrap();
    assert_eq!(set.previous_version, 0);
    assert_eq!(set.labels.get("stable"), Some(&1));
    let canary = set_label(&mut c, "m", "canary", 2).await.unwrap();
    assert_eq!(canary.labels.len(), 2);

    let ids = [1, 2, 3, 4];
    for (label, version) in [("stable", 1), ("canary", 2)] {
        let by_label = c
            .predict
            .predict(predict_by("m", 0, label, &ids))
            .await
            .unwrap()
            .into_inner();
        let pinned = c
            .predict
            .predict(predict_by("m", version, "", &ids))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(by_label.version, version, "{label}");
        assert_eq!(by_label.predictions, pinned.predictions, "{label}");
    }
    // Labels were loaded and run once before they moved.
    let v1 = get_model(&mut c, "m", 1).await;
    assert_eq!(v1.labels, vec!["stable".to_string()]);
    assert!(v1.statistics.as_ref().unwrap().ready);

    // Moving: the label names v2 from the next call on; the answer says
    // where it was.
    let moved = set_label(&mut c, "m", "stable", 2).await.unwrap();
    assert_eq!(moved.previous_version, 1);
    let now = c
        .predict
        .predict(predict_by("m", 0, "stable", &ids))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now.version, 2);
    let mut v2_labels = get_model(&mut c, "m", 2).await.labels;
    v2_labels.sort();
    assert_eq!(v2_labels, vec!["canary".to_string(), "stable".to_string()]);

    // Removing, and what is refused.
    let removed = set_label(&mut c, "m", "canary", 0).await.unwrap();
    assert_eq!(removed.previous_version, 2);
    let gone = c
        .predict
        .predict(predict_by("m", 0, "canary", &ids))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    assert!(gone.message().contains("canary"), "{gone:?}");
    let missing = set_label(&mut c, "m", "stable", 9).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert!(missing.message().contains('9'), "{missing:?}");
    for bad in ["", "12", "a/b", &"x".repeat(65)] {
        let e = set_label(&mut c, "m", bad, 1).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}");
        assert!(e.message().starts_with("label"), "{e:?}");
    }
    let both = c
        .predict
        .predict(predict_by("m", 1, "stable", &ids))
        .await
        .unwrap_err();
    assert_eq!(both.code(), Code::InvalidArgument);

    // Labels are records: a restart keeps them.
    server.stop().await.unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    let after = c
        .predict
        .predict(predict_by("m", 0, "stable", &ids))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.version, 2);
    server.stop().await.unwrap();
}

async fn latest_version(c: &mut Clients, ids: &[u32]) -> u32 {
    let r = c.predict.predict(predict_by("m", 0, "", ids)).await;
    r.unwrap().into_inner().version
}

async fn is_ready(c: &mut Clients, version: u32) -> bool {
    get_model(c, "m", version).await.statistics.unwrap().ready
}

/// Warm-up: a new latest version takes `latest` traffic once loaded and
/// run once; until then the version already loaded answers. A pinned
/// version is waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_latest_version_takes_traffic_once_warm() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    let ids = [1, 2, 3, 4];
    trained(&mut c, "m").await;
    assert_eq!(
        latest_version(&mut c, &ids).await,
        1,
        "a first version is waited for"
    );

    trained(&mut c, "m").await; // v2, not loaded by anything yet
    assert!(!is_ready(&mut c, 2).await);
    assert_eq!(
        latest_version(&mut c, &ids).await,
        1,
        "v1 answers while v2 warms"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while latest_version(&mut c, &ids).await != 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "v2 never took traffic"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(is_ready(&mut c, 2).await);

    trained(&mut c, "m").await; // v3
    let pinned = c.predict.predict(predict_by("m", 3, "", &ids)).await;
    assert_eq!(pinned.unwrap().into_inner().version, 3);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batching_settings_and_statistics_are_per_model() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    trained(&mut c, "m").await;

    let defaults = get_model(&mut c, "m", 0).await.batching.unwrap();
    assert!(!defaults.max_batch_set && !defaults.max_delay_set);
    assert_eq!(defaults.max_batch, 64);
    let set = c
        .models
        .set_model_batching(pb::SetModelBatchingRequest {
            name: "m".into(),
            max_batch: Some(8),
            max_delay_us: Some(1500),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((set.max_batch, set.max_delay_us), (8, 1500));
    assert!(set.max_batch_set && set.max_delay_set);
    for (batch, delay, field) in [
        (Some(0), None, "max_batch"),
        (None, Some(5_000_000), "max_delay_us"),
    ] {
        let e = c
            .models
            .set_model_batching(pb::SetModelBatchingRequest {
                name: "m".into(),
                max_batch: batch,
                max_delay_us: delay,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with(field), "{e:?}");
    }
    let unknown = c
        .models
        .set_model_batching(pb::SetModelBatchingRequest {
            name: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    for _ in 0..5 {
        c.predict
            .predict(predict_by("m", 0, "", &[1, 2, 3]))
            .await
            .unwrap();
    }
    let bad = c
        .predict
        .predict(predict_by("m", 0, "", &[1, 99]))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let model = get_model(&mut c, "m", 0).await;
    let stats = model.statistics.unwrap();
    assert_eq!((stats.requests, stats.errors, stats.sequences), (6, 1, 5));
    assert!(stats.ready);
    assert!(stats.mean_latency_us > 0);
    assert_eq!(stats.forward_passes, 5);
    assert_eq!(stats.batch_sizes.values().sum::<u64>(), 5);
    // The settings are kept across a restart.
    assert_eq!(model.batching.unwrap().max_batch, 8);
    server.stop().await.unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    let after = get_model(&mut c, "m", 0).await;
    assert_eq!(after.batching.unwrap().max_delay_us, 1500);
    assert_eq!(after.statistics.unwrap().requests, 0);
    server.stop().await.unwrap();
}

fn ids_tensor(datatype: &str, shape: Vec<i64>) -> oip::model_infer_request::InferInputTensor {
    oip::model_infer_request::InferInputTensor {
        name: "input_ids".into(),
        datatype: datatype.into(),
        shape,
        ..Default::default()
    }
}

fn infer(version: &str, rows: &[&[i64]]) -> oip::ModelInferRequest {
    let raw: Vec<u8> = rows
        .iter()
        .flat_map(|r| r.iter())
        .flat_map(|v| v.to_le_bytes())
        .collect();
    oip::ModelInferRequest {
        model_name: "m".into(),
        model_version: version.into(),
        id: "call-1".into(),
        inputs: vec![ids_tensor(
            "INT64",
            vec![rows.len() as i64, rows[0].len() as i64],
        )],
        raw_input_contents: vec![raw],
        ..Default::default()
    }
}

fn floats(raw: &[u8]) -> Vec<f32> {
    raw.chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_inference_protocol_answers_like_predict() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    trained(&mut c, "m").await;
    let mut oip = GrpcInferenceServiceClient::new(c.channel.clone());

    let live = oip.server_live(oip::ServerLiveRequest {}).await.unwrap();
    assert!(live.into_inner().live);
    let ready = oip.server_ready(oip::ServerReadyRequest {}).await.unwrap();
    assert!(ready.into_inner().ready);
    let ready = |v: &str| oip::ModelReadyRequest {
        name: "m".into(),
        version: v.into(),
    };
    // Nothing served the model yet: not ready; asking loads and warms it.
    assert!(
        !oip.model_ready(ready("1"))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let mut warmed = false;
    for _ in 0..200 {
        if oip.model_ready(ready("")).await.unwrap().into_inner().ready {
            warmed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(warmed, "the model became ready");
    let unknown = oip
        .model_ready(oip::ModelReadyRequest {
            name: "nope".into(),
            version: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let meta = oip
        .model_metadata(oip::ModelMetadataRequest {
            name: "m".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.versions, vec!["1".to_string()]);
    assert_eq!(meta.outputs[0].shape, vec![-1, 7]);

    let rows: [&[i64]; 2] = [&[1, 2, 3, 4], &[4, 5, 6, 0]];
    let mut request = infer("1", &rows);
    request.parameters.insert(
        "top_k".into(),
        oip::InferParameter {
            parameter_choice: Some(oip::infer_parameter::ParameterChoice::Int64Param(3)),
        },
    );
    let answer = oip.model_infer(request).await.unwrap().into_inner();
    assert_eq!(
        (answer.id.as_str(), answer.model_version.as_str()),
        ("call-1", "1")
    );
    let names: Vec<&str> = answer.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["probabilities", "top_k_ids", "top_k_probabilities"]);
    assert_eq!(answer.outputs[0].shape, vec![2, 7]);
    let probs = floats(&answer.raw_output_contents[0]);
    let top_ids: Vec<i64> = answer.raw_output_contents[1]
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    for (i, row) in rows.iter().enumerate() {
        let ids: Vec<u32> = row.iter().map(|&v| v as u32).collect();
        let want = c
            .predict
            .predict(predict_by("m", 1, "", &ids))
            .await
            .unwrap()
            .into_inner();
        let top = &want.predictions[0].top;
        for t in top {
            let got = probs[i * 7 + t.id as usize] as f64;
            assert!((got - t.probability).abs() <= 1e-6, "{got} vs {t:?}");
        }
        let want_ids: Vec<i64> = top.iter().take(3).map(|t| t.id as i64).collect();
        assert_eq!(&top_ids[i * 3..i * 3 + 3], want_ids.as_slice());
    }

    // Bad requests name what is wrong.
    let mut fp32 = infer("", &rows);
    fp32.inputs[0].datatype = "FP32".into();
    let mut flat = infer("", &rows);
    flat.inputs[0].shape = vec![8];
    let mut short = infer("", &rows);
    short.raw_input_contents[0].truncate(12);
    let too_big = infer("", &[&[1, 70]]);
    let mut output = infer("", &rows);
    output.outputs = vec![oip::model_infer_request::InferRequestedOutputTensor {
        name: "logits".into(),
        ..Default::default()
    }];
    for (what, request, field) in [
        ("FP32", fp32, "inputs[0].datatype"),
        ("1-D", flat, "inputs[0].shape"),
        ("short raw", short, "raw_input_contents[0]"),
        ("id past vocabulary", too_big, "sequences[0].ids"),
        ("unknown output", output, "outputs[0].name"),
    ] {
        let e = oip.model_infer(request).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e:?}");
        assert!(e.message().starts_with(field), "{what}: {e:?}");
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_sheds_with_resource_exhausted_and_threads_stay_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await; // default limits
    let mut c = connect(&server).await;
    trained(&mut c, "m").await;
    // A long batching delay holds admitted calls in the batcher, so that
    // 512 calls sent at once are surely more than the 256 in flight.
    c.models
        .set_model_batching(pb::SetModelBatchingRequest {
            name: "m".into(),
            max_batch: Some(4096),
            max_delay_us: Some(1_000_000),
        })
        .await
        .unwrap();
    c.predict
        .predict(predict_by("m", 0, "", &[1, 2]))
        .await
        .unwrap();
    let threads_before = threads();

    let channels: Vec<_> = futures_channels(&server, 16).await;
    let mut calls = Vec::new();
    for i in 0..512 {
        let mut client = pb::prediction_service_client::PredictionServiceClient::new(
            channels[i % channels.len()].clone(),
        );
        calls.push(tokio::spawn(async move {
            client.predict(predict_by("m", 0, "", &[1, 2, 3])).await
        }));
    }
    let (mut ok, mut shed) = (0, 0);
    let mut peak_threads = threads();
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) if e.code() == Code::ResourceExhausted => {
                assert!(e.message().contains("in flight"), "{e:?}");
                shed += 1
            }
            Err(e) => panic!("neither answered nor shed: {e:?}"),
        }
        peak_threads = peak_threads.max(threads());
    }
    println!(
        "512 calls: {ok} answered, {shed} shed; threads {threads_before} -> peak {peak_threads}"
    );
    assert!(shed > 0, "nothing was shed");
    assert!(ok >= 256, "only {ok} answered");
    // No thread per call: the batcher and the kernels' threads are there
    // already; tonic and tokio add none per request.
    assert!(
        peak_threads <= threads_before + 4,
        "threads grew from {threads_before} to {peak_threads}"
    );
    // And the server serves normally afterwards.
    c.predict
        .predict(predict_by("m", 0, "", &[1, 2]))
        .await
        .unwrap();
    server.stop().await.unwrap();
}

async fn futures_channels(
    server: &lstmd::server::RunningServer,
    n: usize,
) -> Vec<tonic::transport::Channel> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(connect(server).await.channel);
    }
    out
}

/// Threads of this process (the server runs in it).
fn threads() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}
