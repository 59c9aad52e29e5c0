//! An UploadDataset stream commits only when the client ended it normally:
//! every other way a stream can end (the client cancels, its deadline
//! expires, it resets the stream with any code, the connection drops, the
//! server shuts down) leaves no dataset and no staged file. Each cut comes
//! after the server has taken in a megabyte of whole, valid messages, so
//! that only the way the stream ended decides.
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use lstmd::proto as pb;
use pb::upload_dataset_request::Part;
use prost::Message;

const CHUNK: usize = 256 << 10;
const CHUNKS: usize = 8;

fn header_msg(name: &str) -> pb::UploadDatasetRequest {
    pb::UploadDatasetRequest {
        part: Some(Part::Header(pb::UploadDatasetHeader {
            name: name.into(),
            tokenizer: pb::Tokenizer::Ids as i32,
            vocab_size: 256,
            ..Default::default()
        })),
    }
}

/// Whole chunks of valid ids (each < 256, 4 bytes each).
fn chunk_msgs() -> Vec<pb::UploadDatasetRequest> {
    (0..CHUNKS)
        .map(|c| pb::UploadDatasetRequest {
            part: Some(Part::Chunk(
                (0..CHUNK / 4)
                    .flat_map(|i| ((c * CHUNK + i) as u32 % 256).to_le_bytes())
                    .collect(),
            )),
        })
        .collect()
}

