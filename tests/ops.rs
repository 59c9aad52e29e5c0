//! Operability: TLS and mutual TLS with certificates made here, bearer-token
//! auth (and its reload), health open without a token, Prometheus metrics,
//! request ids, deadlines, JSON logs; an unusable `--device` stops the start.
mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use common::pki::make_pki;
use common::*;
use lstmd::proto as pb;
use lstmd::proto::model_service_client::ModelServiceClient;
use lstmd::proto::prediction_service_client::PredictionServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Request};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

async fn tls_channel(
    addr: SocketAddr,
    tls: ClientTlsConfig,
) -> Result<Channel, tonic::transport::Error> {
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
}

async fn list_models(channel: Channel) -> Result<pb::ListModelsResponse, tonic::Status> {
    ModelServiceClient::new(channel)
        .list_models(pb::ListModelsRequest {})
        .await
        .map(|r| r.into_inner())
}

async fn health(channel: Channel) -> i32 {
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health answers")
        .into_inner()
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_a_certificate_made_in_the_test() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let mut args = args(&dir.path().join("data"));
    args.security.tls_cert = Some(pki.server_cert.clone());
    args.security.tls_key = Some(pki.server_key.clone());
    let server = start_with(args).await;

    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca))
        .domain_name("localhost");
    let channel = tls_channel(server.addr, tls).await.expect("TLS handshake");
    assert_eq!(list_models(channel.clone()).await.unwrap().models.len(), 0);
    assert_eq!(health(channel).await, 1);

    // A plaintext client gets nothing from a TLS port.
    let plain = Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await;
    if let Ok(plain) = plain {
        assert!(list_models(plain).await.is_err());
    }
    // Nor does a client that does not trust the CA.
    let other = tempfile::tempdir().unwrap();
    let stranger = make_pki(other.path());
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&stranger.ca))
        .domain_name("localhost");
    if let Ok(channel) = tls_channel(server.addr, tls).await {
        assert!(list_models(channel).await.is_err());
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_tls_or_token_files_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let start = |cert: &Path, key: &Path, tokens: Option<&Path>| {
        let mut args = args(&dir.path().join("data"));
        args.security.tls_cert = Some(cert.to_path_buf());
        args.security.tls_key = Some(key.to_path_buf());
        args.security.auth_token_file = tokens.map(Path::to_path_buf);
        lstmd::server::start(args, std::future::pending())
    };
    let e = start(&garbage, &pki.server_key, None).await.err().unwrap();
    assert!(format!("{e:#}").contains("--tls"), "{e:#}");
    let e = start(&pki.server_cert, &garbage, None).await.err().unwrap();
    assert!(format!("{e:#}").contains("--tls"), "{e:#}");
    let missing = dir.path().join("missing.pem");
    let e = start(&missing, &pki.server_key, None).await.err().unwrap();
    assert!(format!("{e:#}").contains("missing.pem"), "{e:#}");
    let empty = dir.path().join("tokens");
    std::fs::write(&empty, "# nobody yet\n").unwrap();
    let e = start(&pki.server_cert, &pki.server_key, Some(&empty))
        .await
        .err()
        .unwrap();
    assert!(format!("{e:#}").contains("holds no token"), "{e:#}");
}

