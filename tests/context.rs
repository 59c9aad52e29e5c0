//! Next-token answers use the context the model was trained on: a window
//! model trained with the loss at every position answers inputs of any
//! length (Predict reads the last `window` tokens), Generate slides the
//! window, sessions keep the last `window` tokens (bidirectional models
//! too); a stateful model carries its state. For LSTM, GRU, RNN and a
//! bidirectional LSTM, through the real server.
mod common;

use common::*;
use lstmd::proto as pb;
use tonic::Code;

const PERIOD: u32 = 7;
const WINDOW: u32 = 4;

fn layer(cell: pb::Cell, bidirectional: bool) -> pb::RecurrentLayer {
    pb::RecurrentLayer {
        cell: cell as i32,
        units: 24,
        bidirectional,
        ..Default::default()
    }
}

fn request(
    name: &str,
    dataset_id: &str,
    layer: pb::RecurrentLayer,
) -> pb::CreateTrainingJobRequest {
    pb::CreateTrainingJobRequest {
        model_name: name.into(),
        dataset_id: dataset_id.into(),
        spec: Some(pb::ModelSpec {
            embedding_dim: Some(8),
            window: Some(WINDOW),
            layers: vec![layer],
            ..Default::default()
        }),
        config: Some(pb::TrainingConfig {
            epochs: Some(8),
            batch_size: Some(32),
            learning_rate: Some(0.02),
            seed: Some(3),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn train_ok(c: &mut Clients, request: pb::CreateTrainingJobRequest) {
    let events = train(c, request).await;
    let done = finished(&events);
    assert_eq!(
        done.state,
        pb::JobState::Succeeded as i32,
        "{}",
        done.reason
    );
}

fn ids(v: &[u32]) -> pb::Sequence {
    pb::Sequence {
        ids: v.to_vec(),
        text: String::new(),
    }
}

/// The cycle from `start`, `len` tokens long.
fn segment(start: u32, len: u32) -> Vec<u32> {
    (start..start + len).map(|i| i % PERIOD).collect()
}

async fn top1(c: &mut Clients, model: &str, seqs: &[Vec<u32>], whole: bool) -> Vec<u32> {
    c.predict
        .predict(pb::PredictRequest {
            model: model.into(),
            sequences: seqs.iter().map(|s| ids(s)).collect(),
            top_k: Some(1),
            whole_input: whole,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .predictions
        .iter()
        .map(|p| p.top[0].id)
        .collect()
}

async fn greedy(c: &mut Clients, model: &str, prompt: &[u32], n: u32) -> Vec<u32> {
    let mut stream = c
        .predict
        .generate(pb::GenerateRequest {
            model: model.into(),
            prompt: Some(ids(prompt)),
            max_tokens: n,
            temperature: Some(0.0),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(t) = stream.message().await.unwrap() {
        out.push(t.token.unwrap().id);
    }
    out
}

async fn feed(c: &mut Clients, session: &str, tokens: &[u32]) -> pb::FeedSessionResponse {
    c.predict
        .feed_session(pb::FeedSessionRequest {
            session_id: session.into(),
            tokens: Some(ids(tokens)),
            top_k: Some(3),
            state: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Every input length 1..=3W, from every start, gives the cycle's next
/// token; greedy Generate from [0, 1, 2] continues the cycle; a session
/// fed in pieces answers what Predict answers on the same tokens.
async fn answers_follow_the_cycle(c: &mut Clients, model: &str) {
    let mut inputs = Vec::new();
    for len in 1..=3 * WINDOW {
        for start in 0..PERIOD {
            inputs.push(segment(start, len));
        }
    }
    let got = top1(c, model, &inputs, false).await;
    for (input, id) in inputs.iter().zip(&got) {
        let want = (input.last().unwrap() + 1) % PERIOD;
        assert_eq!(*id, want, "{model}: after {input:?}");
    }
    assert_eq!(
        greedy(c, model, &[0, 1, 2], 8).await,
        vec![3, 4, 5, 6, 0, 1, 2, 3],
        "{model}"
    );
    let session = c
        .predict
        .open_session(pb::OpenSessionRequest {
            model: model.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session_id;
    let tokens = segment(5, 11);
    let mut fed = Vec::new();
    for piece in tokens.chunks(3) {
        let answer = feed(c, &session, piece).await;
        fed.extend_from_slice(piece);
        assert_eq!(answer.tokens_seen, fed.len() as u64);
        let top = answer.prediction.unwrap().top;
        assert_eq!(
            top[0].id,
            (fed.last().unwrap() + 1) % PERIOD,
            "{model} session"
        );
        let alone = c
            .predict
            .predict(pb::PredictRequest {
                model: model.into(),
                sequences: vec![ids(&fed)],
                top_k: Some(3),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let p = &alone.predictions[0].top;
        assert!(
            (p[0].probability - top[0].probability).abs() < 1e-6,
            "{model}: {p:?} vs {top:?}"
        );
    }
}

async fn context_of(c: &mut Clients, model: &str) -> pb::InferenceContext {
    c.models
        .get_model(pb::GetModelRequest {
            name: model.into(),
            version: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .context
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_models_answer_every_input_length() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    let ds = ids_dataset(&mut c, "cycle", cycle(PERIOD, 400), PERIOD).await;
    let models = [
        ("lstm", layer(pb::Cell::Lstm, false)),
        ("gru", layer(pb::Cell::Gru, false)),
        ("rnn", layer(pb::Cell::Rnn, false)),
        ("bilstm", layer(pb::Cell::Lstm, true)),
    ];
    for (name, l) in &models {
        train_ok(&mut c, request(name, &ds.id, *l)).await;
        let context = context_of(&mut c, name).await;
        assert_eq!(
            (
                context.kind.as_str(),
                context.window,
                context.loss_positions.as_str()
            ),
            ("window", WINDOW, "every"),
            "{name}"
        );
        answers_follow_the_cycle(&mut c, name).await;
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_input_feeds_every_token_and_matches_a_whole_input_session() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    let ds = ids_dataset(&mut c, "cycle", cycle(PERIOD, 300), PERIOD).await;
    let mut r = request("last", &ds.id, layer(pb::Cell::Lstm, false));
    r.config.as_mut().unwrap().loss_positions = "last".into();
    r.config.as_mut().unwrap().epochs = Some(2);
    train_ok(&mut c, r).await;
    let context = context_of(&mut c, "last").await;
    assert_eq!(context.loss_positions, "last");
    let long = segment(2, 3 * WINDOW);
    let session = c
        .predict
        .open_session(pb::OpenSessionRequest {
            model: "last".into(),
            whole_input: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session_id;
    let fed = feed(&mut c, &session, &long).await.prediction.unwrap().top;
    let predict = |whole| pb::PredictRequest {
        model: "last".into(),
        sequences: vec![ids(&long)],
        top_k: Some(3),
        whole_input: whole,
        ..Default::default()
    };
    let whole = c.predict.predict(predict(true)).await.unwrap().into_inner();
    let window = c
        .predict
        .predict(predict(false))
        .await
        .unwrap()
        .into_inner();
    let tail = c
        .predict
        .predict(pb::PredictRequest {
            sequences: vec![ids(&long[long.len() - WINDOW as usize..])],
            ..predict(false)
        })
        .await
        .unwrap()
        .into_inner();
    // By default the answer reads the last window only; whole_input reads
    // everything, as a whole-input session does.
    assert_eq!(window.predictions, tail.predictions);
    assert_ne!(whole.predictions, window.predictions);
    let w = &whole.predictions[0].top;
    for (a, b) in w.iter().zip(&fed) {
        assert_eq!(a.id, b.id);
        assert!((a.probability - b.probability).abs() < 1e-6);
    }
    // A bidirectional layer cannot carry a whole input's state.
    train_ok(&mut c, {
        let mut r = request("bi", &ds.id, layer(pb::Cell::Gru, true));
        r.config.as_mut().unwrap().epochs = Some(1);
        r
    })
    .await;
    let err = c
        .predict
        .open_session(pb::OpenSessionRequest {
            model: "bi".into(),
            whole_input: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("whole_input"), "{err:?}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_model_answers_a_short_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    let ds = c
        .datasets
        .create_dataset(pb::CreateDatasetRequest {
            name: "hello".into(),
            data: Some(pb::create_dataset_request::Data::Text(
                "hello world. ".repeat(40),
            )),
            tokenizer: pb::Tokenizer::Char as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut r = request("hello", &ds.id, layer(pb::Cell::Lstm, false));
    r.spec.as_mut().unwrap().window = Some(8);
    train_ok(&mut c, r).await;
    let answer = c
        .predict
        .predict(pb::PredictRequest {
            model: "hello".into(),
            sequences: vec![pb::Sequence {
                text: "hel".into(),
                ..Default::default()
            }],
            top_k: Some(1),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.predictions[0].top[0].text, "l", "{answer:?}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateful_model_carries_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    let ds = ids_dataset(&mut c, "cycle", cycle(PERIOD, 700), PERIOD).await;
    let mut r = request("stateful", &ds.id, layer(pb::Cell::Lstm, false));
    let config = r.config.as_mut().unwrap();
    config.stateful = Some(true);
    config.batch_size = Some(8);
    config.validation_split = Some(0.2);
    config.epochs = Some(12);
    let events = train(&mut c, r.clone()).await;
    let done = finished(&events);
    assert_eq!(
        done.state,
        pb::JobState::Succeeded as i32,
        "{}",
        done.reason
    );
    // The held-out tail is read as streams too.
    let last = epochs(&events).pop().unwrap();
    assert!(last.val_accuracy.unwrap() > 0.9, "{last:?}");
    assert_eq!(context_of(&mut c, "stateful").await.kind, "stateful");
    answers_follow_the_cycle(&mut c, "stateful").await;
    // A bidirectional layer has no state to carry.
    let mut bi = r;
    bi.spec.as_mut().unwrap().layers = vec![layer(pb::Cell::Lstm, true)];
    let err = c.jobs.create_training_job(bi).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("config.stateful"), "{err:?}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_loss_positions_are_refused_and_tuning_passes_the_config_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = connect(&server).await;
    let ds = ids_dataset(&mut c, "cycle", cycle(PERIOD, 300), PERIOD).await;
    let mut bad = request("bad", &ds.id, layer(pb::Cell::Lstm, false));
    bad.config.as_mut().unwrap().loss_positions = "middle".into();
    let err = c.jobs.create_training_job(bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .contains("config.loss_positions must be every or last"),
        "{err:?}"
    );
    let base = request("tuned", &ds.id, layer(pb::Cell::Gru, false));
    let job = c
        .jobs
        .create_tuning_job(pb::CreateTuningJobRequest {
            model_name: "tuned".into(),
            dataset_id: ds.id.clone(),
            spec: base.spec,
            config: Some(pb::TrainingConfig {
                epochs: Some(1),
                stateful: Some(true),
                // Stateful validation reads the corpus's tail as streams.
                validation_split: Some(0.2),
                loss_positions: "last".into(),
                ..base.config.unwrap()
            }),
            strategy: "grid".into(),
            search_space: Some(pb::SearchSpace {
                units: Some(pb::ParamSpace {
                    choices: vec![8.0, 12.0],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let events = watch_all(&mut c, &job.id).await;
    assert_eq!(finished(&events).state, pb::JobState::Succeeded as i32);
    let model = c
        .models
        .get_model(pb::GetModelRequest {
            name: "tuned".into(),
            version: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let config = model.config.unwrap();
    assert_eq!(
        (config.stateful, config.loss_positions.as_str()),
        (Some(true), "last")
    );
    assert_eq!(model.context.unwrap().kind, "stateful");
    server.stop().await.unwrap();
}
