//! The `lstmd` client subcommands, run as the real binary (assert_cmd)
//! against a real server started in the test.
mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;

use assert_cmd::Command;
use common::pki::make_pki;
use common::*;
use lstmd::cli::plot::{BEST_COLOR, TRAIN_COLOR, VALIDATION_COLOR};
use lstmd::proto as pb;
use lstmd::server::RunningServer;
use serde_json::Value;

/// `lstmd ARGS` against `server`, with no client settings from the
/// environment of whoever runs the tests.
fn lstmd_std(server: &str, args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_lstmd"));
    for var in [
        "LSTMD_CLIENT_TLS_CA",
        "LSTMD_CLIENT_TLS_CERT",
        "LSTMD_CLIENT_TLS_KEY",
        "LSTMD_CLIENT_TLS_DOMAIN",
        "LSTMD_TOKEN",
        "LSTMD_TOKEN_FILE",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("LSTMD_SERVER", server).args(args);
    cmd
}

fn lstmd(server: &str, args: &[&str]) -> Command {
    Command::from_std(lstmd_std(server, args))
}

/// Runs the command off the async runtime (the server lives on it) and
/// returns its output.
async fn run(mut cmd: Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("lstmd runs"))
        .await
        .unwrap()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts the exit code, showing both streams when it differs.
fn expect_code(out: &std::process::Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        stdout(out),
        stderr(out)
    );
}

fn json(out: &std::process::Output) -> Value {
    expect_code(out, 0);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(out)))
}

