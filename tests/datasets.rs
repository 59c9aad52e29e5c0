//! DatasetService over real gRPC: streamed uploads (big, interrupted, too
//! large, invalid), deletion while jobs use a dataset, text through Predict,
//! and a char model on real text against the unigram baseline.
mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use lstmd::proto as pb;
use pb::upload_dataset_request::Part;
use tonic::Code;

/// Shakespeare's Macbeth, public domain; see tests/data/README.md.
const MACBETH: &str = include_str!("data/macbeth.txt");

fn header(name: &str, tokenizer: pb::Tokenizer) -> pb::UploadDatasetHeader {
    pb::UploadDatasetHeader {
        name: name.into(),
        tokenizer: tokenizer as i32,
        ..Default::default()
    }
}

fn header_msg(h: pb::UploadDatasetHeader) -> pb::UploadDatasetRequest {
    pb::UploadDatasetRequest {
        part: Some(Part::Header(h)),
    }
}

fn chunk_msg(bytes: &[u8]) -> pb::UploadDatasetRequest {
    pb::UploadDatasetRequest {
        part: Some(Part::Chunk(bytes.to_vec())),
    }
}

/// Uploads `data` in chunks of `chunk` bytes after the header.
async fn upload(
    c: &mut Clients,
    h: pb::UploadDatasetHeader,
    data: &[u8],
    chunk: usize,
) -> Result<pb::Dataset, tonic::Status> {
    let mut messages = vec![header_msg(h)];
    messages.extend(data.chunks(chunk).map(chunk_msg));
    upload_messages(c, messages).await
}

async fn upload_messages(
    c: &mut Clients,
    messages: Vec<pb::UploadDatasetRequest>,
) -> Result<pb::Dataset, tonic::Status> {
    c.datasets
        .upload_dataset(tokio_stream::iter(messages))
        .await
        .map(|r| r.into_inner())
}

