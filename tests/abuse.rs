//! The abuse suite: one server, a table of bad requests across every RPC.
//! For each: the status code, a message that names the field (or the rule's
//! flag), a message under 1 KiB, and a server that still answers health
//! checks. Afterwards the data dir holds exactly the fixtures' files: no
//! bad request left anything behind.
mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::*;
use lstmd::proto as pb;
use pb::upload_dataset_request::Part;
use tonic::Code;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

/// The server's message limit in this suite (1 MiB), so that an oversized
/// message is cheap to send.
const MAX_MESSAGE: usize = 1 << 20;

// A table of a few hundred requests, built once: size does not matter.
#[allow(clippy::large_enum_variant)]
enum Call {
    CreateDataset(pb::CreateDatasetRequest),
    Upload(Vec<pb::UploadDatasetRequest>),
    GetDataset(String),
    DeleteDataset(String),
    CreateTrainingJob(pb::CreateTrainingJobRequest),
    Train(pb::CreateTrainingJobRequest),
    CreateTuningJob(pb::CreateTuningJobRequest),
    GetJob(String),
    ListJobs(pb::ListJobsRequest),
    CancelJob(String),
    WatchJob(String),
    GetModel(pb::GetModelRequest),
    DeleteModel(pb::DeleteModelRequest),
    ExportModel(pb::ExportModelRequest),
    ImportModel(Vec<pb::ImportModelChunk>),
    Predict(pb::PredictRequest),
    Generate(pb::GenerateRequest),
    OpenSession(pb::OpenSessionRequest),
    FeedSession(pb::FeedSessionRequest),
    CloseSession(String),
}

struct Case {
    label: String,
    call: Call,
    code: Code,
    /// What the message must contain: the field, or the flag of the limit.
    names: String,
}

fn case(label: impl Into<String>, call: Call, code: Code, names: &str) -> Case {
    Case {
        label: label.into(),
        call,
        code,
        names: names.into(),
    }
}

/// Reads a server stream's first item: a refused call fails at the start
/// or on its first message.
async fn first<T>(
    r: Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>,
) -> Result<(), tonic::Status> {
    let mut stream = r?.into_inner();
    while stream.message().await?.is_some() {}
    Ok(())
}

async fn send(c: &mut Clients, call: Call) -> Result<(), tonic::Status> {
    match call {
        Call::CreateDataset(r) => c.datasets.create_dataset(r).await.map(drop),
        Call::Upload(m) => c
            .datasets
            .upload_dataset(tokio_stream::iter(m))
            .await
            .map(drop),
        Call::GetDataset(id) => c
            .datasets
            .get_dataset(pb::GetDatasetRequest { id })
            .await
            .map(drop),
        Call::DeleteDataset(id) => c
            .datasets
            .delete_dataset(pb::DeleteDatasetRequest { id })
            .await
            .map(drop),
        Call::CreateTrainingJob(r) => c.jobs.create_training_job(r).await.map(drop),
        Call::Train(r) => first(c.jobs.train(r).await).await,
        Call::CreateTuningJob(r) => c.jobs.create_tuning_job(r).await.map(drop),
        Call::GetJob(id) => c.jobs.get_job(pb::GetJobRequest { id }).await.map(drop),
        Call::ListJobs(r) => c.jobs.list_jobs(r).await.map(drop),
        Call::CancelJob(id) => c
            .jobs
            .cancel_job(pb::CancelJobRequest { id })
            .await
            .map(drop),
        Call::WatchJob(id) => first(c.jobs.watch_job(pb::WatchJobRequest { id }).await).await,
        Call::GetModel(r) => c.models.get_model(r).await.map(drop),
        Call::DeleteModel(r) => c.models.delete_model(r).await.map(drop),
        Call::ExportModel(r) => first(c.models.export_model(r).await).await,
        Call::ImportModel(m) => c.models.import_model(tokio_stream::iter(m)).await.map(drop),
        Call::Predict(r) => c.predict.predict(r).await.map(drop),
        Call::Generate(r) => first(c.predict.generate(r).await).await,
        Call::OpenSession(r) => c.predict.open_session(r).await.map(drop),
        Call::FeedSession(r) => c.predict.feed_session(r).await.map(drop),
        Call::CloseSession(session_id) => c
            .predict
            .close_session(pb::CloseSessionRequest { session_id })
            .await
            .map(drop),
    }
}

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

fn layer(cell: pb::Cell, units: u32) -> pb::RecurrentLayer {
    pb::RecurrentLayer {
        cell: cell as i32,
        units,
        bidirectional: false,
        dropout: 0.0,
    }
}

fn tiny_spec() -> pb::ModelSpec {
    pb::ModelSpec {
        vocab_size: Some(7),
        embedding_dim: Some(4),
        window: Some(4),
        layers: vec![layer(pb::Cell::Lstm, 8)],
        ..Default::default()
    }
}

fn tiny_config() -> pb::TrainingConfig {
    pb::TrainingConfig {
        epochs: Some(1),
        batch_size: Some(8),
        seed: Some(1),
        ..Default::default()
    }
}

fn seq(ids: Vec<u32>) -> pb::Sequence {
    pb::Sequence {
        ids,
        text: String::new(),
    }
}

fn header(h: pb::UploadDatasetHeader) -> pb::UploadDatasetRequest {
    pb::UploadDatasetRequest {
        part: Some(Part::Header(h)),
    }
}

fn chunk(bytes: &[u8]) -> pb::UploadDatasetRequest {
    pb::UploadDatasetRequest {
        part: Some(Part::Chunk(bytes.to_vec())),
    }
}

/// Names that must be refused wherever a name is taken.
fn bad_names() -> Vec<(&'static str, String)> {
    vec![
        ("empty", String::new()),
        ("dot", ".hidden".into()),
        ("slash", "a/b".into()),
        ("dotdot", "../up".into()),
        ("space", "has space".into()),
        ("unicode", "naïve".into()),
        ("65 chars", "x".repeat(65)),
        ("NUL", "a\0b".into()),
        ("900 KB", "n".repeat(900_000)),
    ]
}

struct Fixtures {
    dataset: String,
    text_dataset: String,
    model: String,
    bidi_model: String,
    job: String,
    weights: Vec<u8>,
    metadata: Vec<u8>,
}

fn import_chunks(name: &str, files: &[(&str, &[u8])]) -> Vec<pb::ImportModelChunk> {
    files
        .iter()
        .map(|(file, data)| pb::ImportModelChunk {
            spec: Default::default(),
            name: name.into(),
            file: (*file).into(),
            data: data.to_vec(),
        })
        .collect()
}

