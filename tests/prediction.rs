//! Prediction: batched, unbatched and session answers agree; sessions are
//! isolated and expire; dynamic batching merges calls; overload is refused
//! loudly; Generate samples reproducibly.
mod common;

use std::time::Duration;

use common::*;
use lstmd::proto as pb;
use tonic::Code;

fn ids(v: &[u32]) -> pb::Sequence {
    pb::Sequence {
        ids: v.to_vec(),
        text: String::new(),
    }
}

fn predict(model: &str, sequences: &[&[u32]], k: u32) -> pb::PredictRequest {
    pb::PredictRequest {
        model: model.into(),
        version: 0,
        sequences: sequences.iter().map(|s| ids(s)).collect(),
        top_k: Some(k),
        ..Default::default()
    }
}

async fn trained(c: &mut Clients, name: &str, preset: &str) {
    train_on_cycle(c, name, preset, 6).await;
}

fn assert_close(a: &pb::Prediction, b: &pb::Prediction, tol: f64) {
    assert_eq!(a.top.len(), b.top.len());
    for (x, y) in a.top.iter().zip(&b.top) {
        assert_eq!(x.id, y.id, "{a:?} vs {b:?}");
        assert!(
            (x.probability - y.probability).abs() <= tol,
            "{a:?} vs {b:?}"
        );
    }
}

async fn feed(
    c: &mut Clients,
    session: &str,
    tokens: &[u32],
    k: u32,
) -> Result<pb::FeedSessionResponse, tonic::Status> {
    c.predict
        .feed_session(pb::FeedSessionRequest {
            session_id: session.into(),
            tokens: Some(ids(tokens)),
            top_k: Some(k),
            state: Vec::new(),
        })
        .await
        .map(|r| r.into_inner())
}

