//! The model family over gRPC (every cell, bidirectional, stacked, dropout),
//! versions, export/import with validation, delete, and PyTorch loading.
mod common;

use common::*;
use lstmd::proto as pb;
use tonic::Code;

fn layer(cell: pb::Cell, units: u32, bidirectional: bool, dropout: f32) -> pb::RecurrentLayer {
    pb::RecurrentLayer {
        cell: cell as i32,
        units,
        bidirectional,
        dropout,
    }
}

async fn export(c: &mut Clients, name: &str, version: u32) -> (Vec<u8>, Vec<u8>) {
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
    let (mut weights, mut metadata) = (Vec::new(), Vec::new());
    while let Some(chunk) = stream.message().await.unwrap() {
        match chunk.file.as_str() {
            "model.safetensors" => weights.extend(chunk.data),
            "metadata.json" => metadata.extend(chunk.data),
            other => panic!("unexpected file {other}"),
        }
    }
    (weights, metadata)
}

async fn import(
    c: &mut Clients,
    name: &str,
    weights: &[u8],
    metadata: &[u8],
) -> Result<pb::Model, tonic::Status> {
    let mut chunks = Vec::new();
    for (file, bytes) in [("model.safetensors", weights), ("metadata.json", metadata)] {
        for part in bytes.chunks(4096) {
            chunks.push(pb::ImportModelChunk {
                name: name.into(),
                file: file.into(),
                data: part.to_vec(),
                ..Default::default()
            });
        }
    }
    c.models
        .import_model(tokio_stream::iter(chunks))
        .await
        .map(|r| r.into_inner())
}