/// `--device cuda` where CUDA cannot be used (a build without the `cuda`
/// feature, or no GPU) stops the start with a message that says why, before
/// anything listens: health never reports SERVING for it.
#[tokio::test]
async fn an_unusable_device_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = args(&dir.path().join("data"));
    a.device = "cuda:0".into();
    let e = lstmd::server::start(a, std::future::pending())
        .await
        .err()
        .unwrap();
    let said = format!("{e:#}");
    assert!(
        said.contains("--device cuda:0")
            && (said.contains("`cuda` feature") || said.contains("cannot be used")),
        "{said}"
    );
    // The binary exits at once with that message and a failure status.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lstmd"))
        .args(["serve", "--device", "cuda", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir.path().join("bin-data"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "lstmd did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("--device cuda:0"), "{stderr}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nothing listened"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refuses_a_client_without_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let mut args = args(&dir.path().join("data"));
    args.security.tls_cert = Some(pki.server_cert.clone());
    args.security.tls_key = Some(pki.server_key.clone());
    args.security.tls_client_ca = Some(pki.ca_file.clone());
    // Kubernetes' probes speak plaintext: they get health alone, apart.
    args.health_listen = Some("127.0.0.1:0".parse().unwrap());
    let server = start_with(args).await;

    let anonymous = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca))
        .domain_name("localhost");
    // The handshake or the first call fails (with TLS 1.3 the server checks
    // the client's certificate after the client considers itself connected).
    if let Ok(channel) = tls_channel(server.addr, anonymous).await {
        let refused = list_models(channel).await;
        assert!(refused.is_err(), "{refused:?}");
    }

    let with_cert = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca))
        .identity(Identity::from_pem(&pki.client_cert, &pki.client_key))
        .domain_name("localhost");
    let channel = tls_channel(server.addr, with_cert)
        .await
        .expect("mTLS handshake");
    assert!(list_models(channel).await.is_ok());

    let probe = Channel::from_shared(format!("http://{}", server.health_addr.unwrap()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    assert_eq!(health(probe.clone()).await, 1);
    // That listener serves nothing but health.
    let only_health = list_models(probe).await.unwrap_err();
    assert_eq!(only_health.code(), Code::Unimplemented, "{only_health:?}");
    server.stop().await.unwrap();
}

fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_needs_a_listed_token_and_follows_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "# ops team\n\nfirst-token\nsecond-token\n").unwrap();
    let mut args = args(&dir.path().join("data"));
    args.security.auth_token_file = Some(tokens.clone());
    let server = start_with(args).await;
    let c = connect(&server).await;
    let mut models = c.models.clone();

    let none = models
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap_err();
    assert_eq!(none.code(), Code::Unauthenticated, "{none:?}");
    let wrong = models
        .list_models(with_token(pb::ListModelsRequest {}, "first-tokeN"))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    assert!(!wrong.message().contains("first-tokeN"), "{wrong:?}");
    let mut basic = Request::new(pb::ListModelsRequest {});
    basic
        .metadata_mut()
        .insert("authorization", "Basic Zmlyc3QtdG9rZW4=".parse().unwrap());
    assert_eq!(
        models.list_models(basic).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    for token in ["first-token", "second-token"] {
        models
            .list_models(with_token(pb::ListModelsRequest {}, token))
            .await
            .expect("a listed token is accepted");
    }
    // Every lstmd service is behind it, streams too.
    let mut jobs = c.jobs.clone();
    let watch = jobs
        .watch_job(pb::WatchJobRequest { id: "job-x".into() })
        .await
        .unwrap_err();
    assert_eq!(watch.code(), Code::Unauthenticated);
    let predict = c
        .predict
        .clone()
        .predict(pb::PredictRequest::default())
        .await
        .unwrap_err();
    assert_eq!(predict.code(), Code::Unauthenticated);

    // Health and reflection stay open.
    assert_eq!(health(c.channel.clone()).await, 1);
    {
        use tonic_reflection::pb::v1alpha::{
            server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, ServerReflectionRequest,
        };
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = ServerReflectionClient::new(c.channel.clone())
            .server_reflection_info(tokio_stream::iter(vec![request]))
            .await
            .expect("reflection needs no token")
            .into_inner();
        assert!(stream.message().await.unwrap().is_some());
    }

    // Rotate: a new file replaces the old tokens, without a restart.
    let next = dir.path().join("tokens.next");
    std::fs::write(&next, "third-token\n").unwrap();
    std::fs::rename(&next, &tokens).unwrap();
    let mut accepted = false;
    for _ in 0..50 {
        if models
            .list_models(with_token(pb::ListModelsRequest {}, "third-token"))
            .await
            .is_ok()
        {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(accepted, "the new token is accepted within 5 s");
    let old = models
        .list_models(with_token(pb::ListModelsRequest {}, "first-token"))
        .await
        .unwrap_err();
    assert_eq!(old.code(), Code::Unauthenticated);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_calls_by_rpc_and_code() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = args(dir.path());
    args.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let server = start_with(args).await;
    let c = connect(&server).await;

    let before = scrape(&server).await;
    let ok = [("rpc", "lstmd.v1.ModelService/ListModels"), ("code", "OK")];
    let not_found = [
        ("rpc", "lstmd.v1.ModelService/GetModel"),
        ("code", "NOT_FOUND"),
    ];
    let latency = [("rpc", "lstmd.v1.ModelService/ListModels")];
    for _ in 0..3 {
        c.models
            .clone()
            .list_models(pb::ListModelsRequest {})
            .await
            .unwrap();
    }
    let missing = c
        .models
        .clone()
        .get_model(pb::GetModelRequest {
            name: "absent".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let after = scrape(&server).await;

    let total = "lstmd_grpc_requests_total";
    assert!(
        metric(&after, total, &ok) >= metric(&before, total, &ok) + 3.0,
        "{after}"
    );
    assert!(metric(&after, total, &not_found) >= metric(&before, total, &not_found) + 1.0);
    let count = "lstmd_grpc_request_duration_seconds_count";
    assert!(metric(&after, count, &latency) >= metric(&before, count, &latency) + 3.0);
    assert!(
        after.contains("lstmd_grpc_request_duration_seconds_bucket{rpc=\"lstmd.v1.ModelService/ListModels\",le=\"0.005\"}"),
        "latency is a Prometheus histogram with buckets: {after}"
    );
    // Registered before anything happens.
    for name in [
        "lstmd_sessions_open",
        "lstmd_model_cache_hits_total",
        "lstmd_model_cache_misses_total",
        "lstmd_model_cache_loaded_bytes",
    ] {
        assert!(
            after.lines().any(|l| l.starts_with(name)),
            "{name} missing: {after}"
        );
    }
    assert_eq!(metric(&after, "lstmd_sessions_open", &[]), 0.0);
    assert!(after.contains("lstmd_jobs{state=\"queued\"}"), "{after}");
    assert!(
        after.contains("# HELP lstmd_grpc_requests_total"),
        "{after}"
    );

    let (status, _) = http_get(server.metrics_addr.unwrap(), "/other").await;
    assert_eq!(status, 404);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_kept_or_made_and_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let c = connect(&server).await;
    let mut request = Request::new(pb::ListModelsRequest {});
    request
        .metadata_mut()
        .insert("x-request-id", "req-42".parse().unwrap());
    let response = c.models.clone().list_models(request).await.unwrap();
    assert_eq!(response.metadata().get("x-request-id").unwrap(), "req-42");
    let response = c
        .models
        .clone()
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap();
    let made = response.metadata().get("x-request-id").unwrap();
    assert_eq!(made.len(), 36, "a UUID: {made:?}");
    server.stop().await.unwrap();
}

/// A gRPC connection without tonic's client-side deadline: tonic's
/// `Channel` enforces the `grpc-timeout` it sends by itself, which would
/// hide what the server answers.
#[derive(Clone)]
struct RawHttp2(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

impl tower::Service<http::Request<tonic::body::Body>> for RawHttp2 {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, hyper::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(request))
    }
}

async fn raw_http2(addr: SocketAddr) -> RawHttp2 {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    RawHttp2(sender)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predict_metrics_and_deadline_exceeded() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = args(dir.path());
    args.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let server = start_with(args).await;
    let mut c = connect(&server).await;
    let ds = ids_dataset(&mut c, "cycle5", cycle(5, 200), 5).await;
    let events = train(
        &mut c,
        pb::CreateTrainingJobRequest {
            model_name: "small".into(),
            dataset_id: ds.id.clone(),
            spec: spec("deep", 4),
            config: Some(pb::TrainingConfig {
                epochs: Some(1),
                batch_size: Some(32),
                seed: Some(1),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(finished(&events).state, pb::JobState::Succeeded as i32);

    let before = scrape(&server).await;
    let predict = |n: usize, len: usize| pb::PredictRequest {
        model: "small".into(),
        sequences: (0..n)
            .map(|i| pb::Sequence {
                ids: cycle(5, len + i % 3),
                text: String::new(),
            })
            .collect(),
        ..Default::default()
    };
    for _ in 0..2 {
        c.predict.clone().predict(predict(7, 4)).await.unwrap();
    }
    let after = scrape(&server).await;
    let grew = |name: &str, by: f64| {
        let (a, b) = (metric(&after, name, &[]), metric(&before, name, &[]));
        assert!(a >= b + by, "{name}: {b} -> {a}\n{after}");
    };
    grew("lstmd_predict_batch_sequences_count", 2.0);
    grew("lstmd_predict_batch_sequences_sum", 14.0);
    grew("lstmd_predict_queue_seconds_count", 2.0);
    grew("lstmd_model_cache_misses_total", 1.0);
    grew("lstmd_model_cache_hits_total", 1.0);
    assert!(metric(&after, "lstmd_model_cache_loaded_bytes", &[]) > 0.0);
    assert!(metric(&after, "lstmd_jobs", &[("state", "succeeded")]) >= 1.0);
    assert!(
        after.contains("lstmd_training_samples_per_second{worker=\"train-worker-0\"}"),
        "{after}"
    );

    // A call that outlives the client's deadline: DEADLINE_EXCEEDED (tonic
    // alone would say CANCELLED), from the server, not from the client.
    let raw = raw_http2(server.addr).await;
    let origin: http::Uri = format!("http://{}", server.addr).parse().unwrap();
    // The whole input, not the last window: long enough to outlive 20 ms.
    let mut slow = Request::new(pb::PredictRequest {
        whole_input: true,
        ..predict(256, 1024)
    });
    slow.set_timeout(Duration::from_millis(20));
    let started = std::time::Instant::now();
    let late = PredictionServiceClient::with_origin(raw.clone(), origin.clone())
        .predict(slow)
        .await
        .unwrap_err();
    assert_eq!(late.code(), Code::DeadlineExceeded, "{late:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // A deadline that is long enough changes nothing.
    let mut roomy = Request::new(predict(2, 4));
    roomy.set_timeout(Duration::from_secs(60));
    PredictionServiceClient::with_origin(raw.clone(), origin.clone())
        .predict(roomy)
        .await
        .expect("within its deadline");

    // A server stream ends at its deadline too.
    let mut watch = Request::new(long_job(&ds.id, "long", 1000));
    watch.set_timeout(Duration::from_millis(700));
    let mut stream = lstmd::proto::job_service_client::JobServiceClient::with_origin(raw, origin)
        .train(watch)
        .await
        .expect("Train starts")
        .into_inner();
    let end = loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(end.code(), Code::DeadlineExceeded, "{end:?}");

    let last = scrape(&server).await;
    let deadline = |rpc: &str| {
        metric(
            &last,
            "lstmd_grpc_requests_total",
            &[("rpc", rpc), ("code", "DEADLINE_EXCEEDED")],
        )
    };
    assert!(
        deadline("lstmd.v1.PredictionService/Predict") >= 1.0,
        "{last}"
    );
    assert!(deadline("lstmd.v1.JobService/Train") >= 1.0, "{last}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_rpc_and_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut binary = Binary::start(&data, &["--log-format", "json"]);
    let c = binary.connect().await;
    let mut request = Request::new(pb::GetModelRequest {
        name: "absent".into(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("x-request-id", "trace-me-7".parse().unwrap());
    let missing = c.models.clone().get_model(request).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let _ = binary.child.kill();
    binary.wait_exit(Duration::from_secs(10));

    let log = std::fs::read_to_string(data.with_extension("log")).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let call = lines
        .iter()
        .find(|l| l["span"]["request_id"] == "trace-me-7")
        .unwrap_or_else(|| panic!("no line of the call: {log}"));
    assert_eq!(call["span"]["rpc"], "lstmd.v1.ModelService/GetModel");
    assert_eq!(call["fields"]["code"], "NOT_FOUND");
    assert!(lines
        .iter()
        .any(|l| l["fields"]["message"] == "lstmd serving"));
}
