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
    let window = model
        .context
        .as_ref()
        .expect("GetModel says the context")
        .window;
    assert!(
        text.contains(&format!(
            "Answers from: the last {window} tokens (trained on every position"
        )),
        "{text}"
    );
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
    assert_eq!(list["datasets"], serde_json::json!([]), "{list}");
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

    // The events carry what changed: one trial (its newest epoch only) and
    // the ranking by number; GetJob has the whole table.
    let jobs = json(&run(lstmd(&addr, &["jobs", "list", "--output", "json"])).await);
    let tuning = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["kind"] == "tuning")
        .unwrap();
    let id = tuning["id"].as_str().unwrap();
    let watched = run(lstmd(&addr, &["jobs", "watch", id, "--output", "json"])).await;
    expect_code(&watched, 0);
    let trials: Vec<Value> = json_lines(&watched)
        .into_iter()
        .filter_map(|e| e.get("trial").cloned())
        .collect();
    assert!(trials.len() >= 4, "{trials:?}");
    for t in &trials {
        assert_eq!(t["leaderboard"], serde_json::json!([]), "{t}");
        assert!(t["trial"]["history"].as_array().unwrap().len() <= 1, "{t}");
    }
    let last = trials.last().unwrap();
    assert_eq!(last["ranking"].as_array().unwrap().len(), 2, "{last}");
    let job = json(&run(lstmd(&addr, &["jobs", "show", id, "--output", "json"])).await);
    let ranked: Vec<&Value> = job["trials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["number"])
        .collect();
    assert_eq!(
        ranked,
        last["ranking"]
            .as_array()
            .unwrap()
            .iter()
            .collect::<Vec<_>>()
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
    assert_eq!(json(&ok), serde_json::json!({"models": []}));

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

/// Every argument of every subcommand, `serve` included, says what it is
/// for in `--help`.
#[test]
fn every_argument_has_help_text() {
    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version") {
                continue;
            }
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                missing.push(format!("{path} {id}"));
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, &format!("{path} {}", sub.get_name()), missing);
        }
    }
    let mut cmd = lstmd::app::command();
    cmd.build();
    let mut missing = Vec::new();
    walk(&cmd, "lstmd", &mut missing);
    assert!(missing.is_empty(), "arguments without help: {missing:?}");
    // The walk reached the nested subcommands and serve's limits.
    let serve = cmd.find_subcommand("serve").unwrap();
    assert!(serve
        .get_arguments()
        .any(|a| a.get_id() == "max_generate_tokens"));
    let list = cmd
        .find_subcommand("models")
        .and_then(|m| m.find_subcommand("list"))
        .unwrap();
    assert!(list.get_arguments().any(|a| a.get_id() == "server"));
}

/// `serve --help` does not offer the client's options, which it ignores.
#[test]
fn serve_help_leaves_the_client_options_out() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lstmd"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    expect_code(&out, 0);
    let help = stdout(&out);
    assert!(help.contains("--max-generate-tokens"), "{help}");
    assert!(!help.contains("--server"), "{help}");
    assert!(!help.contains("--tls-ca"), "{help}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_options_go_before_or_after_the_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir.path().join("data")).await;
    let addr = server.addr.to_string();
    // LSTMD_SERVER names a port nothing listens on: only the flag can
    // reach the server.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = closed.local_addr().unwrap().to_string();
    drop(closed);
    for args in [
        vec!["--server", &addr, "models", "list", "--output", "json"],
        vec!["--server", &addr, "--output", "json", "models", "list"],
        vec!["models", "--server", &addr, "list", "--output", "json"],
        vec!["models", "list", "--server", &addr, "--output", "json"],
    ] {
        let out = run(lstmd(&nowhere, &args)).await;
        assert_eq!(json(&out), serde_json::json!({"models": []}), "{args:?}");
    }
    // Without the flag, the environment's (closed) address is used.
    let out = run(lstmd(&nowhere, &["models", "list"])).await;
    expect_code(&out, 3);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_ends_the_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir.path().join("data")).await;
    let addr = server.addr.to_string();
    // The reading end closes before the command prints anything (it
    // prints only after a round trip to the server), as `| head -0` would.
    let mut child = lstmd_std(&addr, &["datasets", "list"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!err.contains("Broken pipe"), "{err}");
    server.stop().await.unwrap();
}