fn predict(model: &str, version: u32) -> pb::PredictRequest {
    pb::PredictRequest {
        model: model.into(),
        version,
        sequences: vec![
            pb::Sequence {
                ids: vec![1, 2, 3, 4],
                text: String::new(),
            },
            pb::Sequence {
                ids: vec![5, 0],
                text: String::new(),
            },
        ],
        top_k: Some(6),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cell_stacked_and_bidirectional_trains_summarises_and_predicts() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    let ds = ids_dataset(&mut c, "cycle", cycle(6, 240), 6).await;
    for (cell, kind) in [
        (pb::Cell::Lstm, "LSTM"),
        (pb::Cell::Gru, "GRU"),
        (pb::Cell::Rnn, "RNN"),
    ] {
        let name = format!("stack-{kind}").to_lowercase();
        let spec = pb::ModelSpec {
            vocab_size: Some(6),
            embedding_dim: Some(5),
            window: Some(4),
            embedding_dropout: Some(0.1),
            layers: vec![
                layer(cell, 7, true, 0.2),
                layer(cell, 5, false, 0.0),
                layer(cell, 3, true, 0.5),
            ],
            ..Default::default()
        };
        let events = train(
            &mut c,
            pb::CreateTrainingJobRequest {
                model_name: name.clone(),
                dataset_id: ds.id.clone(),
                spec: Some(spec),
                config: Some(pb::TrainingConfig {
                    epochs: Some(1),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(
            finished(&events).state,
            pb::JobState::Succeeded as i32,
            "{kind}"
        );
        let model = c
            .models
            .get_model(pb::GetModelRequest {
                name: name.clone(),
                version: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let summary = model.summary.unwrap();
        let rows: Vec<(&str, &str, Vec<i64>)> = summary
            .layers
            .iter()
            .map(|l| (l.name.as_str(), l.kind.as_str(), l.output_shape.clone()))
            .collect();
        let bi = format!("Bidirectional({kind})");
        assert_eq!(
            rows,
            vec![
                ("embedding", "Embedding", vec![-1, 4, 5]),
                ("embedding_dropout", "Dropout", vec![-1, 4, 5]),
                ("layers.0", bi.as_str(), vec![-1, 4, 14]),
                ("layers.0.dropout", "Dropout", vec![-1, 4, 14]),
                ("layers.1", kind, vec![-1, 4, 5]),
                ("layers.2", bi.as_str(), vec![-1, 6]),
                ("layers.2.dropout", "Dropout", vec![-1, 6]),
                ("dense", "Dense", vec![-1, 6]),
            ]
        );
        let gates = match cell {
            pb::Cell::Lstm => 4,
            pb::Cell::Gru => 3,
            _ => 1,
        };
        // PyTorch counts: gates * units * (input + units + 2) per direction.
        let expected = gates * 7 * (5 + 7 + 2) * 2;
        assert_eq!(summary.layers[2].parameters, expected as u64, "{kind}");
        let p = c
            .predict
            .predict(predict(&name, 0))
            .await
            .unwrap()
            .into_inner();
        let sum: f64 = p.predictions[0].top.iter().map(|t| t.probability).sum();
        assert!(
            (sum - 1.0).abs() < 1e-5,
            "top-6 of 6 ids sums to 1, got {sum}"
        );
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_export_import_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    let ds = ids_dataset(&mut c, "cycle", cycle(6, 240), 6).await;
    for seed in [1, 2] {
        let events = train(
            &mut c,
            pb::CreateTrainingJobRequest {
                model_name: "m".into(),
                dataset_id: ds.id.clone(),
                spec: spec("bidirectional", 4),
                config: Some(pb::TrainingConfig {
                    epochs: Some(1),
                    seed: Some(seed),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(
            finished(&events).model.clone().unwrap().version,
            seed as u32
        );
    }
    let latest = c
        .models
        .get_model(pb::GetModelRequest {
            name: "m".into(),
            version: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(latest.version, 2);
    let listed = c
        .models
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed
            .models
            .iter()
            .map(|m| (m.name.as_str(), m.version))
            .collect::<Vec<_>>(),
        vec![("m", 2)]
    );

    // Export: exactly the stored files.
    let (weights, metadata) = export(&mut c, "m", 1).await;
    assert_eq!(weights, weights_file(dir.path(), "m", 1));
    let meta: serde_json::Value = serde_json::from_slice(&metadata).unwrap();
    assert_eq!(meta["spec"]["layers"][0]["bidirectional"], true);
    assert_eq!(meta["version"], 1);

    // Import under another name: same predictions.
    let imported = import(&mut c, "copy", &weights, &metadata).await.unwrap();
    assert_eq!((imported.name.as_str(), imported.version), ("copy", 1));
    let original = c
        .predict
        .predict(predict("m", 1))
        .await
        .unwrap()
        .into_inner();
    let copy = c
        .predict
        .predict(predict("copy", 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(original.predictions, copy.predictions);

    // Import validation.
    let mut wrong_spec = meta.clone();
    wrong_spec["spec"]["layers"][0]["units"] = serde_json::json!(32);
    let err = import(
        &mut c,
        "bad",
        &weights,
        &serde_json::to_vec(&wrong_spec).unwrap(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("layers.0.weight_ih_l0") && err.message().contains("shape"),
        "{err:?}"
    );
    let mut tensors =
        candle_core::safetensors::load_buffer(&weights, &candle_core::Device::Cpu).unwrap();
    let dense = tensors["dense.bias"].clone();
    tensors.insert("dense.bias".into(), (dense * f64::NAN).unwrap());
    let nan_bytes =
        safetensors::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), None).unwrap();
    let err = import(&mut c, "bad", &nan_bytes, &metadata)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("dense.bias") && err.message().contains("NaN"),
        "{err:?}"
    );
    let err = import(&mut c, "bad", &weights, b"{\"spec\": 3}")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("metadata.json"), "{err:?}");
    let err = import(&mut c, "bad", b"not safetensors", &metadata)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = import(&mut c, "../x", &weights, &metadata)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(c
        .models
        .get_model(pb::GetModelRequest {
            name: "bad".into(),
            version: 0
        })
        .await
        .is_err());

    // Delete one version, then all.
    let deleted = c
        .models
        .delete_model(pb::DeleteModelRequest {
            name: "m".into(),
            version: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.versions, vec![1]);
    let gone = c.predict.predict(predict("m", 1)).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    assert!(c.predict.predict(predict("m", 0)).await.is_ok());
    assert!(!dir.path().join("blobs/models/m/1").exists());
    let deleted = c
        .models
        .delete_model(pb::DeleteModelRequest {
            name: "m".into(),
            version: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.versions, vec![2]);
    let err = c
        .models
        .delete_model(pb::DeleteModelRequest {
            name: "m".into(),
            version: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(
        c.predict.predict(predict("m", 0)).await.unwrap_err().code(),
        Code::NotFound
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_import_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = args(dir.path());
    args.limits.max_model_bytes = 10_000;
    let server = start_with(args).await;
    let mut c = connect(&server).await;
    let err = import(&mut c, "big", &vec![0u8; 20_000], b"{}")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    server.stop().await.unwrap();
}

/// Needs a Python with torch and safetensors: set LSTMD_TEST_PYTHON to it
/// (CI has none; the issue note records a run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pytorch_loads_an_exported_model_and_agrees_with_predict() {
    let Ok(python) = std::env::var("LSTMD_TEST_PYTHON") else {
        eprintln!("skipped: set LSTMD_TEST_PYTHON to a python with torch and safetensors");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir.path().join("data")).await;
    let mut c = connect(&server).await;
    let text = "the quick brown fox jumps over the lazy dog. ".repeat(20);
    let ds = c
        .datasets
        .create_dataset(pb::CreateDatasetRequest {
            name: "fox".into(),
            data: Some(pb::create_dataset_request::Data::Text(text)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for (name, spec) in [
        ("tutorial-dropout", spec("dropout", 8)),
        (
            "bi-gru",
            Some(pb::ModelSpec {
                embedding_dim: Some(6),
                window: Some(8),
                layers: vec![
                    layer(pb::Cell::Gru, 12, true, 0.0),
                    layer(pb::Cell::Rnn, 9, true, 0.0),
                ],
                ..Default::default()
            }),
        ),
    ] {
        let events = train(
            &mut c,
            pb::CreateTrainingJobRequest {
                model_name: name.into(),
                dataset_id: ds.id.clone(),
                spec,
                config: Some(pb::TrainingConfig {
                    epochs: Some(2),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(finished(&events).state, pb::JobState::Succeeded as i32);
        let (weights, metadata) = export(&mut c, name, 0).await;
        let model_dir = dir.path().join(name);
        std::fs::create_dir_all(&model_dir).unwrap();
        std::fs::write(model_dir.join("model.safetensors"), &weights).unwrap();
        std::fs::write(model_dir.join("metadata.json"), &metadata).unwrap();
        let vocab = c
            .models
            .get_model(pb::GetModelRequest {
                name: name.into(),
                version: 0,
            })
            .await
            .unwrap()
            .into_inner()
            .vocab_size;
        let prompt = "the lazy d";
        let ours = c
            .predict
            .predict(pb::PredictRequest {
                model: name.into(),
                sequences: vec![pb::Sequence {
                    ids: vec![],
                    text: prompt.into(),
                }],
                top_k: Some(vocab),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let out = std::process::Command::new(&python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/examples/pytorch_load.py"
            ))
            .arg(&model_dir)
            .args(["--text", prompt, "--json-only"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let theirs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let theirs = theirs["probabilities"].as_array().unwrap();
        let mut worst = 0f64;
        for t in &ours.predictions[0].top {
            let p = theirs[t.id as usize].as_f64().unwrap();
            worst = worst.max((p - t.probability).abs());
        }
        eprintln!("{name}: largest |PyTorch - Predict| probability difference {worst:.2e}");
        assert!(worst <= 1e-5, "{name}: {worst}");
    }
    server.stop().await.unwrap();
}