fn dataset_cases(f: &Fixtures) -> Vec<Case> {
    let mut out = Vec::new();
    let create = |name: &str, data, tokenizer: i32, max_vocab_size| {
        Call::CreateDataset(pb::CreateDatasetRequest {
            vocabulary_from: Default::default(),
            name: name.into(),
            data,
            tokenizer,
            max_vocab_size,
        })
    };
    let char_t = pb::Tokenizer::Char as i32;
    let byte_t = pb::Tokenizer::Byte as i32;
    let ids_t = pb::Tokenizer::Ids as i32;
    let unset = pb::Tokenizer::Unspecified as i32;
    let ids = |ids: Vec<u32>, vocab_size| {
        Some(pb::create_dataset_request::Data::Ids(pb::TokenIds {
            ids,
            vocab_size,
        }))
    };
    let text = |t: &str| Some(pb::create_dataset_request::Data::Text(t.into()));
    for (label, name) in bad_names() {
        out.push(case(
            format!("CreateDataset name {label}"),
            create(&name, text("abc"), char_t, 0),
            Code::InvalidArgument,
            "name",
        ));
        out.push(case(
            format!("UploadDataset header.name {label}"),
            Call::Upload(vec![
                header(pb::UploadDatasetHeader {
                    name,
                    tokenizer: pb::Tokenizer::Char as i32,
                    ..Default::default()
                }),
                chunk(b"abc"),
            ]),
            Code::InvalidArgument,
            "header.name",
        ));
    }
    let more = [
        (
            "CreateDataset taken name",
            create("cycle", ids(vec![0, 1, 2], 3), ids_t, 0),
            Code::AlreadyExists,
            "cycle",
        ),
        (
            "CreateDataset no data",
            create("d", None, unset, 0),
            Code::InvalidArgument,
            "data",
        ),
        (
            "CreateDataset tokenizer 99",
            create("d", text("abc"), 99, 0),
            Code::InvalidArgument,
            "tokenizer",
        ),
        (
            "CreateDataset ids tokenizer on text",
            create("d", text("abc"), ids_t, 0),
            Code::InvalidArgument,
            "tokenizer",
        ),
        (
            "CreateDataset char tokenizer on ids",
            create("d", ids(vec![0, 1], 2), char_t, 0),
            Code::InvalidArgument,
            "tokenizer",
        ),
        (
            "CreateDataset ids vocab_size 0",
            create("d", ids(vec![0, 0], 0), ids_t, 0),
            Code::InvalidArgument,
            "vocab_size",
        ),
        (
            "CreateDataset ids vocab_size 1",
            create("d", ids(vec![0, 0], 1), ids_t, 0),
            Code::InvalidArgument,
            "vocab_size",
        ),
        (
            "CreateDataset ids vocab_size huge",
            create("d", ids(vec![0, 0], u32::MAX), ids_t, 0),
            Code::InvalidArgument,
            "vocab_size",
        ),
        (
            "CreateDataset id >= vocab_size",
            create("d", ids(vec![0, 1, 9], 5), ids_t, 0),
            Code::InvalidArgument,
            "ids[2]",
        ),
        (
            "CreateDataset empty ids",
            create("d", ids(vec![], 5), ids_t, 0),
            Code::InvalidArgument,
            "ids",
        ),
        (
            "CreateDataset empty text",
            create("d", text(""), char_t, 0),
            Code::InvalidArgument,
            "text",
        ),
        (
            "CreateDataset max_vocab_size 1",
            create("d", text("abcabc"), char_t, 1),
            Code::InvalidArgument,
            "max_vocab_size",
        ),
        (
            "CreateDataset max_vocab_size on ids",
            create("d", ids(vec![0, 1], 2), ids_t, 10),
            Code::InvalidArgument,
            "max_vocab_size",
        ),
        (
            "CreateDataset max_vocab_size on bytes",
            create("d", text("abc"), byte_t, 10),
            Code::InvalidArgument,
            "max_vocab_size",
        ),
    ];
    for (label, call, code, names) in more {
        out.push(case(label, call, code, names));
    }

    let h = |tokenizer: i32, vocab_size, max_vocab_size| {
        header(pb::UploadDatasetHeader {
            vocabulary_from: Default::default(),
            name: "up".into(),
            tokenizer,
            vocab_size,
            max_vocab_size,
        })
    };
    let uploads: Vec<(&str, Vec<pb::UploadDatasetRequest>, Code, &str)> = vec![
        (
            "UploadDataset empty stream",
            vec![],
            Code::InvalidArgument,
            "messages",
        ),
        (
            "UploadDataset chunk first",
            vec![chunk(b"abc")],
            Code::InvalidArgument,
            "messages[0]",
        ),
        (
            "UploadDataset empty message first",
            vec![pb::UploadDatasetRequest { part: None }],
            Code::InvalidArgument,
            "messages[0]",
        ),
        (
            "UploadDataset second header",
            vec![h(char_t, 0, 0), chunk(b"abc"), h(char_t, 0, 0)],
            Code::InvalidArgument,
            "messages[2]",
        ),
        (
            "UploadDataset empty chunk",
            vec![h(char_t, 0, 0), chunk(b"")],
            Code::InvalidArgument,
            "messages[1].chunk",
        ),
        (
            "UploadDataset message without part",
            vec![h(char_t, 0, 0), pb::UploadDatasetRequest { part: None }],
            Code::InvalidArgument,
            "messages[1]",
        ),
        (
            "UploadDataset tokenizer 99",
            vec![h(99, 0, 0), chunk(b"abc")],
            Code::InvalidArgument,
            "header.tokenizer",
        ),
        (
            "UploadDataset ids vocab_size 0",
            vec![h(ids_t, 0, 0), chunk(&[0; 4])],
            Code::InvalidArgument,
            "header.vocab_size",
        ),
        (
            "UploadDataset ids vocab_size 1",
            vec![h(ids_t, 1, 0), chunk(&[0; 4])],
            Code::InvalidArgument,
            "header.vocab_size",
        ),
        (
            "UploadDataset ids vocab_size huge",
            vec![h(ids_t, u32::MAX, 0), chunk(&[0; 4])],
            Code::InvalidArgument,
            "header.vocab_size",
        ),
        (
            "UploadDataset ids max_vocab_size",
            vec![h(ids_t, 5, 3), chunk(&[0; 4])],
            Code::InvalidArgument,
            "header.max_vocab_size",
        ),
        (
            "UploadDataset char vocab_size",
            vec![h(char_t, 5, 0), chunk(b"abc")],
            Code::InvalidArgument,
            "header.vocab_size",
        ),
        (
            "UploadDataset byte vocab_size",
            vec![h(byte_t, 5, 0), chunk(b"abc")],
            Code::InvalidArgument,
            "header.vocab_size",
        ),
        (
            "UploadDataset byte max_vocab_size",
            vec![h(byte_t, 0, 5), chunk(b"abc")],
            Code::InvalidArgument,
            "header.max_vocab_size",
        ),
        (
            "UploadDataset char max_vocab_size 1",
            vec![h(char_t, 0, 1), chunk(b"abc")],
            Code::InvalidArgument,
            "header.max_vocab_size",
        ),
        (
            "UploadDataset char invalid UTF-8",
            vec![h(char_t, 0, 0), chunk(b"ab\xFFcd")],
            Code::InvalidArgument,
            "chunks",
        ),
        (
            "UploadDataset byte invalid UTF-8",
            vec![h(byte_t, 0, 0), chunk(b"ab\xC3")],
            Code::InvalidArgument,
            "chunks",
        ),
        (
            "UploadDataset char truncated UTF-8",
            vec![h(char_t, 0, 0), chunk(b"ab\xE6\x97")],
            Code::InvalidArgument,
            "chunks",
        ),
        (
            "UploadDataset id >= vocab_size",
            vec![h(ids_t, 5, 0), chunk(&[1, 0, 0, 0, 7, 0, 0, 0])],
            Code::InvalidArgument,
            "tokens[1]",
        ),
        (
            "UploadDataset ids not a multiple of 4",
            vec![h(ids_t, 5, 0), chunk(&[1, 0, 0, 0, 2])],
            Code::InvalidArgument,
            "chunks",
        ),
        (
            "UploadDataset taken name",
            vec![
                header(pb::UploadDatasetHeader {
                    name: "cycle".into(),
                    tokenizer: char_t,
                    ..Default::default()
                }),
                chunk(b"abc"),
            ],
            Code::AlreadyExists,
            "cycle",
        ),
        (
            "UploadDataset oversized chunk",
            vec![h(char_t, 0, 0), chunk(&vec![b'a'; MAX_MESSAGE + 1])],
            Code::ResourceExhausted,
            "max-message-bytes",
        ),
    ];
    for (label, messages, code, names) in uploads {
        out.push(case(label, Call::Upload(messages), code, names));
    }
    for (label, id) in [
        ("unknown", "ds-000000000000".to_string()),
        ("empty", String::new()),
        ("path", "../records.redb".into()),
        ("900 KB", "d".repeat(900_000)),
    ] {
        out.push(case(
            format!("GetDataset id {label}"),
            Call::GetDataset(id.clone()),
            Code::NotFound,
            "dataset",
        ));
        out.push(case(
            format!("DeleteDataset id {label}"),
            Call::DeleteDataset(id),
            Code::NotFound,
            "dataset",
        ));
    }
    let _ = &f.dataset;
    out
}

