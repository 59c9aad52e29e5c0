//! Keras and ONNX through the real server: Keras 3 fixtures (made by
//! tests/fixtures/keras/gen_keras.py) import through ImportModel and
//! predict what Keras predicted; lstmd's Keras and ONNX exports are the
//! files Keras and onnxruntime were run on (their outputs are in the
//! fixtures) and round-trip; bad archives are refused, storing nothing.
mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use common::*;
use lstmd::proto as pb;
use serde_json::Value;
use tonic::Code;

const CASES: [&str; 6] = [
    "dropout",
    "tuning",
    "bidirectional",
    "deep",
    "gru",
    "simple_rnn",
];
const TOLERANCE: f64 = 1e-5;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keras")
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn keras_fixture(case: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(format!("models/{case}.keras"))).unwrap()
}

/// The fixed inputs every prediction fixture was computed on.
fn inputs() -> Vec<Vec<u32>> {
    serde_json::from_value(json(&fixtures().join("predictions.json"))["inputs"].clone()).unwrap()
}

fn matrix(v: &Value) -> Vec<Vec<f64>> {
    serde_json::from_value(v.clone()).unwrap()
}

async fn import_file(
    c: &mut Clients,
    name: &str,
    file: &str,
    bytes: &[u8],
    spec: Option<pb::ModelSpec>,
) -> Result<pb::Model, tonic::Status> {
    let chunks: Vec<pb::ImportModelChunk> = bytes
        .chunks(4096)
        .enumerate()
        .map(|(i, part)| pb::ImportModelChunk {
            name: name.into(),
            file: file.into(),
            data: part.to_vec(),
            spec: if i == 0 { spec.clone() } else { None },
        })
        .collect();
    c.models
        .import_model(tokio_stream::iter(chunks))
        .await
        .map(|r| r.into_inner())
}

