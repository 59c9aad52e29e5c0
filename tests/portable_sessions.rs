//! Portable sessions: the session lives in a signed token the client holds,
//! so it moves between servers that share the session key (and survives a
//! restart), token by token, with the answers of a session kept in one
//! server's memory and of Predict on the whole sequence. Altered, foreign,
//! mismatched, expired and orphaned tokens are refused with a clear status.
mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use lstmd::proto as pb;
use lstmd::server::RunningServer;
use tonic::Code;

const KEY: &str = "0123456789abcdef0123456789abcdef-shared-by-the-replicas";

fn seq(v: &[u32]) -> Option<pb::Sequence> {
    Some(pb::Sequence {
        ids: v.to_vec(),
        text: String::new(),
    })
}

/// A server on `data` signing with the key in `key_file`.
async fn server(data: &Path, key_file: &Path) -> RunningServer {
    let mut args = args(data);
    args.session_key_file = Some(key_file.to_path_buf());
    start_with(args).await
}

async fn open(c: &mut Clients, model: &str, whole_input: bool, portable: bool) -> pb::SessionInfo {
    c.predict
        .open_session(pb::OpenSessionRequest {
            model: model.into(),
            whole_input,
            portable,
            ..Default::default()
        })
        .await
        .expect("the session opens")
        .into_inner()
}

async fn feed(
    c: &mut Clients,
    id: &str,
    state: &[u8],
    tokens: &[u32],
) -> Result<pb::FeedSessionResponse, tonic::Status> {
    c.predict
        .feed_session(pb::FeedSessionRequest {
            session_id: id.into(),
            tokens: seq(tokens),
            top_k: Some(7),
            state: state.to_vec(),
        })
        .await
        .map(|r| r.into_inner())
}