fn train_with(
    f: &Fixtures,
    edit: impl FnOnce(&mut pb::CreateTrainingJobRequest),
) -> pb::CreateTrainingJobRequest {
    let mut r = pb::CreateTrainingJobRequest {
        model_name: "abuse".into(),
        dataset_id: f.dataset.clone(),
        spec: Some(tiny_spec()),
        config: Some(tiny_config()),
        ..Default::default()
    };
    edit(&mut r);
    r
}

type Edit = Box<dyn Fn(&mut pb::CreateTrainingJobRequest)>;

fn spec_edit(e: impl Fn(&mut pb::ModelSpec) + 'static) -> Edit {
    Box::new(move |r| e(r.spec.as_mut().unwrap()))
}

fn config_edit(e: impl Fn(&mut pb::TrainingConfig) + 'static) -> Edit {
    Box::new(move |r| e(r.config.as_mut().unwrap()))
}

fn job_cases(f: &Fixtures) -> Vec<Case> {
    let mut out = Vec::new();
    let mut edits: Vec<(&str, Edit, Code, &str)> = vec![
        (
            "unknown dataset",
            Box::new(|r| r.dataset_id = "ds-000000000000".into()),
            Code::NotFound,
            "dataset_id",
        ),
        (
            "empty dataset",
            Box::new(|r| r.dataset_id = String::new()),
            Code::NotFound,
            "dataset_id",
        ),
        (
            "unknown validation dataset",
            Box::new(|r| r.validation_dataset_id = "ds-000000000000".into()),
            Code::NotFound,
            "validation_dataset_id",
        ),
        (
            "units 0",
            spec_edit(|s| s.layers[0].units = 0),
            Code::InvalidArgument,
            "spec.layers[0].units",
        ),
        (
            "units huge",
            spec_edit(|s| s.layers[0].units = 1 << 30),
            Code::InvalidArgument,
            "spec.layers[0].units",
        ),
        (
            "second layer units 0",
            spec_edit(|s| s.layers.push(layer(pb::Cell::Gru, 0))),
            Code::InvalidArgument,
            "spec.layers[1].units",
        ),
        (
            "cell 99",
            spec_edit(|s| s.layers[0].cell = 99),
            Code::InvalidArgument,
            "spec.layers[0].cell",
        ),
        (
            "dropout -0.1",
            spec_edit(|s| s.layers[0].dropout = -0.1),
            Code::InvalidArgument,
            "spec.layers[0].dropout",
        ),
        (
            "dropout 1",
            spec_edit(|s| s.layers[0].dropout = 1.0),
            Code::InvalidArgument,
            "spec.layers[0].dropout",
        ),
        (
            "dropout NaN",
            spec_edit(|s| s.layers[0].dropout = f32::NAN),
            Code::InvalidArgument,
            "spec.layers[0].dropout",
        ),
        (
            "too many layers",
            spec_edit(|s| s.layers = vec![layer(pb::Cell::Rnn, 2); 1000]),
            Code::InvalidArgument,
            "spec.layers",
        ),
        (
            "embedding_dim 0",
            spec_edit(|s| s.embedding_dim = Some(0)),
            Code::InvalidArgument,
            "spec.embedding_dim",
        ),
        (
            "embedding_dim huge",
            spec_edit(|s| s.embedding_dim = Some(u32::MAX)),
            Code::InvalidArgument,
            "spec.embedding_dim",
        ),
        (
            "window 0",
            spec_edit(|s| s.window = Some(0)),
            Code::InvalidArgument,
            "spec.window",
        ),
        (
            "window huge",
            spec_edit(|s| s.window = Some(u32::MAX)),
            Code::InvalidArgument,
            "spec.window",
        ),
        (
            "vocab_size 1",
            spec_edit(|s| s.vocab_size = Some(1)),
            Code::InvalidArgument,
            "spec.vocab_size",
        ),
        (
            "vocab_size below the dataset's",
            spec_edit(|s| s.vocab_size = Some(3)),
            Code::InvalidArgument,
            "spec.vocab_size",
        ),
        (
            "vocab_size huge",
            spec_edit(|s| s.vocab_size = Some(u32::MAX)),
            Code::InvalidArgument,
            "spec.vocab_size",
        ),
        (
            "embedding_dropout 1.5",
            spec_edit(|s| s.embedding_dropout = Some(1.5)),
            Code::InvalidArgument,
            "spec.embedding_dropout",
        ),
        (
            "unknown preset",
            spec_edit(|s| s.preset = "nope".into()),
            Code::InvalidArgument,
            "spec.preset",
        ),
        (
            "no layers",
            spec_edit(|s| s.layers.clear()),
            Code::InvalidArgument,
            "spec.layers",
        ),
        (
            "epochs 0",
            config_edit(|c| c.epochs = Some(0)),
            Code::InvalidArgument,
            "config.epochs",
        ),
        (
            "epochs huge",
            config_edit(|c| c.epochs = Some(u32::MAX)),
            Code::InvalidArgument,
            "config.epochs",
        ),
        (
            "batch_size 0",
            config_edit(|c| c.batch_size = Some(0)),
            Code::InvalidArgument,
            "config.batch_size",
        ),
        (
            "batch_size huge",
            config_edit(|c| c.batch_size = Some(u32::MAX)),
            Code::InvalidArgument,
            "config.batch_size",
        ),
        (
            "learning_rate 0",
            config_edit(|c| c.learning_rate = Some(0.0)),
            Code::InvalidArgument,
            "config.learning_rate",
        ),
        (
            "learning_rate -1",
            config_edit(|c| c.learning_rate = Some(-1.0)),
            Code::InvalidArgument,
            "config.learning_rate",
        ),
        (
            "learning_rate NaN",
            config_edit(|c| c.learning_rate = Some(f32::NAN)),
            Code::InvalidArgument,
            "config.learning_rate",
        ),
        (
            "beta1 1.5",
            config_edit(|c| c.beta1 = Some(1.5)),
            Code::InvalidArgument,
            "config.beta1",
        ),
        (
            "beta2 -1",
            config_edit(|c| c.beta2 = Some(-1.0)),
            Code::InvalidArgument,
            "config.beta2",
        ),
        (
            "epsilon 0",
            config_edit(|c| c.epsilon = Some(0.0)),
            Code::InvalidArgument,
            "config.epsilon",
        ),
        (
            "epsilon -1",
            config_edit(|c| c.epsilon = Some(-1.0)),
            Code::InvalidArgument,
            "config.epsilon",
        ),
        (
            "validation_split 1",
            config_edit(|c| c.validation_split = Some(1.0)),
            Code::InvalidArgument,
            "config.validation_split",
        ),
        (
            "validation_split -0.1",
            config_edit(|c| c.validation_split = Some(-0.1)),
            Code::InvalidArgument,
            "config.validation_split",
        ),
        (
            "optimizer sgd9",
            config_edit(|c| c.optimizer = "sgd9".into()),
            Code::InvalidArgument,
            "config.optimizer",
        ),
        (
            "weight_decay -1",
            config_edit(|c| c.weight_decay = Some(-1.0)),
            Code::InvalidArgument,
            "config.weight_decay",
        ),
        (
            "clip_grad_norm -1",
            config_edit(|c| c.clip_grad_norm = Some(-1.0)),
            Code::InvalidArgument,
            "config.clip_grad_norm",
        ),
        (
            "progress_every_seconds -1",
            config_edit(|c| c.progress_every_seconds = Some(-1.0)),
            Code::InvalidArgument,
            "config.progress_every_seconds",
        ),
        (
            "early_stopping metric",
            config_edit(|c| {
                c.early_stopping = Some(pb::EarlyStopping {
                    monitor: Some(pb::Monitor {
                        metric: "bogus".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            }),
            Code::InvalidArgument,
            "config.early_stopping.monitor",
        ),
        (
            "early_stopping mode",
            config_edit(|c| {
                c.early_stopping = Some(pb::EarlyStopping {
                    monitor: Some(pb::Monitor {
                        metric: "loss".into(),
                        mode: "sideways".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            }),
            Code::InvalidArgument,
            "config.early_stopping.mode",
        ),
        (
            "early_stopping min_delta -1",
            config_edit(|c| {
                c.early_stopping = Some(pb::EarlyStopping {
                    monitor: Some(pb::Monitor {
                        metric: "loss".into(),
                        min_delta: -1.0,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            }),
            Code::InvalidArgument,
            "config.early_stopping.min_delta",
        ),
        (
            "early_stopping on val_loss without validation",
            config_edit(|c| {
                c.early_stopping = Some(pb::EarlyStopping {
                    monitor: Some(pb::Monitor {
                        metric: "val_loss".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            }),
            Code::InvalidArgument,
            "config.early_stopping.monitor",
        ),
        (
            "reduce_lr factor 1.5",
            config_edit(|c| {
                c.reduce_lr_on_plateau = Some(pb::ReduceLrOnPlateau {
                    factor: Some(1.5),
                    monitor: Some(pb::Monitor {
                        metric: "loss".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            }),
            Code::InvalidArgument,
            "config.reduce_lr_on_plateau.factor",
        ),
        (
            "reduce_lr min_lr -1",
            config_edit(|c| {
                c.reduce_lr_on_plateau = Some(pb::ReduceLrOnPlateau {
                    min_lr: -1.0,
                    monitor: Some(pb::Monitor {
                        metric: "loss".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            }),
            Code::InvalidArgument,
            "config.reduce_lr_on_plateau.min_lr",
        ),
    ];
    for (label, name) in bad_names() {
        edits.push((
            Box::leak(format!("model_name {label}").into_boxed_str()),
            Box::new(move |r| r.model_name = name.clone()),
            Code::InvalidArgument,
            "model_name",
        ));
    }
    for (i, (label, edit, code, names)) in edits.into_iter().enumerate() {
        let r = train_with(f, |r| edit(r));
        // Alternate the two RPCs that take a training request.
        let call = if i % 2 == 0 {
            Call::CreateTrainingJob(r)
        } else {
            Call::Train(r)
        };
        let rpc = if i % 2 == 0 {
            "CreateTrainingJob"
        } else {
            "Train"
        };
        out.push(case(format!("{rpc} {label}"), call, code, names));
    }
    let mut text_vocab = train_with(f, |r| {
        r.dataset_id = f.text_dataset.clone();
        r.spec.as_mut().unwrap().vocab_size = Some(100);
    });
    text_vocab.model_name = "text".into();
    out.push(case(
        "CreateTrainingJob text vocab_size too big",
        Call::CreateTrainingJob(text_vocab),
        Code::InvalidArgument,
        "spec.vocab_size",
    ));

    // Tuning.
    let tune = |edit: &dyn Fn(&mut pb::CreateTuningJobRequest)| {
        let mut r = pb::CreateTuningJobRequest {
            model_name: "tuned".into(),
            dataset_id: f.dataset.clone(),
            spec: Some(tiny_spec()),
            config: Some(pb::TrainingConfig {
                validation_split: Some(0.2),
                ..tiny_config()
            }),
            max_trials: 2,
            ..Default::default()
        };
        edit(&mut r);
        Call::CreateTuningJob(r)
    };
    let range = |min: f64, max: f64| {
        Some(pb::ParamSpace {
            choices: vec![],
            min: Some(min),
            max: Some(max),
        })
    };
    let choices = |c: Vec<f64>| {
        Some(pb::ParamSpace {
            choices: c,
            min: None,
            max: None,
        })
    };
    let tunes: Vec<(&str, Call, &str)> = vec![
        (
            "no validation",
            tune(&|r| r.config.as_mut().unwrap().validation_split = None),
            "config.validation_split",
        ),
        (
            "strategy",
            tune(&|r| r.strategy = "bogus".into()),
            "strategy",
        ),
        (
            "objective",
            tune(&|r| r.objective = "bogus".into()),
            "objective",
        ),
        (
            "max_trials huge",
            tune(&|r| r.max_trials = 5000),
            "max_trials",
        ),
        (
            "parallel_trials huge",
            tune(&|r| r.parallel_trials = 5000),
            "parallel_trials",
        ),
        (
            "max_epochs huge",
            tune(&|r| r.max_epochs = u32::MAX),
            "max_epochs",
        ),
        (
            "reduction_factor 1",
            tune(&|r| r.reduction_factor = 1),
            "reduction_factor",
        ),
        (
            "reduction_factor 101",
            tune(&|r| r.reduction_factor = 101),
            "reduction_factor",
        ),
        (
            "units choice 0",
            tune(&|r| {
                r.search_space = Some(pb::SearchSpace {
                    units: choices(vec![0.0]),
                    ..Default::default()
                })
            }),
            "search_space.units",
        ),
        (
            "units range reversed",
            tune(&|r| {
                r.search_space = Some(pb::SearchSpace {
                    units: range(8.0, 4.0),
                    ..Default::default()
                })
            }),
            "search_space.units",
        ),
        (
            "units fractional",
            tune(&|r| {
                r.search_space = Some(pb::SearchSpace {
                    units: choices(vec![2.5]),
                    ..Default::default()
                })
            }),
            "search_space.units",
        ),
        (
            "num_layers huge",
            tune(&|r| {
                r.search_space = Some(pb::SearchSpace {
                    num_layers: choices(vec![1e9]),
                    ..Default::default()
                })
            }),
            "search_space.num_layers",
        ),
        (
            "dropout 1.5",
            tune(&|r| {
                r.search_space = Some(pb::SearchSpace {
                    dropout: choices(vec![1.5]),
                    ..Default::default()
                })
            }),
            "search_space.dropout",
        ),
        (
            "learning_rate range from 0",
            tune(&|r| {
                r.search_space = Some(pb::SearchSpace {
                    learning_rate: range(0.0, 0.1),
                    ..Default::default()
                })
            }),
            "search_space.learning_rate",
        ),
        (
            "learning_rate NaN",
            tune(&|r| {
                r.search_space = Some(pb::SearchSpace {
                    learning_rate: choices(vec![f64::NAN]),
                    ..Default::default()
                })
            }),
            "search_space.learning_rate",
        ),
        (
            "batch_size 0",
            tune(&|r| {
                r.search_space = Some(pb::SearchSpace {
                    batch_size: choices(vec![0.0]),
                    ..Default::default()
                })
            }),
            "search_space.batch_size",
        ),
        (
            "embedding_dim huge",
            tune(&|r| {
                r.search_space = Some(pb::SearchSpace {
                    embedding_dim: range(1.0, 1e12),
                    ..Default::default()
                })
            }),
            "search_space.embedding_dim",
        ),
        (
            "cell 99",
            tune(&|r| {
                r.search_space = Some(pb::SearchSpace {
                    cells: vec![99],
                    ..Default::default()
                })
            }),
            "search_space.cells",
        ),
        (
            "unknown dataset",
            tune(&|r| r.dataset_id = "ds-000000000000".into()),
            "dataset_id",
        ),
        (
            "empty model_name",
            tune(&|r| r.model_name = String::new()),
            "model_name",
        ),
    ];
    for (label, call, names) in tunes {
        let code = if label == "unknown dataset" {
            Code::NotFound
        } else {
            Code::InvalidArgument
        };
        out.push(case(format!("CreateTuningJob {label}"), call, code, names));
    }

    for (label, id) in [
        ("unknown", "job-000000000000".to_string()),
        ("empty", String::new()),
        ("path", "../../etc".into()),
        ("900 KB", "j".repeat(900_000)),
    ] {
        out.push(case(
            format!("GetJob {label}"),
            Call::GetJob(id.clone()),
            Code::NotFound,
            "job",
        ));
        out.push(case(
            format!("CancelJob {label}"),
            Call::CancelJob(id.clone()),
            Code::NotFound,
            "job",
        ));
        out.push(case(
            format!("WatchJob {label}"),
            Call::WatchJob(id),
            Code::NotFound,
            "job",
        ));
    }
    out.push(case(
        "CancelJob an ended job",
        Call::CancelJob(f.job.clone()),
        Code::FailedPrecondition,
        &f.job,
    ));
    out.push(case(
        "ListJobs state 99",
        Call::ListJobs(pb::ListJobsRequest {
            state: 99,
            ..Default::default()
        }),
        Code::InvalidArgument,
        "state",
    ));
    out.push(case(
        "ListJobs page_size huge",
        Call::ListJobs(pb::ListJobsRequest {
            page_size: 1_000_000,
            ..Default::default()
        }),
        Code::InvalidArgument,
        "page_size",
    ));
    out.push(case(
        "ListJobs page_token garbage",
        Call::ListJobs(pb::ListJobsRequest {
            page_token: "garbage".into(),
            ..Default::default()
        }),
        Code::InvalidArgument,
        "page_token",
    ));
    out
}

fn model_cases(f: &Fixtures) -> Vec<Case> {
    let mut out = Vec::new();
    for (label, name) in bad_names()
        .into_iter()
        .chain([("unknown", "nope".to_string())])
    {
        out.push(case(
            format!("GetModel {label}"),
            Call::GetModel(pb::GetModelRequest {
                name: name.clone(),
                version: 0,
            }),
            Code::NotFound,
            "name",
        ));
        out.push(case(
            format!("ExportModel {label}"),
            Call::ExportModel(pb::ExportModelRequest {
                format: Default::default(),
                name: name.clone(),
                version: 0,
            }),
            Code::NotFound,
            "name",
        ));
        out.push(case(
            format!("DeleteModel {label}"),
            Call::DeleteModel(pb::DeleteModelRequest {
                name: name.clone(),
                version: 0,
            }),
            Code::NotFound,
            "name",
        ));
        out.push(case(
            format!("Predict model {label}"),
            Call::Predict(pb::PredictRequest {
                model: name.clone(),
                sequences: vec![seq(vec![1])],
                ..Default::default()
            }),
            Code::NotFound,
            "model",
        ));
        out.push(case(
            format!("OpenSession model {label}"),
            Call::OpenSession(pb::OpenSessionRequest {
                whole_input: Default::default(),
                model: name.clone(),
                version: 0,
                portable: false,
            }),
            Code::NotFound,
            "model",
        ));
        out.push(case(
            format!("Generate model {label}"),
            Call::Generate(pb::GenerateRequest {
                model: name.clone(),
                prompt: Some(seq(vec![1])),
                max_tokens: 1,
                ..Default::default()
            }),
            Code::NotFound,
            "model",
        ));
        out.push(case(
            format!("ImportModel name {label}"),
            Call::ImportModel(import_chunks(
                &name,
                &[
                    ("model.safetensors", &f.weights),
                    ("metadata.json", &f.metadata),
                ],
            )),
            if label == "unknown" {
                Code::Ok
            } else {
                Code::InvalidArgument
            },
            "name",
        ));
    }
    // The one good import above registered "nope" v1: its delete is in the
    // cases below.
    out.retain(|c| c.code != Code::Ok);
    let m = &f.model;
    out.push(case(
        "GetModel version 99",
        Call::GetModel(pb::GetModelRequest {
            name: m.clone(),
            version: 99,
        }),
        Code::NotFound,
        "version 99",
    ));
    out.push(case(
        "ExportModel version 99",
        Call::ExportModel(pb::ExportModelRequest {
            format: Default::default(),
            name: m.clone(),
            version: 99,
        }),
        Code::NotFound,
        "version 99",
    ));
    out.push(case(
        "DeleteModel version 99",
        Call::DeleteModel(pb::DeleteModelRequest {
            name: m.clone(),
            version: 99,
        }),
        Code::NotFound,
        "version 99",
    ));
    let vocab_mismatch = {
        let mut meta: serde_json::Value = serde_json::from_slice(&f.metadata).unwrap();
        meta["vocabulary"] = serde_json::json!({"kind": "byte"});
        serde_json::to_vec(&meta).unwrap()
    };
    let bad_spec = {
        let mut meta: serde_json::Value = serde_json::from_slice(&f.metadata).unwrap();
        meta["spec"]["layers"][0]["units"] = serde_json::json!(0);
        serde_json::to_vec(&meta).unwrap()
    };
    let w: &[u8] = &f.weights;
    let md: &[u8] = &f.metadata;
    let imports: Vec<(&str, Vec<pb::ImportModelChunk>, Code, &str)> = vec![
        ("empty stream", vec![], Code::InvalidArgument, "chunk"),
        (
            "unknown file",
            import_chunks("imp", &[("evil.sh", b"#!")]),
            Code::InvalidArgument,
            "file",
        ),
        (
            "path file",
            import_chunks("imp", &[("../model.safetensors", w)]),
            Code::InvalidArgument,
            "file",
        ),
        (
            "weights only",
            import_chunks("imp", &[("model.safetensors", w)]),
            Code::InvalidArgument,
            "metadata.json",
        ),
        (
            "metadata only",
            import_chunks("imp", &[("metadata.json", md)]),
            Code::InvalidArgument,
            "model.safetensors",
        ),
        (
            "garbage metadata",
            import_chunks(
                "imp",
                &[("model.safetensors", w), ("metadata.json", b"{not json")],
            ),
            Code::InvalidArgument,
            "metadata.json",
        ),
        (
            "garbage weights",
            import_chunks(
                "imp",
                &[
                    ("model.safetensors", b"not safetensors"),
                    ("metadata.json", md),
                ],
            ),
            Code::InvalidArgument,
            "model.safetensors",
        ),
        (
            "truncated weights",
            import_chunks(
                "imp",
                &[
                    ("model.safetensors", &w[..w.len() / 2]),
                    ("metadata.json", md),
                ],
            ),
            Code::InvalidArgument,
            "model.safetensors",
        ),
        (
            "vocabulary size mismatch",
            import_chunks(
                "imp",
                &[("model.safetensors", w), ("metadata.json", &vocab_mismatch)],
            ),
            Code::InvalidArgument,
            "vocab_size",
        ),
        (
            "spec units 0",
            import_chunks(
                "imp",
                &[("model.safetensors", w), ("metadata.json", &bad_spec)],
            ),
            Code::InvalidArgument,
            "units",
        ),
        (
            "oversized chunk",
            import_chunks("imp", &[("model.safetensors", &vec![0; MAX_MESSAGE + 1])]),
            Code::ResourceExhausted,
            "max-message-bytes",
        ),
    ];
    for (label, chunks, code, names) in imports {
        out.push(case(
            format!("ImportModel {label}"),
            Call::ImportModel(chunks),
            code,
            names,
        ));
    }

    // Prediction on the fixture model (ids, vocabulary 7, unidirectional).
    let predict = |sequences: Vec<pb::Sequence>, top_k| {
        Call::Predict(pb::PredictRequest {
            model: m.clone(),
            version: 0,
            sequences,
            top_k,
            whole_input: false,
        })
    };
    let text = |t: &str| pb::Sequence {
        ids: vec![],
        text: t.into(),
    };
    let predicts: Vec<(&str, Call, Code, &str)> = vec![
        (
            "no sequences",
            predict(vec![], None),
            Code::InvalidArgument,
            "sequences",
        ),
        (
            "too many sequences",
            predict(vec![seq(vec![1]); 100_000], None),
            Code::InvalidArgument,
            "sequences",
        ),
        (
            "empty sequence",
            predict(vec![seq(vec![])], None),
            Code::InvalidArgument,
            "sequences[0]",
        ),
        (
            "id >= vocab_size",
            predict(vec![seq(vec![1]), seq(vec![1, 70])], None),
            Code::InvalidArgument,
            "sequences[1]",
        ),
        (
            "sequence too long",
            predict(vec![seq(vec![1; 200_000])], None),
            Code::InvalidArgument,
            "sequences[0]",
        ),
        (
            "text on an ids model",
            predict(vec![text("abc")], None),
            Code::InvalidArgument,
            "sequences[0]",
        ),
        (
            "ids and text",
            predict(
                vec![pb::Sequence {
                    ids: vec![1],
                    text: "a".into(),
                }],
                None,
            ),
            Code::InvalidArgument,
            "sequences[0]",
        ),
        (
            "top_k 0",
            predict(vec![seq(vec![1])], Some(0)),
            Code::InvalidArgument,
            "top_k",
        ),
        (
            "top_k above vocab_size",
            predict(vec![seq(vec![1])], Some(8)),
            Code::InvalidArgument,
            "top_k",
        ),
        (
            "version 99",
            Call::Predict(pb::PredictRequest {
                model: m.clone(),
                version: 99,
                sequences: vec![seq(vec![1])],
                top_k: None,
                whole_input: false,
            }),
            Code::NotFound,
            "version 99",
        ),
    ];
    for (label, call, code, names) in predicts {
        out.push(case(format!("Predict {label}"), call, code, names));
    }
    let generate = |edit: &dyn Fn(&mut pb::GenerateRequest)| {
        let mut r = pb::GenerateRequest {
            model: m.clone(),
            prompt: Some(seq(vec![1, 2])),
            max_tokens: 3,
            ..Default::default()
        };
        edit(&mut r);
        Call::Generate(r)
    };
    let generates: Vec<(&str, Call, &str)> = vec![
        (
            "max_tokens 0",
            generate(&|r| r.max_tokens = 0),
            "max_tokens",
        ),
        (
            "max_tokens huge",
            generate(&|r| r.max_tokens = u32::MAX),
            "max_tokens",
        ),
        (
            "temperature -1",
            generate(&|r| r.temperature = Some(-1.0)),
            "temperature",
        ),
        (
            "temperature NaN",
            generate(&|r| r.temperature = Some(f32::NAN)),
            "temperature",
        ),
        (
            "top_k above vocab_size",
            generate(&|r| r.top_k = 8),
            "top_k",
        ),
        (
            "stop id >= vocab_size",
            generate(&|r| r.stop_ids = vec![70]),
            "stop_ids",
        ),
        ("no prompt", generate(&|r| r.prompt = None), "prompt"),
        (
            "empty prompt",
            generate(&|r| r.prompt = Some(seq(vec![]))),
            "prompt",
        ),
        (
            "prompt id >= vocab_size",
            generate(&|r| r.prompt = Some(seq(vec![70]))),
            "prompt",
        ),
        (
            "prompt text on an ids model",
            generate(&|r| r.prompt = Some(text("ab"))),
            "prompt",
        ),
    ];
    for (label, call, names) in generates {
        out.push(case(
            format!("Generate {label}"),
            call,
            Code::InvalidArgument,
            names,
        ));
    }
    let feed = |session: &str, tokens: Option<pb::Sequence>, top_k| {
        Call::FeedSession(pb::FeedSessionRequest {
            session_id: session.into(),
            tokens,
            top_k,
            state: Vec::new(),
        })
    };
    let sessions: Vec<(&str, Call, Code, &str)> = vec![
        (
            // A bidirectional model has sessions over its window, but no
            // state to carry over the whole input.
            "OpenSession whole_input on a bidirectional model",
            Call::OpenSession(pb::OpenSessionRequest {
                whole_input: true,
                model: f.bidi_model.clone(),
                version: 0,
                portable: false,
            }),
            Code::FailedPrecondition,
            &f.bidi_model,
        ),
        (
            "OpenSession version 99",
            Call::OpenSession(pb::OpenSessionRequest {
                whole_input: Default::default(),
                model: m.clone(),
                version: 99,
                portable: false,
            }),
            Code::NotFound,
            "version 99",
        ),
        (
            "FeedSession unknown",
            feed("sess-0000", Some(seq(vec![1])), None),
            Code::NotFound,
            "sess-0000",
        ),
        (
            "FeedSession empty id",
            feed("", Some(seq(vec![1])), None),
            Code::NotFound,
            "session",
        ),
        (
            "FeedSession 900 KB id",
            feed(&"s".repeat(900_000), Some(seq(vec![1])), None),
            Code::NotFound,
            "session",
        ),
        (
            "FeedSession a portable state that is not a token",
            Call::FeedSession(pb::FeedSessionRequest {
                session_id: String::new(),
                tokens: Some(seq(vec![1])),
                top_k: None,
                state: b"lss1 but nothing signed".to_vec(),
            }),
            Code::InvalidArgument,
            "state",
        ),
        (
            "FeedSession a 900 KB portable state",
            Call::FeedSession(pb::FeedSessionRequest {
                session_id: String::new(),
                tokens: Some(seq(vec![1])),
                top_k: None,
                state: vec![7; 900_000],
            }),
            Code::InvalidArgument,
            "state",
        ),
        (
            "CloseSession unknown",
            Call::CloseSession("sess-0000".into()),
            Code::NotFound,
            "sess-0000",
        ),
        (
            "CloseSession empty",
            Call::CloseSession(String::new()),
            Code::NotFound,
            "session",
        ),
        (
            "CloseSession 900 KB id",
            Call::CloseSession("s".repeat(900_000)),
            Code::NotFound,
            "session",
        ),
    ];
    for (label, call, code, names) in sessions {
        out.push(case(label, call, code, names));
    }
    out
}

/// Cases that need an open session: (label, tokens, top_k, field).
fn session_feeds() -> Vec<(
    &'static str,
    Option<pb::Sequence>,
    Option<u32>,
    &'static str,
)> {
    vec![
        ("no tokens", None, None, "tokens"),
        ("empty tokens", Some(seq(vec![])), None, "tokens"),
        (
            "token >= vocab_size",
            Some(seq(vec![1, 70])),
            None,
            "tokens",
        ),
        (
            "text on an ids model",
            Some(pb::Sequence {
                ids: vec![],
                text: "ab".into(),
            }),
            None,
            "tokens",
        ),
        ("top_k 0", Some(seq(vec![1])), Some(0), "top_k"),
        (
            "top_k above vocab_size",
            Some(seq(vec![1])),
            Some(8),
            "top_k",
        ),
        (
            "too many tokens",
            Some(seq(vec![1; 200_000])),
            None,
            "tokens",
        ),
    ]
}

async fn train_fixture(c: &mut Clients, dataset: &str, name: &str, bidirectional: bool) -> String {
    let mut spec = tiny_spec();
    spec.layers[0].bidirectional = bidirectional;
    let events = train(
        c,
        pb::CreateTrainingJobRequest {
            model_name: name.into(),
            dataset_id: dataset.into(),
            spec: Some(spec),
            config: Some(tiny_config()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(finished(&events).state, pb::JobState::Succeeded as i32);
    events[0].job_id.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_is_refused_clearly_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let mut args = args(data);
    args.max_message_bytes = MAX_MESSAGE;
    let server = start_with(args).await;
    let mut c = connect(&server).await;

    let dataset = ids_dataset(&mut c, "cycle", cycle(7, 300), 7).await.id;
    let text_dataset = c
        .datasets
        .create_dataset(pb::CreateDatasetRequest {
            name: "text".into(),
            data: Some(pb::create_dataset_request::Data::Text(
                "abcabcabd".repeat(20),
            )),
            tokenizer: pb::Tokenizer::Char as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .id;
    let job = train_fixture(&mut c, &dataset, "m", false).await;
    train_fixture(&mut c, &dataset, "bidi", true).await;
    let (mut weights, mut metadata) = (Vec::new(), Vec::new());
    let mut export = c
        .models
        .export_model(pb::ExportModelRequest {
            format: Default::default(),
            name: "m".into(),
            version: 1,
        })
        .await
        .unwrap()
        .into_inner();
    while let Some(chunk) = export.message().await.unwrap() {
        match chunk.file.as_str() {
            "model.safetensors" => weights.extend(chunk.data),
            _ => metadata.extend(chunk.data),
        }
    }
    let f = Fixtures {
        dataset,
        text_dataset,
        model: "m".into(),
        bidi_model: "bidi".into(),
        job,
        weights,
        metadata,
    };
    let session = c
        .predict
        .open_session(pb::OpenSessionRequest {
            whole_input: Default::default(),
            model: "m".into(),
            version: 0,
            portable: false,
        })
        .await
        .unwrap()
        .into_inner()
        .session_id;
    let fixture_files = files_under(data);

    let mut cases = dataset_cases(&f);
    cases.extend(job_cases(&f));
    cases.extend(model_cases(&f));
    for (label, tokens, top_k, field) in session_feeds() {
        cases.push(case(
            format!("FeedSession {label}"),
            Call::FeedSession(pb::FeedSessionRequest {
                session_id: session.clone(),
                tokens,
                top_k,
                state: Vec::new(),
            }),
            Code::InvalidArgument,
            field,
        ));
    }
    // An oversized unary message, and a refused Train stream.
    cases.push(case(
        "CreateDataset over --max-message-bytes",
        Call::CreateDataset(pb::CreateDatasetRequest {
            name: "huge".into(),
            data: Some(pb::create_dataset_request::Data::Text(
                "a".repeat(MAX_MESSAGE + 1),
            )),
            ..Default::default()
        }),
        Code::ResourceExhausted,
        "max-message-bytes",
    ));
    let labels: BTreeSet<&str> = cases.iter().map(|c| c.label.as_str()).collect();
    assert_eq!(labels.len(), cases.len(), "every case has its own label");
    assert!(cases.len() >= 150, "{} cases", cases.len());

    let mut health = HealthClient::new(c.channel.clone());
    let mut failures = Vec::new();
    let total = cases.len();
    for Case {
        label,
        call,
        code,
        names,
    } in cases
    {
        match send(&mut c, call).await {
            Ok(()) => failures.push(format!("{label}: accepted")),
            Err(s) => {
                if s.code() != code {
                    failures.push(format!(
                        "{label}: {:?}, wanted {code:?}: {}",
                        s.code(),
                        s.message()
                    ));
                } else if !s.message().contains(&names) {
                    failures.push(format!(
                        "{label}: the message does not name {names:?}: {}",
                        s.message()
                    ));
                } else if s.message().len() >= 1024 {
                    failures.push(format!("{label}: a {} byte message", s.message().len()));
                }
            }
        }
        let serving = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|r| r.into_inner().status);
        assert_eq!(
            serving.ok(),
            Some(1),
            "the server is unhealthy after {label}"
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {total} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Nothing a refused request sent was kept.
    assert_eq!(files_under(data), fixture_files);
    let models = c
        .models
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .models;
    let names: Vec<_> = models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, vec!["bidi", "m"]);
    let datasets = c
        .datasets
        .list_datasets(pb::ListDatasetsRequest {})
        .await
        .unwrap()
        .into_inner()
        .datasets;
    assert_eq!(datasets.len(), 2);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tuning_answers_say_what_they_cap_and_print_bounds_plainly() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    let dataset = ids_dataset(&mut c, "cycle", cycle(7, 300), 7).await.id;
    let request = |edit: &dyn Fn(&mut pb::CreateTuningJobRequest)| {
        let mut r = pb::CreateTuningJobRequest {
            model_name: "tuned".into(),
            dataset_id: dataset.clone(),
            spec: Some(tiny_spec()),
            config: Some(pb::TrainingConfig {
                validation_split: Some(0.2),
                ..tiny_config()
            }),
            max_trials: 2,
            ..Default::default()
        };
        edit(&mut r);
        r
    };

    // A log-uniform range's lower bound is "above 0", not f64::MIN_POSITIVE
    // written out in 300 digits.
    let refused = c
        .jobs
        .create_tuning_job(request(&|r| {
            r.search_space = Some(pb::SearchSpace {
                learning_rate: Some(pb::ParamSpace {
                    choices: vec![],
                    min: Some(0.0),
                    max: Some(0.1),
                }),
                ..Default::default()
            })
        }))
        .await
        .expect_err("a learning rate of 0 is refused");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("(0, "), "{}", refused.message());
    assert!(refused.message().len() < 200, "{}", refused.message());

    // parallel_trials beyond the workers is accepted and the job says so.
    let job = c
        .jobs
        .create_tuning_job(request(&|r| r.parallel_trials = 1000))
        .await
        .unwrap()
        .into_inner();
    let mut stream = c
        .jobs
        .watch_job(pb::WatchJobRequest { id: job.id.clone() })
        .await
        .unwrap()
        .into_inner();
    let seen = wait_for_state(&mut stream, "searching").await;
    let message = seen
        .iter()
        .find_map(|e| match &e.kind {
            Some(pb::job_event::Kind::State(s)) if s.message.contains("searching") => {
                Some(s.message.clone())
            }
            _ => None,
        })
        .unwrap();
    assert!(
        message.contains("1 at a time") && message.contains("parallel_trials 1000 is capped"),
        "{message}"
    );
    c.jobs
        .cancel_job(pb::CancelJobRequest { id: job.id.clone() })
        .await
        .unwrap();
    let rest = collect(stream).await;
    assert_eq!(finished(&rest).state, pb::JobState::Cancelled as i32);
    server.stop().await.unwrap();
}