/// Every file under `dir`, relative to it.
fn files_under(dir: &Path) -> BTreeSet<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.insert(path.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

/// Waits (up to 10 s) until `cond` holds.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn list(c: &mut Clients) -> Vec<pb::Dataset> {
    c.datasets
        .list_datasets(pb::ListDatasetsRequest {})
        .await
        .unwrap()
        .into_inner()
        .datasets
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

fn layer(cell: pb::Cell, units: u32) -> pb::RecurrentLayer {
    pb::RecurrentLayer {
        cell: cell as i32,
        units,
        ..Default::default()
    }
}

fn job(
    dataset_id: &str,
    model: &str,
    spec: pb::ModelSpec,
    config: pb::TrainingConfig,
) -> pb::CreateTrainingJobRequest {
    pb::CreateTrainingJobRequest {
        model_name: model.into(),
        dataset_id: dataset_id.into(),
        spec: Some(spec),
        config: Some(config),
        ..Default::default()
    }
}

async fn train(c: &mut Clients, request: pb::CreateTrainingJobRequest) -> Vec<pb::JobEvent> {
    let events = collect(c.jobs.train(request).await.unwrap().into_inner()).await;
    let done = finished(&events);
    assert_eq!(
        done.state,
        pb::JobState::Succeeded as i32,
        "{}",
        done.reason
    );
    events
}

fn text_seq(text: &str) -> pb::Sequence {
    pb::Sequence {
        ids: vec![],
        text: text.into(),
    }
}

fn ids_seq(ids: Vec<u32>) -> pb::Sequence {
    pb::Sequence {
        ids,
        text: String::new(),
    }
}

async fn predict(
    c: &mut Clients,
    model: &str,
    sequences: Vec<pb::Sequence>,
    top_k: u32,
) -> Vec<pb::Prediction> {
    c.predict
        .predict(pb::PredictRequest {
            model: model.into(),
            version: 0,
            sequences,
            top_k: Some(top_k),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .predictions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_multi_megabyte_text_in_chunks_and_train_on_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;

    // 2 MiB: Macbeth 21 times, each copy followed by a line of non-ASCII
    // characters, so chunks of an odd size split multi-byte characters.
    let mut text = String::new();
    while text.len() < 2 << 20 {
        text.push_str(MACBETH);
        text.push_str("\n— ☃ Ça, naïve 日本語 —\n");
    }
    let chunk = 65_537;
    let started = Instant::now();
    let ds = upload(
        &mut c,
        header("macbeth-x21", pb::Tokenizer::Char),
        text.as_bytes(),
        chunk,
    )
    .await
    .expect("the upload succeeds");
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "uploaded {} bytes in {} chunks of {chunk}: {seconds:.2} s, {:.1} MB/s (char tokenizer, two passes)",
        text.len(),
        text.len().div_ceil(chunk),
        text.len() as f64 / seconds / 1e6
    );
    let chars: Vec<char> = text.chars().collect();
    let distinct: BTreeSet<char> = chars.iter().copied().collect();
    assert_eq!(ds.name, "macbeth-x21");
    assert_eq!(ds.tokenizer, pb::Tokenizer::Char as i32);
    assert_eq!(ds.token_count, chars.len() as u64);
    assert_eq!(ds.vocab_size as usize, distinct.len() + 1, "<unk> + chars");
    assert_eq!(ds.source_bytes, text.len() as u64);
    assert_eq!(ds.size_bytes, 4 * chars.len() as u64);
    assert_eq!(ds.preview, chars[..64].iter().collect::<String>());
    assert_eq!(list(&mut c).await, vec![ds.clone()]);
    let got = c
        .datasets
        .get_dataset(pb::GetDatasetRequest { id: ds.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, ds);
    // Nothing staged remains once the dataset is committed.
    assert!(files_under(&dir.path().join("staging")).is_empty());

    // The same corpus with the vocabulary capped at the 3 most frequent
    // characters and <unk>, and one epoch of a tiny model over all its ~2M
    // windows, in a few big batches.
    let mut counts: HashMap<char, usize> = HashMap::new();
    for &ch in &chars {
        *counts.entry(ch).or_default() += 1;
    }
    let mut by_freq: Vec<(usize, char)> = counts.into_iter().map(|(ch, n)| (n, ch)).collect();
    by_freq.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let kept: BTreeSet<char> = by_freq[..3].iter().map(|&(_, ch)| ch).collect();
    let mut capped_header = header("macbeth-x21-capped", pb::Tokenizer::Char);
    capped_header.max_vocab_size = 4;
    let capped = upload(&mut c, capped_header, text.as_bytes(), 1 << 20)
        .await
        .unwrap();
    assert_eq!(capped.vocab_size, 4);
    assert_eq!(capped.token_count, chars.len() as u64);
    let preview: String = chars[..64]
        .iter()
        .map(|ch| match kept.contains(ch) {
            true => ch.to_string(),
            false => "<unk>".to_string(),
        })
        .collect();
    assert_eq!(capped.preview, preview);
    let started = Instant::now();
    let events = train(
        &mut c,
        job(
            &capped.id,
            "macbeth-tiny",
            pb::ModelSpec {
                embedding_dim: Some(2),
                window: Some(1),
                layers: vec![layer(pb::Cell::Rnn, 4)],
                ..Default::default()
            },
            pb::TrainingConfig {
                epochs: Some(1),
                batch_size: Some(65_536),
                learning_rate: Some(0.05),
                ..Default::default()
            },
        ),
    )
    .await;
    let history = epochs(&events);
    println!(
        "trained 1 epoch over {} windows in {:.2} s: accuracy {:.3}",
        ds.token_count - 1,
        started.elapsed().as_secs_f64(),
        history[0].accuracy
    );
    let model = c
        .models
        .get_model(pb::GetModelRequest {
            name: "macbeth-tiny".into(),
            version: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(model.vocabulary_kind, "char");
    assert_eq!(model.vocab_size, 4);
    let p = predict(&mut c, "macbeth-tiny", vec![text_seq("Macbeth ☃")], 4).await;
    let texts: BTreeSet<String> = p[0].top.iter().map(|t| t.text.clone()).collect();
    let mut want: BTreeSet<String> = kept.iter().map(|ch| ch.to_string()).collect();
    want.insert("<unk>".into());
    assert_eq!(texts, want);
    server.stop().await.unwrap();
}

/// A client on its own TCP connection, and a handle that cuts that
/// connection as a crashed client or a network failure would.
async fn cuttable_client(
    addr: std::net::SocketAddr,
) -> (
    pb::dataset_service_client::DatasetServiceClient<tonic::transport::Channel>,
    std::net::TcpStream,
) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let std_stream = stream.into_std().unwrap();
    let cut = std_stream.try_clone().unwrap();
    let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(
        tokio::net::TcpStream::from_std(std_stream).unwrap(),
    )));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let stream = slot.lock().unwrap().take();
            async move {
                stream
                    .map(hyper_util::rt::TokioIo::new)
                    .ok_or_else(|| std::io::Error::other("this channel has one connection"))
            }
        }))
        .await
        .unwrap();
    (
        pb::dataset_service_client::DatasetServiceClient::new(channel),
        cut,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_upload_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    let before = files_under(dir.path());
    let staging = dir.path().join("staging");

    // The connection breaks mid-stream, as when a client crashes or the
    // network fails. (A client that merely stops waiting for the answer but
    // still closes its stream has sent a whole upload.)
    for tokenizer in [pb::Tokenizer::Char, pb::Tokenizer::Byte, pb::Tokenizer::Ids] {
        let (mut client, cut) = cuttable_client(server.addr).await;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let call = tokio::spawn(async move {
            client
                .upload_dataset(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        });
        let mut h = header("cut-short", tokenizer);
        let data: Vec<u8> = if tokenizer == pb::Tokenizer::Ids {
            h.vocab_size = 256;
            MACBETH
                .bytes()
                .take(10_000)
                .flat_map(|b| u32::from(b).to_le_bytes())
                .collect()
        } else {
            MACBETH.as_bytes()[..40_000].to_vec()
        };
        tx.send(header_msg(h)).await.unwrap();
        for piece in data.chunks(10_000) {
            tx.send(chunk_msg(piece)).await.unwrap();
        }
        // The server is staging the upload when the connection breaks.
        eventually("the upload is staged", || !files_under(&staging).is_empty()).await;
        cut.shutdown(std::net::Shutdown::Both).unwrap();
        call.await.unwrap().expect_err("the upload cannot succeed");
        eventually("the staged files are gone", || {
            files_under(dir.path()) == before
        })
        .await;
        assert!(list(&mut c).await.is_empty());
        drop(tx);
    }

    // The name was never taken: a whole upload under it succeeds.
    let ds = upload(
        &mut c,
        header("cut-short", pb::Tokenizer::Char),
        MACBETH.as_bytes(),
        16_384,
    )
    .await
    .unwrap();
    assert_eq!(ds.token_count, MACBETH.len() as u64);
    server.stop().await.unwrap();

    // A server killed mid-upload leaves a staged file; the next start
    // removes it.
    std::fs::write(staging.join("upload-left-by-kill-9"), b"partial").unwrap();
    let server = start(dir.path()).await;
    assert!(files_under(&staging).is_empty());
    let mut c = connect(&server).await;
    assert_eq!(list(&mut c).await, vec![ds]);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_past_the_size_or_in_flight_limit_are_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = args(dir.path());
    args.limits.max_dataset_bytes = 100_000;
    args.limits.max_uploads_in_flight = 1;
    let server = start_with(args).await;
    let mut c = connect(&server).await;
    let before = files_under(dir.path());

    // One upload at a time here: a second one waits for none.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut client = c.datasets.clone();
    let first = tokio::spawn(async move {
        client
            .upload_dataset(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    tx.send(header_msg(header("first", pb::Tokenizer::Char)))
        .await
        .unwrap();
    tx.send(chunk_msg(b"one at a time")).await.unwrap();
    let staging = dir.path().join("staging");
    eventually("the first upload is staged", || {
        !files_under(&staging).is_empty()
    })
    .await;
    assert_status(
        upload(&mut c, header("second", pb::Tokenizer::Char), b"ab", 1).await,
        Code::ResourceExhausted,
        "1 uploads are in flight, the server's limit (--max-uploads-in-flight)",
    );
    drop(tx);
    let first = first.await.unwrap().unwrap().into_inner();
    assert_eq!(first.token_count, 13);
    c.datasets
        .delete_dataset(pb::DeleteDatasetRequest { id: first.id })
        .await
        .unwrap();
    assert_eq!(files_under(dir.path()), before);
    let text = &MACBETH.as_bytes()[..100_001];

    // Far past the limit: refused as soon as the limit is passed.
    let mut big = Vec::new();
    while big.len() < 8 << 20 {
        big.extend_from_slice(MACBETH.as_bytes());
    }
    for tokenizer in [pb::Tokenizer::Char, pb::Tokenizer::Byte] {
        assert_status(
            upload(&mut c, header("big", tokenizer), &big, 1 << 16).await,
            Code::ResourceExhausted,
            "limit of 100000 bytes",
        );
    }
    // One byte past it.
    assert_status(
        upload(&mut c, header("big", pb::Tokenizer::Char), text, 30_000).await,
        Code::ResourceExhausted,
        "limit of 100000 bytes (--max-dataset-bytes)",
    );
    let mut ids_header = header("big", pb::Tokenizer::Ids);
    ids_header.vocab_size = 256;
    let ids: Vec<u8> = (0..25_001u32)
        .flat_map(|i| (i % 256).to_le_bytes())
        .collect();
    assert_status(
        upload(&mut c, ids_header.clone(), &ids, 4096).await,
        Code::ResourceExhausted,
        "limit of 100000 bytes",
    );
    // Inline data has the same limit.
    assert_status(
        c.datasets
            .create_dataset(pb::CreateDatasetRequest {
                name: "big".into(),
                data: Some(pb::create_dataset_request::Data::Text(
                    String::from_utf8(text.to_vec()).unwrap(),
                )),
                ..Default::default()
            })
            .await,
        Code::ResourceExhausted,
        "limit of 100000 bytes",
    );
    assert!(list(&mut c).await.is_empty());
    assert_eq!(files_under(dir.path()), before);

    // Exactly the limit is fine.
    let ds = upload(
        &mut c,
        header("at-limit", pb::Tokenizer::Char),
        &text[..100_000],
        30_000,
    )
    .await
    .unwrap();
    assert_eq!(ds.source_bytes, 100_000);
    let ds = upload(&mut c, ids_header, &ids[..100_000], 4096)
        .await
        .unwrap();
    assert_eq!(ds.token_count, 25_000);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_uploads_are_refused_naming_the_field_and_rule() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    let before = files_under(dir.path());
    let char_header = || header("bad", pb::Tokenizer::Char);

    // Invalid UTF-8, with its byte offset in the whole stream.
    for tokenizer in [pb::Tokenizer::Char, pb::Tokenizer::Byte] {
        let messages = vec![
            header_msg(header("bad", tokenizer)),
            chunk_msg(b"hello wor"),
            chunk_msg(b"ld \xff more"),
        ];
        assert_status(
            upload_messages(&mut c, messages).await,
            Code::InvalidArgument,
            "chunks must be UTF-8 text: invalid or truncated byte sequence at byte offset 12",
        );
    }
    // A character cut by the end of the stream.
    assert_status(
        upload(&mut c, char_header(), &"abc日".as_bytes()[..5], 4).await,
        Code::InvalidArgument,
        "at byte offset 3",
    );
    // Token ids at or past the declared vocabulary, with their position.
    let mut ids_header = header("bad", pb::Tokenizer::Ids);
    ids_header.vocab_size = 5;
    let ids: Vec<u8> = [1u32, 2, 3, 4, 0, 9]
        .iter()
        .flat_map(|i| i.to_le_bytes())
        .collect();
    assert_status(
        upload(&mut c, ids_header.clone(), &ids, 3).await,
        Code::InvalidArgument,
        "tokens[5] must be < header.vocab_size 5, got 9 (at byte offset 20)",
    );
    assert_status(
        upload(&mut c, ids_header.clone(), &ids[..10], 3).await,
        Code::InvalidArgument,
        "chunks must total a multiple of 4 bytes (little-endian u32 ids), got 10",
    );
    // The shape of the stream.
    assert_status(
        upload_messages(&mut c, vec![chunk_msg(b"abc")]).await,
        Code::InvalidArgument,
        "messages[0] must be the header",
    );
    assert_status(
        upload_messages(&mut c, vec![]).await,
        Code::InvalidArgument,
        "messages must start with a header",
    );
    assert_status(
        upload_messages(
            &mut c,
            vec![
                header_msg(char_header()),
                chunk_msg(b"abc"),
                header_msg(char_header()),
            ],
        )
        .await,
        Code::InvalidArgument,
        "messages[2] must be a chunk",
    );
    assert_status(
        upload_messages(
            &mut c,
            vec![header_msg(char_header()), chunk_msg(b"ab"), chunk_msg(b"")],
        )
        .await,
        Code::InvalidArgument,
        "messages[2].chunk must hold 1 or more bytes",
    );
    assert_status(
        upload(&mut c, char_header(), b"a", 1).await,
        Code::InvalidArgument,
        "chunks must hold at least 2 tokens, got 1",
    );
    // The header's fields.
    let mut h = char_header();
    h.name = "../up".into();
    assert_status(
        upload(&mut c, h, b"abc", 1).await,
        Code::InvalidArgument,
        "header.name must be 1..=64 characters",
    );
    let mut h = char_header();
    h.vocab_size = 10;
    assert_status(
        upload(&mut c, h, b"abc", 1).await,
        Code::InvalidArgument,
        "header.vocab_size applies to TOKENIZER_IDS only",
    );
    let mut h = char_header();
    h.max_vocab_size = 1;
    assert_status(
        upload(&mut c, h, b"abc", 1).await,
        Code::InvalidArgument,
        "header.max_vocab_size must be 0 (no limit) or 2..=",
    );
    ids_header.vocab_size = 1;
    assert_status(
        upload(&mut c, ids_header.clone(), &ids, 4).await,
        Code::InvalidArgument,
        "header.vocab_size must be 2..=",
    );
    let mut h = char_header();
    h.tokenizer = 42;
    assert_status(
        upload(&mut c, h, b"abc", 1).await,
        Code::InvalidArgument,
        "header.tokenizer must be",
    );
    assert_eq!(files_under(dir.path()), before, "refusals leave nothing");
    assert!(list(&mut c).await.is_empty());

    // Valid ids, split inside ids, and a char vocabulary capped in size.
    ids_header.vocab_size = 10;
    let ds = upload(&mut c, ids_header, &ids, 3).await.unwrap();
    assert_eq!(ds.token_count, 6);
    assert_eq!(ds.preview, "1 2 3 4 0 9");
    let mut h = header("capped", pb::Tokenizer::Char);
    h.max_vocab_size = 3;
    let ds = upload(&mut c, h, b"aaabbc", 2).await.unwrap();
    assert_eq!(ds.vocab_size, 3);
    assert_eq!(ds.preview, "aaabb<unk>");
    // Names stay unique.
    assert_status(
        upload(&mut c, header("capped", pb::Tokenizer::Byte), b"xy", 1).await,
        Code::AlreadyExists,
        "capped",
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_dataset_works_and_is_refused_while_a_job_uses_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    let x = ids_dataset(&mut c, "x", cycle(7, 2000), 7).await;
    let y = ids_dataset(&mut c, "y", cycle(5, 200), 5).await;
    let deep = |window| pb::ModelSpec {
        preset: "deep".into(),
        window: Some(window),
        ..Default::default()
    };
    let config = |epochs| pb::TrainingConfig {
        epochs: Some(epochs),
        batch_size: Some(32),
        ..Default::default()
    };
    // One worker: a runs, b waits in the queue behind it.
    let a = c
        .jobs
        .create_training_job(job(&x.id, "from-x", deep(4), config(4)))
        .await
        .unwrap()
        .into_inner();
    let b = c
        .jobs
        .create_training_job(job(&y.id, "from-y", deep(3), config(1)))
        .await
        .unwrap()
        .into_inner();
    let delete = |id: &str| pb::DeleteDatasetRequest { id: id.into() };
    assert_status(
        c.datasets.delete_dataset(delete(&y.id)).await,
        Code::FailedPrecondition,
        &format!(
            "dataset {} is used by queued or running jobs ({})",
            y.id, b.id
        ),
    );
    assert_status(
        c.datasets.delete_dataset(delete(&x.id)).await,
        Code::FailedPrecondition,
        &a.id,
    );
    assert_eq!(list(&mut c).await.len(), 2);

    // Once the jobs ended, both go.
    let events = collect(
        c.jobs
            .watch_job(pb::WatchJobRequest { id: b.id.clone() })
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    assert_eq!(finished(&events).state, pb::JobState::Succeeded as i32);
    let a_done = c
        .jobs
        .get_job(pb::GetJobRequest { id: a.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a_done.state, pb::JobState::Succeeded as i32);
    for ds in [&x, &y] {
        c.datasets.delete_dataset(delete(&ds.id)).await.unwrap();
        assert_status(
            c.datasets
                .get_dataset(pb::GetDatasetRequest { id: ds.id.clone() })
                .await,
            Code::NotFound,
            &ds.id,
        );
        assert_status(
            c.datasets.delete_dataset(delete(&ds.id)).await,
            Code::NotFound,
            &ds.id,
        );
    }
    assert!(list(&mut c).await.is_empty());
    assert!(files_under(&dir.path().join("blobs/datasets")).is_empty());
    assert_status(
        c.datasets.delete_dataset(delete("../../etc")).await,
        Code::NotFound,
        "../../etc",
    );
    // Training on a deleted dataset is refused up front.
    assert_status(
        c.jobs
            .create_training_job(job(&x.id, "again", deep(4), config(1)))
            .await,
        Code::NotFound,
        &x.id,
    );
    // Models trained on them live on.
    let p = predict(&mut c, "from-x", vec![ids_seq(vec![3, 4, 5, 6])], 1).await;
    assert_eq!(p[0].top[0].id, 0);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_round_trips_through_predict() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    let text = "la café crème, naïve — 日本語. ".repeat(20);

    // The same text inline and uploaded in 1..3-byte chunks (splitting every
    // multi-byte character) gives the same dataset.
    let inline = c
        .datasets
        .create_dataset(pb::CreateDatasetRequest {
            name: "cafe".into(),
            data: Some(pb::create_dataset_request::Data::Text(text.clone())),
            tokenizer: pb::Tokenizer::Char as i32,
            max_vocab_size: 0,
            vocabulary_from: None,
        })
        .await
        .unwrap()
        .into_inner();
    let mut messages = vec![header_msg(header("cafe-up", pb::Tokenizer::Char))];
    let bytes = text.as_bytes();
    let mut at = 0;
    for size in [1, 2, 3].iter().cycle() {
        if at >= bytes.len() {
            break;
        }
        let end = (at + size).min(bytes.len());
        messages.push(chunk_msg(&bytes[at..end]));
        at = end;
    }
    let uploaded = upload_messages(&mut c, messages).await.unwrap();
    for field in [
        (inline.token_count, uploaded.token_count),
        (inline.vocab_size as u64, uploaded.vocab_size as u64),
        (inline.size_bytes, uploaded.size_bytes),
        (inline.source_bytes, uploaded.source_bytes),
    ] {
        assert_eq!(field.0, field.1);
    }
    assert_eq!(inline.preview, uploaded.preview);
    assert_eq!(inline.token_count, text.chars().count() as u64);

    let tiny = |window| pb::ModelSpec {
        embedding_dim: Some(8),
        window: Some(window),
        layers: vec![layer(pb::Cell::Gru, 16)],
        ..Default::default()
    };
    let config = pb::TrainingConfig {
        epochs: Some(1),
        batch_size: Some(64),
        ..Default::default()
    };
    train(&mut c, job(&uploaded.id, "cafe", tiny(4), config.clone())).await;

    // With top_k = the vocabulary size, one prediction lists every id with
    // its text: the model's vocabulary, as the client sees it.
    let vocab = uploaded.vocab_size;
    let all = predict(&mut c, "cafe", vec![text_seq("café")], vocab).await;
    let by_text: HashMap<String, u32> = all[0].top.iter().map(|t| (t.text.clone(), t.id)).collect();
    assert_eq!(by_text.len(), vocab as usize, "one text per id");
    assert_eq!(by_text["<unk>"], 0);
    let corpus: BTreeSet<String> = text.chars().map(String::from).collect();
    let known: BTreeSet<String> = by_text.keys().filter(|t| *t != "<unk>").cloned().collect();
    assert_eq!(known, corpus);

    // Text in gives what its ids give; unknown characters are <unk>.
    for probe in ["naïve 日本", "crème", "xZé"] {
        let ids: Vec<u32> = probe
            .chars()
            .map(|ch| by_text.get(&ch.to_string()).copied().unwrap_or(0))
            .collect();
        let from_text = predict(&mut c, "cafe", vec![text_seq(probe)], 5).await;
        let from_ids = predict(&mut c, "cafe", vec![ids_seq(ids)], 5).await;
        assert_eq!(from_text, from_ids, "{probe}");
        for t in &from_text[0].top {
            assert_eq!(by_text[&t.text], t.id);
        }
    }

    // A byte-level model: ids are UTF-8 bytes, text goes in as its bytes.
    let bytes_ds = upload(
        &mut c,
        header("cafe-bytes", pb::Tokenizer::Byte),
        text.as_bytes(),
        7,
    )
    .await
    .unwrap();
    assert_eq!(bytes_ds.vocab_size, 256);
    assert_eq!(bytes_ds.token_count, text.len() as u64);
    assert_eq!(
        bytes_ds.preview,
        String::from_utf8_lossy(&text.as_bytes()[..64])
    );
    train(&mut c, job(&bytes_ds.id, "cafe-bytes", tiny(4), config)).await;
    let from_text = predict(&mut c, "cafe-bytes", vec![text_seq("é")], 3).await;
    let from_ids = predict(&mut c, "cafe-bytes", vec![ids_seq(vec![0xC3, 0xA9])], 3).await;
    assert_eq!(from_text, from_ids);
    let a = predict(&mut c, "cafe-bytes", vec![text_seq("a")], 256).await;
    let a_text = a[0].top.iter().find(|t| t.id == u32::from(b'a')).unwrap();
    assert_eq!(a_text.text, "a");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn char_model_beats_the_unigram_baseline_on_held_out_text() {
    const TRAIN: usize = 20_000;
    const HELD_OUT: usize = 90_000;
    const WINDOW: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    // Macbeth is ASCII: byte offsets are character offsets.
    assert!(MACBETH.is_ascii());
    let train_text = &MACBETH[..TRAIN];
    let held_out = &MACBETH[HELD_OUT..];

    let ds = upload(
        &mut c,
        header("macbeth-train", pb::Tokenizer::Char),
        train_text.as_bytes(),
        8192,
    )
    .await
    .unwrap();
    let started = Instant::now();
    let events = train(
        &mut c,
        job(
            &ds.id,
            "macbeth-char",
            pb::ModelSpec {
                embedding_dim: Some(8),
                window: Some(WINDOW as u32),
                layers: vec![layer(pb::Cell::Lstm, 32)],
                ..Default::default()
            },
            pb::TrainingConfig {
                epochs: Some(1),
                batch_size: Some(32),
                learning_rate: Some(0.01),
                seed: Some(1),
                ..Default::default()
            },
        ),
    )
    .await;
    let train_seconds = started.elapsed().as_secs_f64();

    // Held-out windows, scored by Predict with text in and text out.
    let starts: Vec<usize> = (0..held_out.len() - WINDOW).step_by(7).collect();
    let mut correct = 0usize;
    for batch in starts.chunks(512) {
        let sequences = batch
            .iter()
            .map(|&i| text_seq(&held_out[i..i + WINDOW]))
            .collect();
        let predictions = predict(&mut c, "macbeth-char", sequences, 1).await;
        for (&i, p) in batch.iter().zip(&predictions) {
            if p.top[0].text == held_out[i + WINDOW..i + WINDOW + 1] {
                correct += 1;
            }
        }
    }
    let model_accuracy = correct as f64 / starts.len() as f64;

    // The unigram baseline: always the training text's most frequent char.
    let mut counts: HashMap<char, usize> = HashMap::new();
    for ch in train_text.chars() {
        *counts.entry(ch).or_default() += 1;
    }
    let (&top, _) = counts.iter().max_by_key(|(ch, n)| (**n, **ch)).unwrap();
    let baseline = starts
        .iter()
        .filter(|&&i| held_out[i + WINDOW..].starts_with(top))
        .count() as f64
        / starts.len() as f64;
    println!(
        "char LSTM(32), window {WINDOW}, 1 epoch on {TRAIN} chars ({train_seconds:.1} s): \
         held-out accuracy {model_accuracy:.3} on {} windows; unigram baseline ({top:?}) {baseline:.3}; \
         final train accuracy {:.3}",
        starts.len(),
        epochs(&events).last().unwrap().accuracy
    );
    assert!(
        model_accuracy > baseline + 0.1,
        "model {model_accuracy:.3} vs unigram {baseline:.3}"
    );
    server.stop().await.unwrap();
}