async fn export_files(c: &mut Clients, name: &str, format: &str) -> HashMap<String, Vec<u8>> {
    let mut stream = c
        .models
        .export_model(pb::ExportModelRequest {
            name: name.into(),
            version: 0,
            format: format.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut files: HashMap<String, Vec<u8>> = HashMap::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        files.entry(chunk.file).or_default().extend(chunk.data);
    }
    files
}

/// Predict's probability for every token of every sequence.
async fn probabilities(
    c: &mut Clients,
    name: &str,
    rows: &[Vec<u32>],
    vocab: u32,
) -> Vec<Vec<f64>> {
    let response = c
        .predict
        .predict(pb::PredictRequest {
            model: name.into(),
            sequences: rows
                .iter()
                .map(|ids| pb::Sequence {
                    ids: ids.clone(),
                    text: String::new(),
                })
                .collect(),
            top_k: Some(vocab),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    response
        .predictions
        .iter()
        .map(|p| {
            let mut row = vec![f64::NAN; vocab as usize];
            for t in &p.top {
                row[t.id as usize] = t.probability;
            }
            row
        })
        .collect()
}

/// Largest |a - b| over two probability matrices of the same shape.
fn largest_difference(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(
            0.0,
            |m, d| if d.is_nan() { f64::INFINITY } else { m.max(d) },
        )
}

/// The archive's files, by name.
fn unzip(bytes: &[u8]) -> HashMap<String, Vec<u8>> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    (0..zip.len())
        .map(|i| {
            let mut f = zip.by_index(i).unwrap();
            let mut data = Vec::new();
            f.read_to_end(&mut data).unwrap();
            (f.name().unwrap().to_string(), data)
        })
        .collect()
}

/// A copy of `archive` with config.json changed by `edit`.
fn with_config(archive: &[u8], edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let files = unzip(archive);
    let mut config: Value = serde_json::from_slice(&files["config.json"]).unwrap();
    edit(&mut config);
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for name in ["metadata.json", "config.json", "model.weights.h5"] {
        zip.start_file(name, zip::write::SimpleFileOptions::default())
            .unwrap();
        let data = match name {
            "config.json" => serde_json::to_vec(&config).unwrap(),
            _ => files[name].clone(),
        };
        zip.write_all(&data).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keras_models_import_and_predict_what_keras_predicts() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    let expected = json(&fixtures().join("predictions.json"));
    let x = inputs();
    for case in CASES {
        let model = import_file(&mut c, case, "model.keras", &keras_fixture(case), None)
            .await
            .unwrap_or_else(|e| panic!("{case}: {e:?}"));
        let want = &expected["cases"][case];
        let summary = model.summary.unwrap();
        assert_eq!(
            summary.keras_total_parameters,
            want["parameters"].as_u64().unwrap(),
            "{case}: Keras' count_params()"
        );
        let ours = probabilities(&mut c, case, &x, model.vocab_size).await;
        let worst = largest_difference(&ours, &matrix(&want["probabilities"]));
        eprintln!("{case}: largest |Keras - lstmd| probability difference {worst:.2e}");
        assert!(worst <= TOLERANCE, "{case}: {worst}");
    }
    // The tutorial's shapes came through: two stacked LSTMs with dropout,
    // one Bidirectional LSTM, Dropout after the Embedding.
    let spec = |m: &str| {
        let c = c.models.clone();
        let m = m.to_string();
        async move {
            c.clone()
                .get_model(pb::GetModelRequest {
                    name: m,
                    version: 0,
                })
                .await
                .unwrap()
                .into_inner()
                .spec
                .unwrap()
        }
    };
    let dropout = spec("dropout").await;
    assert_eq!(dropout.layers.len(), 2);
    assert_eq!(dropout.layers[0].dropout, 0.5);
    assert_eq!(dropout.window, Some(10));
    assert!(spec("bidirectional").await.layers[0].bidirectional);
    let gru = spec("gru").await;
    assert!((gru.embedding_dropout.unwrap() - 0.1).abs() < 1e-6);
    assert_eq!(gru.layers[0].cell, pb::Cell::Gru as i32);
    server.stop().await.unwrap();
}

fn layer(cell: pb::Cell, units: u32, bidirectional: bool, dropout: f32) -> pb::RecurrentLayer {
    pb::RecurrentLayer {
        cell: cell as i32,
        units,
        bidirectional,
        dropout,
    }
}

fn fixture_spec(layers: Vec<pb::RecurrentLayer>, embedding_dropout: f32) -> pb::ModelSpec {
    pb::ModelSpec {
        vocab_size: Some(24),
        embedding_dim: Some(8),
        window: Some(10),
        embedding_dropout: Some(embedding_dropout),
        layers,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keras_weights_files_import_with_a_spec() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    let expected = json(&fixtures().join("predictions.json"));
    let x = inputs();
    let lstm = |u| layer(pb::Cell::Lstm, u, false, 0.5);
    for (case, spec) in [
        ("dropout", fixture_spec(vec![lstm(12), lstm(12)], 0.0)),
        (
            "gru",
            fixture_spec(
                vec![
                    layer(pb::Cell::Gru, 7, true, 0.0),
                    layer(pb::Cell::Gru, 6, false, 0.0),
                ],
                0.1,
            ),
        ),
    ] {
        let h5 = std::fs::read(fixtures().join(format!("models/{case}.weights.h5"))).unwrap();
        let model = import_file(&mut c, case, "model.weights.h5", &h5, Some(spec))
            .await
            .unwrap_or_else(|e| panic!("{case}: {e:?}"));
        let ours = probabilities(&mut c, case, &x, model.vocab_size).await;
        let worst = largest_difference(&ours, &matrix(&expected["cases"][case]["probabilities"]));
        assert!(worst <= TOLERANCE, "{case}: {worst}");
    }
    // A spec that does not fit the file names the weight.
    let h5 = std::fs::read(fixtures().join("models/dropout.weights.h5")).unwrap();
    let err = import_file(
        &mut c,
        "wrong",
        "model.weights.h5",
        &h5,
        Some(fixture_spec(vec![lstm(13), lstm(12)], 0.0)),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("layers/lstm/cell/vars/0"), "{err:?}");
    let err = import_file(&mut c, "wrong", "model.weights.h5", &h5, None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("spec"), "{err:?}");
    let err = c
        .models
        .get_model(pb::GetModelRequest {
            name: "wrong".into(),
            version: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_keras_archives_are_refused_naming_the_layer_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    let good = keras_fixture("dropout");
    let set = |layer: usize, key: &'static str, value: Value| {
        with_config(&good, move |c| {
            c["config"]["layers"][layer]["config"][key] = value
        })
    };
    // (archive, what the message must name)
    let cases: Vec<(Vec<u8>, Vec<&str>)> = vec![
        (
            keras_fixture("gru_reset_before"),
            vec!["GRU", "reset_after=False"],
        ),
        (keras_fixture("conv1d"), vec!["Conv1D", "not supported"]),
        (good[..good.len() / 2].to_vec(), vec!["model.keras"]),
        (b"not a zip".to_vec(), vec!["model.keras", "zip"]),
        // Layer 0 is the InputLayer, 1 the Embedding, 2 the first LSTM.
        (
            set(2, "units", Value::from(13)),
            vec!["layers/lstm/cell/vars/0", "shape"],
        ),
        (
            set(1, "mask_zero", Value::from(true)),
            vec!["Embedding", "mask_zero"],
        ),
        (
            set(2, "stateful", Value::from(true)),
            vec!["LSTM", "stateful"],
        ),
        (
            set(2, "activation", Value::from("relu")),
            vec!["LSTM", "activation"],
        ),
        (
            set(2, "return_sequences", Value::from(false)),
            vec!["return_sequences"],
        ),
        (
            set(6, "activation", Value::from("linear")),
            vec!["Dense", "softmax"],
        ),
        (
            with_config(&good, |c| c["class_name"] = Value::from("Functional")),
            vec!["Sequential"],
        ),
    ];
    for (i, (archive, words)) in cases.iter().enumerate() {
        let err = import_file(&mut c, "bad", "model.keras", archive, None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "case {i}: {err:?}");
        for w in words {
            assert!(
                err.message().contains(w),
                "case {i}: {w:?} not in {:?}",
                err.message()
            );
        }
    }
    // The layer name Keras gave it is in the message too.
    let config: Value =
        serde_json::from_slice(&unzip(&keras_fixture("gru_reset_before"))["config.json"]).unwrap();
    let gru_name = config["config"]["layers"][2]["config"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let err = import_file(
        &mut c,
        "bad",
        "model.keras",
        &keras_fixture("gru_reset_before"),
        None,
    )
    .await
    .unwrap_err();
    assert!(err.message().contains(&gru_name), "{err:?}");
    // Mixed uploads are refused too.
    let mixed = vec![
        pb::ImportModelChunk {
            name: "bad".into(),
            file: "model.keras".into(),
            data: good.clone(),
            ..Default::default()
        },
        pb::ImportModelChunk {
            name: "bad".into(),
            file: "metadata.json".into(),
            data: b"{}".to_vec(),
            ..Default::default()
        },
    ];
    let err = c
        .models
        .import_model(tokio_stream::iter(mixed))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let listed = c
        .models
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(listed.models.is_empty(), "{:?}", listed.models);
    assert!(!dir.path().join("blobs/models/bad").exists());
    server.stop().await.unwrap();
}

/// The committed export fixture, or (with LSTMD_WRITE_EXPORTS set) the
/// file written for gen_keras.py to run Keras / onnxruntime on.
fn check_or_write(path: &Path, bytes: &[u8], what: &str) {
    if std::env::var_os("LSTMD_WRITE_EXPORTS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
        return;
    }
    let committed = std::fs::read(path).unwrap();
    assert!(
        committed == bytes,
        "{what} differs from {}: the export changed; regenerate the fixtures \
         (see tests/fixtures/keras/gen_keras.py)",
        path.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_open_in_keras_and_onnxruntime_with_lstmds_predictions() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    let exports = fixtures().join("exports");
    let writing = std::env::var_os("LSTMD_WRITE_EXPORTS").is_some();
    let theirs = (!writing).then(|| json(&exports.join("predictions.json")));
    let x = inputs();
    for case in CASES {
        let model = import_file(&mut c, case, "model.keras", &keras_fixture(case), None)
            .await
            .unwrap();
        let vocab = model.vocab_size;
        let ours = probabilities(&mut c, case, &x, vocab).await;
        // lstmd -> Keras: the archive Keras loaded (fixture) ...
        let keras = export_files(&mut c, case, "keras")
            .await
            .remove("model.keras")
            .unwrap();
        let files = unzip(&keras);
        let at = exports.join(format!("{case}.keras"));
        if writing {
            check_or_write(&at, &keras, "model.keras");
        } else {
            let committed = unzip(&std::fs::read(&at).unwrap());
            for f in ["config.json", "model.weights.h5"] {
                assert!(
                    committed[f] == files[f],
                    "{case}: {f} of the Keras export changed; regenerate the fixtures"
                );
            }
        }
        // ... and back: lstmd -> Keras -> lstmd predicts the same.
        let back = format!("{case}-back");
        import_file(&mut c, &back, "model.keras", &keras, None)
            .await
            .unwrap();
        let again = probabilities(&mut c, &back, &x, vocab).await;
        let worst = largest_difference(&ours, &again);
        assert!(
            worst <= TOLERANCE,
            "{case}: lstmd -> Keras -> lstmd {worst}"
        );
        // lstmd -> ONNX, in Triton's layout.
        let onnx = export_files(&mut c, case, "onnx").await;
        assert!(String::from_utf8_lossy(&onnx["config.pbtxt"]).contains("onnxruntime"));
        check_or_write(
            &exports.join(format!("{case}/1/model.onnx")),
            &onnx["model.onnx"],
            "model.onnx",
        );
        if let Some(theirs) = &theirs {
            let k = largest_difference(&ours, &matrix(&theirs["keras"][case]));
            let o = largest_difference(&ours, &matrix(&theirs["onnx"][case]));
            // The graph keeps the last `window` tokens of a longer input.
            let l = largest_difference(&ours, &matrix(&theirs["onnx"][format!("{case}+longer")]));
            eprintln!("{case}: largest difference from Keras {k:.2e}, onnxruntime {o:.2e}, longer input {l:.2e}");
            assert!(
                k <= TOLERANCE && o <= TOLERANCE && l <= TOLERANCE,
                "{case}: {k} {o} {l}"
            );
        }
    }
    let err = c
        .models
        .export_model(pb::ExportModelRequest {
            name: "dropout".into(),
            version: 0,
            format: "tflite".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("format"), "{err:?}");
    server.stop().await.unwrap();
}

/// Needs a Python with keras (TensorFlow), onnx and onnxruntime: set
/// LSTMD_TEST_KERAS_PYTHON to it (CI has none). Trains small lstmd models,
/// exports them, and runs Keras and onnxruntime on the fresh files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keras_and_onnxruntime_run_freshly_exported_models() {
    let Ok(python) = std::env::var("LSTMD_TEST_KERAS_PYTHON") else {
        eprintln!(
            "skipped: set LSTMD_TEST_KERAS_PYTHON to a python with keras, onnx and onnxruntime"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir.path().join("data")).await;
    let mut c = connect(&server).await;
    let ds = ids_dataset(&mut c, "cycle", cycle(7, 400), 9).await;
    let x: Vec<Vec<u32>> = vec![
        vec![1, 2, 3, 4, 5, 6],
        vec![6, 0, 1, 2, 3, 4],
        vec![8, 8, 1, 0, 5, 2],
    ];
    for (name, layers) in [
        (
            "live-lstm",
            vec![
                layer(pb::Cell::Lstm, 6, false, 0.2),
                layer(pb::Cell::Lstm, 5, true, 0.0),
            ],
        ),
        (
            "live-gru",
            vec![
                layer(pb::Cell::Gru, 6, true, 0.0),
                layer(pb::Cell::Gru, 4, false, 0.0),
            ],
        ),
        (
            "live-rnn",
            vec![
                layer(pb::Cell::Rnn, 5, true, 0.0),
                layer(pb::Cell::Rnn, 4, false, 0.0),
            ],
        ),
    ] {
        let events = train(
            &mut c,
            pb::CreateTrainingJobRequest {
                model_name: name.into(),
                dataset_id: ds.id.clone(),
                spec: Some(pb::ModelSpec {
                    embedding_dim: Some(4),
                    window: Some(6),
                    embedding_dropout: Some(0.1),
                    layers,
                    ..Default::default()
                }),
                config: Some(pb::TrainingConfig {
                    epochs: Some(2),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(finished(&events).state, pb::JobState::Succeeded as i32);
        let ours = probabilities(&mut c, name, &x, 9).await;
        let keras_file = dir.path().join(format!("{name}.keras"));
        std::fs::write(
            &keras_file,
            &export_files(&mut c, name, "keras").await["model.keras"],
        )
        .unwrap();
        let onnx_file = dir.path().join(format!("{name}.onnx"));
        std::fs::write(
            &onnx_file,
            &export_files(&mut c, name, "onnx").await["model.onnx"],
        )
        .unwrap();
        for file in [&keras_file, &onnx_file] {
            let out = std::process::Command::new(&python)
                .arg(fixtures().join("gen_keras.py"))
                .arg("check")
                .arg(file)
                .arg(serde_json::to_string(&x).unwrap())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let theirs: Value = serde_json::from_slice(&out.stdout).unwrap();
            let worst = largest_difference(&ours, &matrix(&theirs["probabilities"]));
            eprintln!(
                "{name}: {} vs Predict: largest difference {worst:.2e}",
                file.display()
            );
            assert!(worst <= TOLERANCE, "{name} {}: {worst}", file.display());
        }
    }
    server.stop().await.unwrap();
}

/// `lstmd models import FILE.keras` and `lstmd models export --format`,
/// as the real binary, into Triton's layout and NAME.keras.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_imports_keras_and_exports_keras_and_onnx() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir.path().join("data")).await;
    let addr = server.addr.to_string();
    let out = dir.path().join("out");
    let fixture = fixtures().join("models/dropout.keras");
    let lstmd = move |args: Vec<String>| {
        let addr = addr.clone();
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_lstmd"))
                .env_remove("LSTMD_TOKEN")
                .env_remove("LSTMD_TOKEN_FILE")
                .env("LSTMD_SERVER", addr)
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
    };
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    let printed = lstmd(s(&[
        "models",
        "import",
        fixture.to_str().unwrap(),
        "--name",
        "tut",
    ]))
    .await
    .unwrap();
    assert!(printed.contains("imported tut v1"), "{printed}");
    let o = out.to_str().unwrap();
    lstmd(s(&["models", "export", "tut", "--format", "onnx", "-d", o]))
        .await
        .unwrap();
    lstmd(s(&[
        "models", "export", "tut", "--format", "keras", "-d", o,
    ]))
    .await
    .unwrap();
    let onnx = std::fs::read(out.join("tut/1/model.onnx")).unwrap();
    let committed = std::fs::read(fixtures().join("exports/dropout/1/model.onnx")).unwrap();
    // The same graph as the fixture's (which was named "dropout").
    use lstmd::interop::onnx::pb::ModelProto;
    use prost::Message;
    let (ours, theirs) = (
        ModelProto::decode(&onnx[..]).unwrap().graph.unwrap(),
        ModelProto::decode(&committed[..]).unwrap().graph.unwrap(),
    );
    assert_eq!(ours.name.as_deref(), Some("tut"));
    assert_eq!(
        (ours.node, ours.initializer),
        (theirs.node, theirs.initializer)
    );
    let config = std::fs::read_to_string(out.join("tut/config.pbtxt")).unwrap();
    assert!(
        config.contains("name: \"tut\"") && config.contains("dims: [ -1, 24 ]"),
        "{config}"
    );
    let keras = unzip(&std::fs::read(out.join("tut.keras")).unwrap());
    let fixture_files = unzip(&std::fs::read(fixtures().join("exports/dropout.keras")).unwrap());
    assert!(keras["model.weights.h5"] == fixture_files["model.weights.h5"]);
    server.stop().await.unwrap();
}