async fn open(c: &mut Clients, model: &str) -> Result<String, tonic::Status> {
    c.predict
        .open_session(pb::OpenSessionRequest {
            model: model.into(),
            version: 0,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().session_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_unbatched_and_session_answers_agree() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    trained(&mut c, "m", "deep").await;
    let seqs: Vec<&[u32]> = vec![&[1, 2, 3, 4], &[6], &[3, 4, 5, 6, 0, 1, 2, 3, 4], &[5, 6]];
    let batched = c
        .predict
        .predict(predict("m", &seqs, 7))
        .await
        .unwrap()
        .into_inner();
    for (i, s) in seqs.iter().enumerate() {
        let alone = c
            .predict
            .predict(predict("m", &[s], 7))
            .await
            .unwrap()
            .into_inner();
        assert_close(&alone.predictions[0], &batched.predictions[i], 1e-6);
        // A session fed the same tokens in two pieces ends in the same place.
        let session = open(&mut c, "m").await.unwrap();
        let cut = s.len() / 2;
        if cut > 0 {
            let first = feed(&mut c, &session, &s[..cut], 7).await.unwrap();
            let prefix = c
                .predict
                .predict(predict("m", &[&s[..cut]], 7))
                .await
                .unwrap()
                .into_inner();
            assert_close(
                first.prediction.as_ref().unwrap(),
                &prefix.predictions[0],
                1e-6,
            );
        }
        let last = feed(&mut c, &session, &s[cut..], 7).await.unwrap();
        assert_eq!(last.tokens_seen, s.len() as u64);
        assert_close(
            last.prediction.as_ref().unwrap(),
            &batched.predictions[i],
            1e-6,
        );
        c.predict
            .close_session(pb::CloseSessionRequest {
                session_id: session.clone(),
            })
            .await
            .unwrap();
        let closed = feed(&mut c, &session, &[1], 3).await.unwrap_err();
        assert_eq!(closed.code(), Code::NotFound);
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sessions_never_see_each_others_state() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    trained(&mut c, "m", "deep").await;
    let mut tasks = Vec::new();
    for start in 0..8u32 {
        let mut c = connect(&server).await;
        tasks.push(tokio::spawn(async move {
            let tokens: Vec<u32> = (start..start + 12).map(|t| (t * 3) % 7).collect();
            let session = open(&mut c, "m").await.unwrap();
            let mut last = None;
            for piece in tokens.chunks(3) {
                last = Some(feed(&mut c, &session, piece, 7).await.unwrap());
                tokio::task::yield_now().await;
            }
            let whole = c
                .predict
                .predict(predict("m", &[&tokens], 7))
                .await
                .unwrap()
                .into_inner();
            assert_close(
                last.unwrap().prediction.as_ref().unwrap(),
                &whole.predictions[0],
                1e-6,
            );
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_expire_are_bounded_and_refuse_whole_input_on_bidirectional_models() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = args(dir.path());
    args.limits.session_idle_timeout = 1;
    args.limits.max_sessions = 2;
    let server = start_with(args).await;
    let mut c = connect(&server).await;
    trained(&mut c, "m", "deep").await;
    trained(&mut c, "bi", "bidirectional").await;
    let a = open(&mut c, "m").await.unwrap();
    let _b = open(&mut c, "m").await.unwrap();
    let full = open(&mut c, "m").await.unwrap_err();
    assert_eq!(full.code(), Code::ResourceExhausted, "{full:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let expired = feed(&mut c, &a, &[1, 2], 3).await.unwrap_err();
    assert_eq!(expired.code(), Code::NotFound, "{expired:?}");
    // Expired sessions free their places.
    open(&mut c, "m").await.unwrap();
    // A bidirectional model cannot carry a state over the whole input; by
    // default its session keeps the last window of tokens instead.
    let bi = c
        .predict
        .open_session(pb::OpenSessionRequest {
            model: "bi".into(),
            whole_input: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bi.code(), Code::FailedPrecondition);
    assert!(bi.message().contains("bidirectional"), "{bi:?}");
    let windowed = open(&mut c, "bi").await.unwrap();
    feed(&mut c, &windowed, &[1, 2], 3).await.unwrap();
    let unknown = feed(&mut c, "sess-nope", &[1], 3).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_are_merged_into_fewer_forward_passes() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = args(dir.path());
    args.limits.max_batch_delay = 200_000; // 200 ms to gather a batch
    let server = start_with(args).await;
    let mut c = connect(&server).await;
    trained(&mut c, "m", "deep").await;
    let alone = c
        .predict
        .predict(predict("m", &[&[1, 2, 3, 4]], 3))
        .await
        .unwrap()
        .into_inner();
    let mut calls = Vec::new();
    for _ in 0..16 {
        let mut c = connect(&server).await;
        calls.push(tokio::spawn(async move {
            c.predict
                .predict(predict("m", &[&[1, 2, 3, 4]], 3))
                .await
                .unwrap()
                .into_inner()
        }));
    }
    for call in calls {
        // Batched matmuls may round differently in the last bits.
        assert_close(
            &call.await.unwrap().predictions[0],
            &alone.predictions[0],
            1e-6,
        );
    }
    let model = server.predictor().model("m", None).await.unwrap();
    // 1 pass for the first call, then 16 calls in far fewer than 16.
    let passes = model.batcher.forward_passes();
    assert!(passes <= 1 + 4, "{passes} forward passes for 17 calls");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_refused_loudly_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = args(dir.path());
    args.limits.max_predict_queue = 2;
    args.limits.max_batch = 1;
    let server = start_with(args).await;
    let mut c = connect(&server).await;
    trained(&mut c, "m", "deep").await;
    let expected = c
        .predict
        .predict(predict("m", &[&[2, 3, 4, 5]], 2))
        .await
        .unwrap()
        .into_inner();
    let mut calls = Vec::new();
    for _ in 0..64 {
        let mut c = c.predict.clone();
        calls.push(tokio::spawn(async move {
            c.predict(predict("m", &[&[2, 3, 4, 5]], 2)).await
        }));
    }
    let (mut ok, mut refused) = (0, 0);
    for call in calls {
        match call.await.unwrap() {
            Ok(r) => {
                assert_eq!(r.into_inner().predictions, expected.predictions);
                ok += 1;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(status.message().contains("queue"), "{status:?}");
                refused += 1;
            }
        }
    }
    assert_eq!(ok + refused, 64);
    assert!(
        refused > 0,
        "a queue of 2 must refuse some of 64 simultaneous calls"
    );
    assert!(ok > 0);
    server.stop().await.unwrap();
}

async fn generate(
    c: &mut Clients,
    request: pb::GenerateRequest,
) -> Result<Vec<pb::GenerateResponse>, tonic::Status> {
    let mut stream = c.predict.generate(request).await?.into_inner();
    let mut out = Vec::new();
    while let Some(t) = stream.message().await? {
        out.push(t);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_follows_the_pattern_and_is_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    trained(&mut c, "m", "deep").await;
    trained(&mut c, "bi", "bidirectional").await;
    let request =
        |model: &str, temperature: Option<f32>, seed: u64, stop: Vec<u32>| pb::GenerateRequest {
            model: model.into(),
            prompt: Some(ids(&[0, 1, 2, 3])),
            max_tokens: 10,
            temperature,
            seed,
            stop_ids: stop,
            ..Default::default()
        };
    // Greedy: the pattern's next token first, then each token is what
    // Predict ranks first on the sequence so far.
    let greedy = generate(&mut c, request("m", Some(0.0), 0, vec![]))
        .await
        .unwrap();
    let tokens: Vec<u32> = greedy
        .iter()
        .map(|t| t.token.as_ref().unwrap().id)
        .collect();
    assert_eq!(tokens[0], 4);
    let mut sequence = vec![0, 1, 2, 3];
    for (t, g) in tokens.iter().zip(&greedy) {
        let p = c
            .predict
            .predict(predict("m", &[&sequence], 1))
            .await
            .unwrap()
            .into_inner();
        let top = &p.predictions[0].top[0];
        assert_eq!(top.id, *t, "after {sequence:?}");
        assert!((top.probability - g.token.as_ref().unwrap().probability).abs() < 1e-6);
        sequence.push(*t);
    }
    assert_eq!(
        greedy.iter().map(|t| t.index).collect::<Vec<_>>(),
        (0..10).collect::<Vec<_>>()
    );
    // A stop id ends the stream after it.
    let stop = tokens[2];
    let until = tokens.iter().position(|&t| t == stop).unwrap() + 1;
    let stopped = generate(&mut c, request("m", Some(0.0), 0, vec![stop]))
        .await
        .unwrap();
    assert_eq!(
        stopped
            .iter()
            .map(|t| t.token.as_ref().unwrap().id)
            .collect::<Vec<_>>(),
        tokens[..until]
    );
    // Sampling: same seed, same tokens; hot sampling differs across seeds.
    let hot = |seed| request("m", Some(5.0), seed, vec![]);
    let a = generate(&mut c, hot(1)).await.unwrap();
    let b = generate(&mut c, hot(1)).await.unwrap();
    assert_eq!(a, b);
    let mut differs = false;
    for seed in 2..6 {
        differs |= generate(&mut c, hot(seed)).await.unwrap() != a;
    }
    assert!(differs);
    // Bidirectional models generate too (re-reading the sequence).
    let bi = generate(&mut c, request("bi", Some(0.0), 0, vec![]))
        .await
        .unwrap();
    assert_eq!(bi.len(), 10);
    // Bad requests name the field.
    let mut zero = request("m", None, 0, vec![]);
    zero.max_tokens = 0;
    let err = generate(&mut c, zero).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("max_tokens"), "{err:?}");
    let err = generate(&mut c, request("m", Some(-1.0), 0, vec![]))
        .await
        .unwrap_err();
    assert!(err.message().contains("temperature"), "{err:?}");
    let err = generate(&mut c, request("m", None, 0, vec![99]))
        .await
        .unwrap_err();
    assert!(err.message().contains("stop_ids[0]"), "{err:?}");
    let mut k = request("m", None, 0, vec![]);
    k.top_k = 8;
    let err = generate(&mut c, k).await.unwrap_err();
    assert!(err.message().contains("top_k"), "{err:?}");
    let err = c
        .predict
        .predict(predict("m", &[&[1]], 8))
        .await
        .unwrap_err();
    assert!(
        err.message().contains("top_k must be 1..=7, got 8"),
        "{err:?}"
    );
    server.stop().await.unwrap();
}