fn json_lines(out: &std::process::Output) -> Vec<Value> {
    stdout(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// A text that each character determines the next one of: learnable in a
/// few epochs.
fn cycle_text(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("cycle.txt");
    std::fs::write(&path, "abcdefg".repeat(400)).unwrap();
    path
}

const SMALL_MODEL: &[&str] = &[
    "--window",
    "4",
    "--embedding-dim",
    "8",
    "--layer",
    "lstm:16",
    "--batch-size",
    "32",
    "--learning-rate",
    "0.02",
    "--validation-split",
    "0.2",
    "--seed",
    "1",
];

fn train_args<'a>(dataset: &'a str, model: &'a str, epochs: &'a str) -> Vec<&'a str> {
    let mut args = vec![
        "train",
        "--dataset",
        dataset,
        "--name",
        model,
        "--epochs",
        epochs,
    ];
    args.extend_from_slice(SMALL_MODEL);
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datasets_training_models_prediction_and_plots_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir.path().join("data")).await;
    let addr = server.addr.to_string();
    let file = cycle_text(dir.path());
    let file = file.to_str().unwrap();

    // Upload: the dataset comes back in the protobuf JSON mapping.
    let dataset = json(
        &run(lstmd(
            &addr,
            &["datasets", "upload", file, "--output", "json"],
        ))
        .await,
    );
    assert_eq!(dataset["name"], "cycle");
    assert_eq!(dataset["tokenCount"], "2800");
    assert_eq!(dataset["tokenizer"], "TOKENIZER_CHAR");
    let dataset_id = dataset["id"].as_str().unwrap().to_string();
    let list = json(&run(lstmd(&addr, &["datasets", "list", "--output", "json"])).await);
    assert_eq!(list["datasets"][0]["id"], dataset_id.as_str());
    let shown = run(lstmd(&addr, &["datasets", "show", "cycle"])).await;
    expect_code(&shown, 0);
    assert!(stdout(&shown).contains(&dataset_id), "{}", stdout(&shown));
    assert!(
        stdout(&shown).contains("Tokens:    2800"),
        "{}",
        stdout(&shown)
    );

    // Train, for people: a line per epoch and the outcome (no bars: not a
    // terminal).
    let trained = run(lstmd(&addr, &train_args("cycle", "letters", "3"))).await;
    expect_code(&trained, 0);
    let text = stdout(&trained);
    for epoch in 1..=3 {
        assert!(text.contains(&format!("Epoch {epoch}/3 - ")), "{text}");
    }
    assert!(text.contains("val_loss"), "{text}");
    assert!(text.contains("succeeded - model letters v1"), "{text}");
    assert!(
        !stderr(&trained).contains('\u{1b}'),
        "no terminal codes in a pipe"
    );

    // Train detached, for scripts: the job as JSON, then followed by
    // `jobs watch`, one event a line, ending with the finished event.
    let mut args = train_args(&dataset_id, "letters", "2");
    args.extend(["--detach", "--output", "json"]);
    let job = json(&run(lstmd(&addr, &args)).await);
    let job_id = job["id"].as_str().unwrap().to_string();
    let watched = run(lstmd(
        &addr,
        &["jobs", "watch", &job_id, "--output", "json"],
    ))
    .await;
    expect_code(&watched, 0);
    let events = json_lines(&watched);
    let epochs: Vec<&Value> = events.iter().filter(|e| e.get("epoch").is_some()).collect();
    assert_eq!(epochs.len(), 2, "{events:?}");
    let last = events.last().unwrap();
    assert_eq!(last["finished"]["state"], "JOB_STATE_SUCCEEDED");
    assert_eq!(last["finished"]["model"]["version"], 2);

    let jobs = json(&run(lstmd(&addr, &["jobs", "list", "--output", "json"])).await);
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 2);
    let shown = json(&run(lstmd(&addr, &["jobs", "show", &job_id, "--output", "json"])).await);
    assert_eq!(shown["history"].as_array().unwrap().len(), 2);
    let table = run(lstmd(&addr, &["jobs", "list", "--state", "succeeded"])).await;
    expect_code(&table, 0);
    assert!(stdout(&table).contains(&job_id), "{}", stdout(&table));

    // Models: the summary table and the history; JSON matches GetModel.
    let show = run(lstmd(
        &addr,
        &["models", "show", "letters", "--version", "1"],
    ))
    .await;
    expect_code(&show, 0);
    let text = stdout(&show);
    assert!(text.contains("Layer (type)"), "{text}");
    assert!(text.contains("layers.0 (LSTM)"), "{text}");
    let mut c = connect(&server).await;
    let model = c
        .models
        .get_model(pb::GetModelRequest {
            name: "letters".into(),
            version: 1,
        })
        .await
        .unwrap()
        .into_inner();
    let total = model.summary.as_ref().unwrap().total_parameters;
    assert!(text.contains(&format!("Total params: {total}")), "{text}");
    assert_eq!(
        text.matches("\n    3  ").count(),
        1,
        "one history row per epoch: {text}"
    );
    let as_json = json(
        &run(lstmd(
            &addr,
            &[
                "models",
                "show",
                "letters",
                "--version",
                "1",
                "--output",
                "json",
            ],
        ))
        .await,
    );
    assert_eq!(as_json["summary"]["totalParameters"], total.to_string());
    // One entry per model, at its latest version.
    let models = json(&run(lstmd(&addr, &["models", "list", "--output", "json"])).await);
    assert_eq!(models["models"].as_array().unwrap().len(), 1);
    assert_eq!(models["models"][0]["version"], 2);

    // Predict: the cycle continues.
    let predicted = json(
        &run(lstmd(
            &addr,
            &[
                "predict", "--model", "letters", "--top-k", "3", "--output", "json", "abcd", "efga",
            ],
        ))
        .await,
    );
    assert_eq!(predicted["predictions"][0]["top"][0]["text"], "e");
    assert_eq!(predicted["predictions"][1]["top"][0]["text"], "b");
    assert_eq!(
        predicted["predictions"][0]["top"].as_array().unwrap().len(),
        3
    );
    let table = run(lstmd(&addr, &["predict", "--model", "letters", "abcd"])).await;
    expect_code(&table, 0);
    assert!(stdout(&table).contains("   1  \"e\""), "{}", stdout(&table));

    // Generate, greedily: the prompt, then the cycle.
    let generated = run(lstmd(
        &addr,
        &[
            "generate",
            "--model",
            "letters",
            "--max-tokens",
            "8",
            "--temperature",
            "0",
            "abc",
        ],
    ))
    .await;
    expect_code(&generated, 0);
    assert_eq!(stdout(&generated), "abcdefgabcd\n");
    let streamed = run(lstmd(
        &addr,
        &[
            "generate",
            "--model",
            "letters",
            "--max-tokens",
            "5",
            "--output",
            "json",
            "abc",
        ],
    ))
    .await;
    expect_code(&streamed, 0);
    let tokens = json_lines(&streamed);
    assert_eq!(tokens.len(), 5);
    assert_eq!(tokens[4]["index"], 4);

    // Export then import under another name: same predictions.
    let export_dir = dir.path().join("export");
    let exported = run(lstmd(
        &addr,
        &[
            "models",
            "export",
            "letters",
            "--version",
            "1",
            "-d",
            export_dir.to_str().unwrap(),
        ],
    ))
    .await;
    expect_code(&exported, 0);
    assert_eq!(
        std::fs::read(export_dir.join("model.safetensors")).unwrap(),
        weights_file(&dir.path().join("data"), "letters", 1)
    );
    let imported = json(
        &run(lstmd(
            &addr,
            &[
                "models",
                "import",
                export_dir.to_str().unwrap(),
                "--name",
                "copy",
                "--output",
                "json",
            ],
        ))
        .await,
    );
    assert_eq!(imported["name"], "copy");
    let original = json(
        &run(lstmd(
            &addr,
            &[
                "predict",
                "--model",
                "letters",
                "--version",
                "1",
                "--output",
                "json",
                "gabc",
            ],
        ))
        .await,
    );
    let copy = json(
        &run(lstmd(
            &addr,
            &["predict", "--model", "copy", "--output", "json", "gabc"],
        ))
        .await,
    );
    assert_eq!(original["predictions"], copy["predictions"]);
    let removed = run(lstmd(&addr, &["models", "rm", "copy"])).await;
    expect_code(&removed, 0);
    assert_eq!(stdout(&removed), "deleted copy v1\n");

    // Plots: both formats, with the expected series.
    check_svg(&addr, dir.path()).await;
    check_png(&addr, dir.path()).await;

    let gone = run(lstmd(&addr, &["datasets", "rm", "cycle"])).await;
    expect_code(&gone, 0);
    let list = json(&run(lstmd(&addr, &["datasets", "list", "--output", "json"])).await);
    assert!(list.get("datasets").is_none(), "{list}");
    server.stop().await.unwrap();
}