/// A long job submitted detached; returns its id once it runs.
async fn running_job(server: &RunningServer, addr: &str, model: &str) -> String {
    let mut args = train_args("cycle", model, "10000");
    args.extend(["--detach", "--output", "json"]);
    let job = json(&run(lstmd(addr, &args)).await);
    let id = job["id"].as_str().unwrap().to_string();
    while job_state(server, &id).await != pb::JobState::Running as i32 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_says_the_job_is_being_cancelled() {
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
    let id = running_job(&server, &addr, "to-cancel").await;
    let cancel = run(lstmd(&addr, &["jobs", "cancel", &id])).await;
    expect_code(&cancel, 0);
    let text = stdout(&cancel);
    assert!(text.starts_with(&format!("job {id}: cancelling")), "{text}");
    assert!(!text.contains(": running"), "{text}");
    let watched = run(lstmd(&addr, &["jobs", "watch", &id])).await;
    expect_code(&watched, 1);
    assert!(
        stdout(&watched).contains(&format!("job {id}: cancelled")),
        "{}",
        stdout(&watched)
    );
    // A job that already ended cannot be cancelled: a client error.
    let again = run(lstmd(&addr, &["jobs", "cancel", &id])).await;
    expect_code(&again, 2);
    server.stop().await.unwrap();
}

/// The umask of this process (and so of the commands it starts).
fn umask() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
    u32::from_str_radix(line.split_whitespace().nth(1).unwrap(), 8).unwrap()
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_output_numbers_files_and_flag_names() {
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

    // A field error names the flag that sets the field.
    let no_embedding = run(lstmd(
        &addr,
        &[
            "train",
            "--dataset",
            "cycle",
            "--window",
            "4",
            "--layer",
            "lstm:8",
        ],
    ))
    .await;
    expect_code(&no_embedding, 2);
    assert!(
        stderr(&no_embedding).contains("spec.embedding_dim (--embedding-dim)"),
        "{}",
        stderr(&no_embedding)
    );

    // One epoch: "1 epoch", the queue message without the repeated state,
    // and each epoch line with the epoch's own time.
    let trained = run(lstmd(&addr, &train_args("cycle", "one", "1"))).await;
    expect_code(&trained, 0);
    let text = stdout(&trained);
    assert!(text.contains("completed 1 epoch"), "{text}");
    assert!(!text.contains("1 epochs"), "{text}");
    assert!(!text.contains("queued (queued"), "{text}");
    let trained = run(lstmd(&addr, &train_args("cycle", "three", "3"))).await;
    expect_code(&trained, 0);
    let text = stdout(&trained);
    let mut c = connect(&server).await;
    let model = c
        .models
        .get_model(pb::GetModelRequest {
            name: "three".into(),
            version: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut previous = 0.0;
    for m in &model.history {
        let own = lstmd::cli::output::seconds(m.elapsed_seconds - previous);
        previous = m.elapsed_seconds;
        let line = format!("Epoch {}/3 - {own} - loss", m.epoch);
        assert!(text.contains(&line), "{line:?} in {text}");
    }

    // --output json carries every field, zeros included: with top-k as
    // large as the vocabulary, `<unk>` (id 0, probability near 0) is there.
    let vocab = model.vocab_size.to_string();
    let predicted = json(
        &run(lstmd(
            &addr,
            &[
                "predict", "--model", "three", "--top-k", &vocab, "--output", "json", "abc",
            ],
        ))
        .await,
    );
    let top = predicted["predictions"][0]["top"].as_array().unwrap();
    assert_eq!(top.len(), model.vocab_size as usize);
    assert!(top
        .iter()
        .all(|t| t.get("id").is_some() && t.get("probability").is_some()));
    assert!(top.iter().any(|t| t["id"] == 0), "{top:?}");

    // Stored and printed as given: f32 flags are not widened with noise.
    let export = dir.path().join("export");
    let exported = run(lstmd(
        &addr,
        &["models", "export", "three", "-d", export.to_str().unwrap()],
    ))
    .await;
    expect_code(&exported, 0);
    let metadata: Value =
        serde_json::from_slice(&std::fs::read(export.join("metadata.json")).unwrap()).unwrap();
    assert_eq!(
        metadata["training"]["learning_rate"],
        serde_json::json!(0.02)
    );
    assert_eq!(
        metadata["training"]["validation_split"],
        serde_json::json!(0.2)
    );

    // Files the CLI writes follow the umask, as any other command's.
    let expected = 0o666 & !umask();
    for f in ["model.safetensors", "metadata.json"] {
        assert_eq!(mode(&export.join(f)), expected, "{f}");
    }
    let plot = dir.path().join("curves.svg");
    expect_code(
        &run(lstmd(
            &addr,
            &["plot", "--model", "three", "-o", plot.to_str().unwrap()],
        ))
        .await,
        0,
    );
    assert_eq!(mode(&plot), expected);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_out_text_reuses_the_training_vocabulary() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir.path().join("data")).await;
    let addr = server.addr.to_string();
    let file = cycle_text(dir.path());
    let train = json(
        &run(lstmd(
            &addr,
            &[
                "datasets",
                "upload",
                file.to_str().unwrap(),
                "--output",
                "json",
            ],
        ))
        .await,
    );
    // A held-out text with 3 characters the training text never had.
    let held_out = dir.path().join("held-out.txt");
    std::fs::write(
        &held_out,
        format!("{}xyz{}", "cdefgab".repeat(30), "abcdefg".repeat(30)),
    )
    .unwrap();
    let own = json(
        &run(lstmd(
            &addr,
            &[
                "datasets",
                "upload",
                held_out.to_str().unwrap(),
                "--name",
                "own-vocab",
                "--output",
                "json",
            ],
        ))
        .await,
    );
    assert_ne!(own["vocabSize"], train["vocabSize"]);
    let reused = json(
        &run(lstmd(
            &addr,
            &[
                "datasets",
                "upload",
                held_out.to_str().unwrap(),
                "--vocabulary-from",
                "cycle",
                "--output",
                "json",
            ],
        ))
        .await,
    );
    assert_eq!(reused["vocabSize"], train["vocabSize"]);
    assert_eq!(reused["unknownTokens"], "3");
    assert_eq!(reused["tokenCount"], "423");
    assert_eq!(train["unknownTokens"], "0");

    // Refused as validation data with its own vocabulary, accepted with
    // the training set's.
    // (A validation dataset replaces --validation-split.)
    let with_validation = |dataset: &'static str| {
        let mut args: Vec<&str> = train_args("cycle", "validated", "1")
            .into_iter()
            .filter(|a| !matches!(*a, "--validation-split" | "0.2"))
            .collect();
        args.extend(["--validation-dataset", dataset]);
        args
    };
    let args = with_validation("own-vocab");
    let refused = run(lstmd(&addr, &args)).await;
    expect_code(&refused, 2);
    assert!(
        stderr(&refused).contains("vocabulary"),
        "{}",
        stderr(&refused)
    );
    let args = with_validation("held-out");
    let trained = run(lstmd(&addr, &args)).await;
    expect_code(&trained, 0);
    assert!(
        stdout(&trained).contains("val_loss"),
        "{}",
        stdout(&trained)
    );

    // A model's vocabulary, over gRPC: the same ids as the dataset's.
    let mut c = connect(&server).await;
    let from_model = c
        .datasets
        .create_dataset(pb::CreateDatasetRequest {
            name: "from-model".into(),
            data: Some(pb::create_dataset_request::Data::Text("gfedcba?!".into())),
            vocabulary_from: Some(pb::VocabularyFrom {
                model: "validated".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        from_model.vocab_size.to_string(),
        train["vocabSize"].to_string()
    );
    assert_eq!(from_model.unknown_tokens, 2);
    // Token ids have no vocabulary to reuse; a tokenizer that contradicts
    // the vocabulary is refused.
    let ids = ids_dataset(&mut c, "ids", cycle(5, 50), 5).await;
    let status = c
        .datasets
        .create_dataset(pb::CreateDatasetRequest {
            name: "from-ids".into(),
            data: Some(pb::create_dataset_request::Data::Text("abc".into())),
            vocabulary_from: Some(pb::VocabularyFrom {
                dataset_id: ids.id.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("vocabulary_from.dataset_id"),
        "{}",
        status.message()
    );
    let status = c
        .datasets
        .create_dataset(pb::CreateDatasetRequest {
            name: "byte".into(),
            data: Some(pb::create_dataset_request::Data::Text("abc".into())),
            tokenizer: pb::Tokenizer::Byte as i32,
            vocabulary_from: Some(pb::VocabularyFrom {
                dataset_id: train["id"].as_str().unwrap().into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().starts_with("tokenizer must be"),
        "{}",
        status.message()
    );

    // A model of token ids says so, instead of an empty vocabulary kind.
    let trained = run(lstmd(
        &addr,
        &[
            "train",
            "--dataset",
            "ids",
            "--name",
            "ids-model",
            "--window",
            "4",
            "--embedding-dim",
            "4",
            "--layer",
            "lstm:4",
            "--epochs",
            "1",
        ],
    ))
    .await;
    expect_code(&trained, 0);
    let shown = run(lstmd(&addr, &["models", "show", "ids-model"])).await;
    expect_code(&shown, 0);
    assert!(
        stdout(&shown).contains("token ids below 5 (no text vocabulary)"),
        "{}",
        stdout(&shown)
    );
    assert!(
        !stdout(&shown).contains("vocabulary  ("),
        "{}",
        stdout(&shown)
    );
    server.stop().await.unwrap();
}

/// The README's self-signed certificate recipe, as written there: the
/// `openssl req -x509 ...` command that writes tls.key and tls.crt.
fn readme_certificate_recipe() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let mut lines = readme
        .lines()
        .skip_while(|l| !l.starts_with("openssl req -x509"));
    let mut command = String::new();
    for line in lines.by_ref() {
        command.push_str(line);
        command.push('\n');
        if !line.ends_with('\\') {
            break;
        }
    }
    assert!(
        command.contains("-keyout tls.key -out tls.crt"),
        "{command}"
    );
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_certificate_works_with_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let made = std::process::Command::new("bash")
        .args(["-c", &readme_certificate_recipe()])
        .current_dir(dir.path())
        .output()
        .expect("bash and openssl run");
    expect_code(&made, 0);
    let mut args = args(&dir.path().join("data"));
    args.security.tls_cert = Some(dir.path().join("tls.crt"));
    args.security.tls_key = Some(dir.path().join("tls.key"));
    let server = start_with(args).await;
    let port = server.addr.port();
    let ca = dir.path().join("tls.crt");

    // Accepted as its own trust anchor: an end-entity certificate.
    let url = format!("https://localhost:{port}");
    let ok = run(lstmd(
        &url,
        &[
            "models",
            "list",
            "--tls-ca",
            ca.to_str().unwrap(),
            "--output",
            "json",
        ],
    ))
    .await;
    assert_eq!(json(&ok), serde_json::json!({"models": []}));
    let by_ip = run(lstmd(
        &format!("https://127.0.0.1:{port}"),
        &["datasets", "list", "--tls-ca", ca.to_str().unwrap()],
    ))
    .await;
    expect_code(&by_ip, 0);

    // Plaintext against the TLS port: the error says TLS may be wanted.
    let plain = run(lstmd(&format!("127.0.0.1:{port}"), &["models", "list"])).await;
    assert_ne!(plain.status.code(), Some(0));
    assert!(stderr(&plain).contains("--tls-ca"), "{}", stderr(&plain));
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_logs_have_no_colour_codes_off_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lstmd"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap());
    let logged = tokio::task::spawn_blocking(move || {
        let mut logged = String::new();
        while !logged.contains("lstmd serving") {
            if lines.read_line(&mut logged).unwrap() == 0 {
                break;
            }
        }
        logged
    })
    .await
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(logged.contains("lstmd serving"), "{logged}");
    assert!(!logged.contains('\u{1b}'), "{logged:?}");
}