async fn predict_whole(c: &mut Clients, model: &str, tokens: &[u32]) -> pb::Prediction {
    let r = c
        .predict
        .predict(pb::PredictRequest {
            model: model.into(),
            sequences: vec![seq(tokens).unwrap()],
            top_k: Some(7),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    r.predictions[0].clone()
}

fn same(a: &pb::Prediction, b: &pb::Prediction, tol: f64) -> bool {
    a.top.len() == b.top.len()
        && a.top
            .iter()
            .zip(&b.top)
            .all(|(x, y)| x.id == y.id && (x.probability - y.probability).abs() <= tol)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_portable_session_moves_between_servers_and_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("session.key");
    std::fs::write(&key, format!("{KEY}\n")).unwrap();
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    let a = server(&a_dir, &key).await;
    let mut ca = connect(&a).await;
    train_on_cycle(&mut ca, "deep", "deep", 4).await;
    a.stop().await.unwrap();
    // Two replicas with the same models: a copy of the data dir.
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(&a_dir)
        .arg(&b_dir)
        .status();
    assert!(copied.unwrap().success());
    let a = server(&a_dir, &key).await;
    let b = server(&b_dir, &key).await;
    let mut ca = connect(&a).await;
    let mut cb = connect(&b).await;

    let tokens: Vec<u32> = (0..15).map(|i| (i * 3 + 1) % 7).collect();
    for whole_input in [false, true] {
        // The reference: a session in A's memory, fed the same tokens.
        let kept = open(&mut ca, "deep", whole_input, false).await;
        assert!(kept.state.is_empty());
        let portable = open(&mut cb, "deep", whole_input, true).await;
        assert!(!portable.state.is_empty());
        let mut state = portable.state.clone();
        for (i, &t) in tokens.iter().enumerate() {
            let expected = feed(&mut ca, &kept.session_id, &[], &[t]).await.unwrap();
            // Token by token, alternating replicas; the id may be left out.
            let (c, id) = match i % 2 {
                0 => (&mut ca, portable.session_id.as_str()),
                _ => (&mut cb, ""),
            };
            let got = feed(c, id, &state, &[t]).await.unwrap();
            assert_eq!(got.tokens_seen, i as u64 + 1);
            let expected = expected.prediction.unwrap();
            let got_prediction = got.prediction.unwrap();
            assert!(
                same(&got_prediction, &expected, 0.0),
                "token {i} (whole_input {whole_input}): {got_prediction:?} vs {expected:?}"
            );
            state = got.state;
        }
        if !whole_input {
            // The last window of tokens: what Predict answers on them all.
            let last = feed(&mut cb, "", &state, &[tokens[0]]).await.unwrap();
            let mut longer = tokens.clone();
            longer.push(tokens[0]);
            let whole_longer = predict_whole(&mut ca, "deep", &longer).await;
            assert!(same(&last.prediction.unwrap(), &whole_longer, 1e-6));
        }
        // Nothing is kept on the server: the same state fed twice answers
        // the same.
        let once = feed(&mut cb, "", &state, &[2]).await.unwrap();
        let twice = feed(&mut cb, "", &state, &[2]).await.unwrap();
        assert_eq!(once.prediction, twice.prediction);
        assert_eq!(once.tokens_seen, twice.tokens_seen);
    }
    // A restart of a replica (same key) takes a state on.
    b.stop().await.unwrap();
    let b = server(&b_dir, &key).await;
    let mut cb = connect(&b).await;
    let session = open(&mut ca, "deep", true, true).await;
    let fed = feed(&mut ca, "", &session.state, &[1, 2, 3]).await.unwrap();
    let after_restart = feed(&mut cb, "", &fed.state, &[4]).await.unwrap();
    let in_one_go = feed(&mut ca, "", &session.state, &[1, 2, 3, 4])
        .await
        .unwrap();
    assert_eq!(after_restart.prediction, in_one_go.prediction);
    assert_eq!(after_restart.tokens_seen, 4);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn altered_foreign_mismatched_expired_and_orphaned_tokens_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("session.key");
    std::fs::write(&key, KEY).unwrap();
    let mut a_args = args(&dir.path().join("a"));
    a_args.session_key_file = Some(key.clone());
    a_args.limits.session_idle_timeout = 2;
    let a = start_with(a_args).await;
    let mut c = connect(&a).await;
    train_on_cycle(&mut c, "deep", "deep", 4).await;
    let session = open(&mut c, "deep", true, true).await;
    let state = feed(&mut c, "", &session.state, &[1, 2])
        .await
        .unwrap()
        .state;

    let invalid = |status: tonic::Status, needle: &str| {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(needle), "{status:?}");
    };
    let mut altered = state.clone();
    let middle = altered.len() / 2;
    altered[middle] ^= 1;
    invalid(
        feed(&mut c, "", &altered, &[3]).await.unwrap_err(),
        "signature",
    );
    invalid(
        feed(&mut c, "", b"not a token", &[3]).await.unwrap_err(),
        "state",
    );
    let other = open(&mut c, "deep", true, true).await;
    invalid(
        feed(&mut c, &other.session_id, &state, &[3])
            .await
            .unwrap_err(),
        "session_id",
    );
    // A server with another key (here: none given, a random one).
    let b = start(&dir.path().join("b")).await;
    let mut cb = connect(&b).await;
    invalid(
        feed(&mut cb, "", &state, &[3]).await.unwrap_err(),
        "another session key",
    );
    b.stop().await.unwrap();

    // Past the idle timeout a token has expired, as an idle session does.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let expired = feed(&mut c, "", &state, &[3]).await.unwrap_err();
    assert_eq!(expired.code(), Code::NotFound, "{expired:?}");
    // A deleted model ends its portable sessions too.
    let fresh = open(&mut c, "deep", true, true).await;
    c.models
        .delete_model(pb::DeleteModelRequest {
            name: "deep".into(),
            version: 0,
        })
        .await
        .unwrap();
    let orphan = feed(&mut c, "", &fresh.state, &[3]).await.unwrap_err();
    assert_eq!(orphan.code(), Code::NotFound, "{orphan:?}");
    // A key file that is too short stops the server at start.
    std::fs::write(&key, "short").unwrap();
    let mut short = args(&dir.path().join("c"));
    short.session_key_file = Some(key);
    let refused = lstmd::server::start(short, std::future::pending()).await;
    assert!(refused
        .err()
        .unwrap()
        .to_string()
        .contains("at least 32 bytes"));
    a.stop().await.unwrap();
}