/// The SVG holds one polyline per series with a point per epoch, the
/// legend names every series and the best epoch.
async fn check_svg(addr: &str, dir: &Path) {
    let path = dir.join("curves.svg");
    let out = run(lstmd(
        addr,
        &[
            "plot",
            "--model",
            "letters",
            "--version",
            "1",
            "-o",
            path.to_str().unwrap(),
        ],
    ))
    .await;
    expect_code(&out, 0);
    assert!(stdout(&out).contains("3 epochs"), "{}", stdout(&out));
    let svg = std::fs::read_to_string(&path).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
    let hex = |c: plotters::style::RGBColor| format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2);
    let series_with = |color: String, points: usize| {
        svg.split("<polyline")
            .skip(1)
            .filter(|p| p.contains(&format!("stroke=\"{color}\"")))
            .filter(|p| {
                let pts = p
                    .split("points=\"")
                    .nth(1)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap();
                pts.split_whitespace().count() == points
            })
            .count()
    };
    // loss and accuracy, 3 points each, for train and validation.
    assert_eq!(series_with(hex(TRAIN_COLOR), 3), 2, "{svg}");
    assert_eq!(series_with(hex(VALIDATION_COLOR), 3), 2, "{svg}");
    for label in ["loss", "val_loss", "accuracy", "val_accuracy"] {
        assert!(svg.contains(&format!("\n{label}\n")), "legend {label}");
    }
    assert!(svg.contains("\nbest epoch "), "the best epoch is marked");
    assert!(svg.contains(&hex(BEST_COLOR)));
}