fn staged_bytes(data: &Path) -> u64 {
    std::fs::read_dir(data.join("staging"))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn staged_files(data: &Path) -> usize {
    std::fs::read_dir(data.join("staging"))
        .map(|entries| entries.count())
        .unwrap_or(0)
}

/// Waits (up to 20 s) until `cond` holds.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The server has written a megabyte of the upload's tokens: it has taken
/// in whole messages, which a commit at this point would keep.
async fn wait_until_staged(data: &Path) {
    eventually("the server staged a megabyte of the upload", || {
        staged_bytes(data) >= 1 << 20
    })
    .await;
}

async fn dataset_names(c: &mut Clients) -> Vec<String> {
    c.datasets
        .list_datasets(pb::ListDatasetsRequest {})
        .await
        .expect("the server stays healthy")
        .into_inner()
        .datasets
        .into_iter()
        .map(|d| d.name)
        .collect()
}

/// An UploadDataset call on a raw HTTP/2 connection: frames, resets and
/// the TCP connection are the test's to control.
struct RawUpload {
    send: h2::SendStream<Bytes>,
    response: h2::client::ResponseFuture,
    _client: h2::client::SendRequest<Bytes>,
    tcp: std::net::TcpStream,
}

fn grpc_frame(m: &impl Message) -> Bytes {
    let body = m.encode_to_vec();
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(0);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out.into()
}

async fn raw_upload(addr: std::net::SocketAddr, name: &str) -> RawUpload {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let std_tcp = tcp.into_std().unwrap();
    let cut = std_tcp.try_clone().unwrap();
    let tcp = tokio::net::TcpStream::from_std(std_tcp).unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.unwrap();
    let request = http::Request::post(format!(
        "http://{addr}/lstmd.v1.DatasetService/UploadDataset"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .unwrap();
    let (response, mut send) = client.send_request(request, false).unwrap();
    send.send_data(grpc_frame(&header_msg(name)), false)
        .unwrap();
    for m in chunk_msgs() {
        send.send_data(grpc_frame(&m), false).unwrap();
    }
    RawUpload {
        send,
        response,
        _client: client,
        tcp: cut,
    }
}

/// The grpc-status of a finished raw call (from the headers of a
/// trailers-only answer, else the trailers).
async fn raw_status(call: RawUpload) -> Option<i32> {
    let response = call.response.await.ok()?;
    let code = |h: &http::HeaderMap| {
        h.get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    };
    if let Some(c) = code(response.headers()) {
        return Some(c);
    }
    let mut body = response.into_body();
    while let Some(data) = body.data().await {
        data.ok()?;
    }
    body.trailers().await.ok()?.as_ref().and_then(code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_stream_the_client_ended_normally_is_committed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let server = start(data).await;
    let mut c = connect(&server).await;

    // The control: the same raw stream, ended with END_STREAM, commits.
    let mut call = raw_upload(server.addr, "ended-normally").await;
    call.send.send_data(Bytes::new(), true).unwrap();
    assert_eq!(raw_status(call).await, Some(0));
    assert_eq!(dataset_names(&mut c).await, vec!["ended-normally"]);

    // The client cancels: its call future is dropped (RST_STREAM CANCEL).
    let (tx, rx) = tokio::sync::mpsc::channel(CHUNKS + 1);
    let mut client = c.datasets.clone();
    let cancelled = tokio::spawn(async move {
        client
            .upload_dataset(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    tx.send(header_msg("cancelled")).await.unwrap();
    for m in chunk_msgs() {
        tx.send(m).await.unwrap();
    }
    wait_until_staged(data).await;
    cancelled.abort();
    assert!(cancelled.await.unwrap_err().is_cancelled());
    eventually("the cancelled upload's files are gone", || {
        staged_files(data) == 0
    })
    .await;
    drop(tx);

    // The client's deadline expires while its stream is still open: the
    // client gives up at the deadline, as gRPC clients do, and the server's
    // own timer runs out too.
    let (tx, rx) = tokio::sync::mpsc::channel(CHUNKS + 1);
    let mut client = c.datasets.clone();
    let limit = Duration::from_secs(3);
    let late = tokio::spawn(async move {
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        request.set_timeout(limit);
        tokio::time::timeout(limit, client.upload_dataset(request)).await
    });
    tx.send(header_msg("past-its-deadline")).await.unwrap();
    for m in chunk_msgs() {
        tx.send(m).await.unwrap();
    }
    wait_until_staged(data).await;
    match late.await.unwrap() {
        Err(_elapsed) => {}
        Ok(result) => {
            // The server's DEADLINE_EXCEEDED, or the client's own timer.
            let status = result.expect_err("an upload past its deadline fails");
            assert!(
                matches!(
                    status.code(),
                    tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
                ),
                "{status:?}"
            );
        }
    }
    eventually("the late upload's files are gone", || {
        staged_files(data) == 0
    })
    .await;
    drop(tx);

    // RST_STREAM with each code, NO_ERROR included (which a server reads as
    // the end of the request body).
    for reason in [
        h2::Reason::CANCEL,
        h2::Reason::NO_ERROR,
        h2::Reason::INTERNAL_ERROR,
    ] {
        let mut call = raw_upload(server.addr, "reset").await;
        wait_until_staged(data).await;
        call.send.send_reset(reason);
        assert_ne!(raw_status(call).await, Some(0), "{reason:?}");
        eventually("the reset upload's files are gone", || {
            staged_files(data) == 0
        })
        .await;
    }

    // The connection drops.
    let call = raw_upload(server.addr, "dropped").await;
    wait_until_staged(data).await;
    call.tcp.shutdown(std::net::Shutdown::Both).unwrap();
    assert_ne!(raw_status(call).await, Some(0));
    eventually("the dropped upload's files are gone", || {
        staged_files(data) == 0
    })
    .await;

    assert_eq!(dataset_names(&mut c).await, vec!["ended-normally"]);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_open_when_the_server_shuts_down_is_not_committed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut bin = Binary::start(&data, &["--shutdown-grace", "1"]);
    let c = bin.connect().await;
    let (tx, rx) = tokio::sync::mpsc::channel(CHUNKS + 1);
    let mut client = c.datasets.clone();
    let call = tokio::spawn(async move {
        client
            .upload_dataset(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    tx.send(header_msg("open-at-shutdown")).await.unwrap();
    for m in chunk_msgs() {
        tx.send(m).await.unwrap();
    }
    wait_until_staged(&data).await;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &bin.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // The open upload must not hold the process: the server ends it at
    // once (20 s is far past the 1 s grace; only a hang gets there).
    let exit = bin
        .wait_exit(Duration::from_secs(20))
        .expect("the server exits with an upload open");
    assert!(exit.success(), "the server exits cleanly: {exit:?}");
    let refused = call
        .await
        .unwrap()
        .expect_err("an upload cut by the shutdown fails");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("shutting down"), "{refused:?}");
    drop(tx);
    drop(bin);

    let bin = Binary::start(&data, &[]);
    let mut c = bin.connect().await;
    assert!(dataset_names(&mut c).await.is_empty());
    assert_eq!(staged_files(&data), 0);
}