/// The PNG decodes, has the asked size and the series' colours.
async fn check_png(addr: &str, dir: &Path) {
    let path = dir.join("curves.png");
    let out = run(lstmd(
        addr,
        &[
            "plot",
            "--model",
            "letters",
            "--version",
            "1",
            "-o",
            path.to_str().unwrap(),
            "--width",
            "900",
            "--height",
            "400",
        ],
    ))
    .await;
    expect_code(&out, 0);
    let decoder = png::Decoder::new(std::fs::File::open(&path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut pixels).unwrap();
    assert_eq!((info.width, info.height), (900, 400));
    assert_eq!(info.color_type, png::ColorType::Rgb);
    let count = |c: plotters::style::RGBColor| {
        pixels
            .chunks(3)
            .filter(|p| p[0] == c.0 && p[1] == c.1 && p[2] == c.2)
            .count()
    };
    for (name, color) in [
        ("train", TRAIN_COLOR),
        ("validation", VALIDATION_COLOR),
        ("best epoch", BEST_COLOR),
    ] {
        assert!(count(color) > 100, "{name} series drawn: {}", count(color));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_exit_with_client_or_server_codes() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir.path().join("data")).await;
    let addr = server.addr.to_string();

    let unknown = run(lstmd(&addr, &["predict", "--model", "nope", "abc"])).await;
    expect_code(&unknown, 2);
    assert!(
        stderr(&unknown).contains("NOT_FOUND"),
        "{}",
        stderr(&unknown)
    );

    let file = cycle_text(dir.path());
    let up = run(lstmd(
        &addr,
        &["datasets", "upload", file.to_str().unwrap()],
    ))
    .await;
    expect_code(&up, 0);
    let args = [
        "train",
        "--dataset",
        "cycle",
        "--window",
        "0",
        "--embedding-dim",
        "4",
        "--layer",
        "lstm:4",
    ];
    let invalid = run(lstmd(&addr, &args)).await;
    expect_code(&invalid, 2);
    assert!(
        stderr(&invalid).contains("INVALID_ARGUMENT: spec.window"),
        "{}",
        stderr(&invalid)
    );

    let no_dataset = run(lstmd(&addr, &train_args("missing", "m", "1"))).await;
    expect_code(&no_dataset, 2);
    assert!(
        stderr(&no_dataset).contains("\"missing\""),
        "{}",
        stderr(&no_dataset)
    );

    let bad_layer = run(lstmd(
        &addr,
        &["train", "--dataset", "cycle", "--layer", "cnn:4"],
    ))
    .await;
    expect_code(&bad_layer, 2);
    assert!(
        stderr(&bad_layer).contains("lstm, gru or rnn"),
        "{}",
        stderr(&bad_layer)
    );

    let gif = run(lstmd(&addr, &["plot", "--model", "x", "-o", "x.gif"])).await;
    expect_code(&gif, 2);

    let missing_file = run(lstmd(
        &addr,
        &["datasets", "upload", "/nonexistent/file.txt"],
    ))
    .await;
    expect_code(&missing_file, 2);

    // A port nothing listens on: a server-side failure.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().to_string();
    drop(closed);
    let unreachable = run(lstmd(&port, &["models", "list"])).await;
    expect_code(&unreachable, 3);
    assert!(
        stderr(&unreachable).contains("cannot reach the server"),
        "{}",
        stderr(&unreachable)
    );

    // A job that fails: exit code 1. The first step moves every weight
    // by about the learning rate; the next forward overflows.
    let exploding = [
        "train",
        "--dataset",
        "cycle",
        "--name",
        "exploding",
        "--preset",
        "deep",
        "--window",
        "4",
        "--epochs",
        "3",
        "--batch-size",
        "4096",
        "--learning-rate",
        "1e38",
    ];
    let failed = run(lstmd(&addr, &exploding)).await;
    expect_code(&failed, 1);
    assert!(
        stdout(&failed).contains(": failed - "),
        "{}",
        stdout(&failed)
    );
    assert!(stderr(&failed).contains("failed: "), "{}", stderr(&failed));
    server.stop().await.unwrap();
}

// The callers wait for the child (clippy cannot see it through the return).
#[allow(clippy::zombie_processes)]
/// A long job, started by the CLI in the background; returns the child and
/// the job id once its first epoch ended.
fn spawn_long_training(
    addr: &str,
    model: &str,
    on_interrupt: &str,
) -> (
    std::process::Child,
    String,
    BufReader<std::process::ChildStdout>,
) {
    let mut args = train_args("cycle", model, "10000");
    args.extend(["--on-interrupt", on_interrupt]);
    let mut child = lstmd_std(addr, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap());
    let mut job_id = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).unwrap() == 0 {
            let status = child.wait();
            panic!("the CLI ended early: {status:?}");
        }
        if let Some(rest) = line.strip_prefix("job ") {
            job_id = rest
                .split(' ')
                .next()
                .unwrap()
                .trim_end_matches(':')
                .to_string();
        }
        if line.starts_with("Epoch 1/") {
            return (child, job_id, lines);
        }
    }
}

fn interrupt(child: &std::process::Child) {
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

async fn job_state(server: &RunningServer, id: &str) -> i32 {
    let mut c = connect(server).await;
    c.jobs
        .get_job(pb::GetJobRequest { id: id.into() })
        .await
        .unwrap()
        .into_inner()
        .state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_cancels_the_job_or_detaches_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir.path().join("data")).await;
    let addr = server.addr.to_string();
    let file = cycle_text(dir.path());
    expect_code(
        &run(lstmd(
            &addr,
            &["datasets", "upload", file.to_str().unwrap()],
        ))
        .await,
        0,
    );

    // --on-interrupt cancel: the job is cancelled, the CLI says so and
    // exits 1.
    let (mut child, job_id, mut lines) =
        tokio::task::block_in_place(|| spawn_long_training(&addr, "cancelled", "cancel"));
    interrupt(&child);
    let (status, rest) = tokio::task::block_in_place(|| {
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut lines, &mut rest).unwrap();
        (child.wait().unwrap(), rest)
    });
    assert_eq!(status.code(), Some(1), "{rest}");
    assert!(rest.contains(&format!("job {job_id}: cancelled")), "{rest}");
    assert_eq!(
        job_state(&server, &job_id).await,
        pb::JobState::Cancelled as i32
    );

    // --on-interrupt detach: the CLI exits 0 and the job keeps running,
    // until `jobs cancel`.
    let (mut child, job_id, _lines) =
        tokio::task::block_in_place(|| spawn_long_training(&addr, "detached", "detach"));
    interrupt(&child);
    let status = tokio::task::block_in_place(|| child.wait().unwrap());
    assert_eq!(status.code(), Some(0));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains(&format!("lstmd jobs watch {job_id}")), "{err}");
    assert_eq!(
        job_state(&server, &job_id).await,
        pb::JobState::Running as i32
    );
    let cancel = run(lstmd(
        &addr,
        &["jobs", "cancel", &job_id, "--output", "json"],
    ))
    .await;
    expect_code(&cancel, 0);
    let watched = run(lstmd(&addr, &["jobs", "watch", &job_id])).await;
    expect_code(&watched, 1);
    assert!(
        stdout(&watched).contains("cancelled"),
        "{}",
        stdout(&watched)
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tune_shows_the_leaderboard() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir.path().join("data")).await;
    let addr = server.addr.to_string();
    let file = cycle_text(dir.path());
    expect_code(
        &run(lstmd(
            &addr,
            &["datasets", "upload", file.to_str().unwrap()],
        ))
        .await,
        0,
    );
    let out = run(lstmd(
        &addr,
        &[
            "tune",
            "--dataset",
            "cycle",
            "--name",
            "tuned",
            "--window",
            "4",
            "--embedding-dim",
            "4",
            "--layer",
            "lstm:8",
            "--epochs",
            "1",
            "--batch-size",
            "64",
            "--validation-split",
            "0.2",
            "--strategy",
            "grid",
            "--search-units",
            "4,8",
        ],
    ))
    .await;
    expect_code(&out, 0);
    let text = stdout(&out);
    assert!(text.contains("trial 1 ended - score "), "{text}");
    assert!(text.contains("trial 2 ended - score "), "{text}");
    let header = text
        .lines()
        .position(|l| l.starts_with("RANK"))
        .expect("a leaderboard");
    let rows: Vec<&str> = text.lines().skip(header + 1).take(2).collect();
    assert!(rows[0].trim_start().starts_with("1 "), "{rows:?}");
    assert!(
        rows.iter().any(|r| r.contains("units=4")) && rows.iter().any(|r| r.contains("units=8")),
        "{rows:?}"
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_tokens_as_the_server_asks() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let client_cert = dir.path().join("client.pem");
    let client_key = dir.path().join("client.key");
    std::fs::write(&client_cert, &pki.client_cert).unwrap();
    std::fs::write(&client_key, &pki.client_key).unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "secret-token\n").unwrap();
    let mut args = args(&dir.path().join("data"));
    args.security.tls_cert = Some(pki.server_cert.clone());
    args.security.tls_key = Some(pki.server_key.clone());
    args.security.tls_client_ca = Some(pki.ca_file.clone());
    args.security.auth_token_file = Some(tokens.clone());
    let server = start_with(args).await;
    let url = format!("https://localhost:{}", server.addr.port());
    let ca = pki.ca_file.to_str().unwrap();
    let (cert, key) = (client_cert.to_str().unwrap(), client_key.to_str().unwrap());

    let no_token = run(lstmd(
        &url,
        &[
            "models",
            "list",
            "--tls-ca",
            ca,
            "--tls-cert",
            cert,
            "--tls-key",
            key,
        ],
    ))
    .await;
    expect_code(&no_token, 2);
    assert!(
        stderr(&no_token).contains("UNAUTHENTICATED"),
        "{}",
        stderr(&no_token)
    );

    let ok = run(lstmd(
        &url,
        &[
            "models",
            "list",
            "--tls-ca",
            ca,
            "--tls-cert",
            cert,
            "--tls-key",
            key,
            "--token",
            "secret-token",
            "--output",
            "json",
        ],
    ))
    .await;
    assert_eq!(json(&ok), serde_json::json!({}));

    // The same from the environment, the token from a file.
    let mut from_env = lstmd(&url, &["datasets", "list"]);
    from_env
        .env("LSTMD_CLIENT_TLS_CA", ca)
        .env("LSTMD_CLIENT_TLS_CERT", cert)
        .env("LSTMD_CLIENT_TLS_KEY", key)
        .env("LSTMD_TOKEN_FILE", &tokens);
    let ok = run(from_env).await;
    expect_code(&ok, 0);
    assert!(stdout(&ok).starts_with("ID"), "{}", stdout(&ok));
    server.stop().await.unwrap();
}
