//! Checks through a running server's gRPC API: train a small model on the
//! server's device, and read its full next-token distributions for a fixed
//! batch of sequences, so two servers (say CPU and CUDA, on one data dir)
//! can be compared.
use std::time::Instant;

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;

use crate::proto as pb;
use crate::proto::{
    dataset_service_client::DatasetServiceClient, job_service_client::JobServiceClient,
    prediction_service_client::PredictionServiceClient,
};

/// The vocabulary of the check's dataset.
pub const VOCAB: u32 = 24;

pub async fn connect(addr: &str) -> anyhow::Result<Channel> {
    Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {addr}"))
}

/// Waits until the server's health says SERVING; fails when it says
/// anything else at the end of `seconds`, or the server never answers.
pub async fn wait_serving(addr: &str, seconds: f64) -> anyhow::Result<()> {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let deadline = Instant::now() + std::time::Duration::from_secs_f64(seconds);
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        if let Ok(channel) = connect(addr).await {
            match HealthClient::new(channel)
                .check(HealthCheckRequest::default())
                .await
            {
                Ok(r) if r.get_ref().status == 1 => return Ok(()),
                Ok(r) => last = format!("status {}", r.get_ref().status),
                Err(e) => last = e.to_string(),
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    bail!("{addr} is not SERVING after {seconds} s ({last})")
}

/// Tokens with structure to learn (each token mostly follows from the two
/// before it) and some noise, so the trained distributions are not trivial.
pub fn tokens(len: usize) -> Vec<u32> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = vec![1u32, 2];
    while out.len() < len {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let n = out.len();
        let next = if (x >> 60) == 0 {
            ((x >> 33) % VOCAB as u64) as u32
        } else {
            (out[n - 1] * 3 + out[n - 2] + 1) % VOCAB
        };
        out.push(next);
    }
    out
}

/// What a training run reports.
#[derive(Debug)]
pub struct Trained {
    pub version: u32,
    pub seconds: f64,
    pub epochs: Vec<pb::EpochMetrics>,
}

/// Creates the check's dataset and trains `preset` on it as `model`
/// (through `Train`, so on the server's device); fails unless the job
/// succeeds.
pub async fn train(addr: &str, model: &str, preset: &str, epochs: u32) -> anyhow::Result<Trained> {
    let channel = connect(addr).await?;
    let dataset = DatasetServiceClient::new(channel.clone())
        .create_dataset(pb::CreateDatasetRequest {
            name: format!("{model}-data"),
            data: Some(pb::create_dataset_request::Data::Ids(pb::TokenIds {
                ids: tokens(6000),
                vocab_size: VOCAB,
            })),
            ..Default::default()
        })
        .await
        .context("CreateDataset")?
        .into_inner();
    let started = Instant::now();
    let mut stream = JobServiceClient::new(channel)
        .train(pb::CreateTrainingJobRequest {
            model_name: model.into(),
            dataset_id: dataset.id,
            spec: Some(pb::ModelSpec {
                preset: preset.into(),
                window: Some(10),
                ..Default::default()
            }),
            config: Some(pb::TrainingConfig {
                epochs: Some(epochs),
                batch_size: Some(64),
                learning_rate: Some(0.01),
                validation_split: Some(0.1),
                seed: Some(7),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .context("Train")?
        .into_inner();
    let mut seen = Vec::new();
    let mut finished = None;
    while let Some(event) = stream.message().await.context("Train stream")? {
        match event.kind {
            Some(pb::job_event::Kind::Epoch(e)) => seen.extend(e.metrics),
            Some(pb::job_event::Kind::Finished(f)) => finished = Some(f),
            _ => {}
        }
    }
    let finished = finished.ok_or_else(|| anyhow!("the Train stream ended without a result"))?;
    if finished.state != pb::JobState::Succeeded as i32 {
        bail!("training failed: {}", finished.reason);
    }
    Ok(Trained {
        version: finished.model.map_or(0, |m| m.version),
        seconds: started.elapsed().as_secs_f64(),
        epochs: seen,
    })
}

/// A model's next-token distributions over the whole vocabulary.
#[derive(Debug, Serialize, Deserialize)]
pub struct Distributions {
    pub model: String,
    pub version: u32,
    /// For each sequence, the probability of every id, by id.
    pub probabilities: Vec<Vec<f64>>,
}

/// The check's sequences: windows of the training data and of noise, of a
/// few lengths (the server groups them by length).
pub fn sequences() -> Vec<Vec<u32>> {
    let data = tokens(400);
    let mut out: Vec<Vec<u32>> = (0..24)
        .map(|i| data[i * 13..i * 13 + 10].to_vec())
        .collect();
    out.extend((1..=16).map(|len| {
        (0..len as u32)
            .map(|t| (t * 7 + len as u32) % VOCAB)
            .collect()
    }));
    out
}

/// Predict with every id in the top-k, for [`sequences`].
pub async fn distributions(addr: &str, model: &str, version: u32) -> anyhow::Result<Distributions> {
    let response = PredictionServiceClient::new(connect(addr).await?)
        .predict(pb::PredictRequest {
            model: model.into(),
            version,
            sequences: sequences()
                .into_iter()
                .map(|ids| pb::Sequence {
                    ids,
                    text: String::new(),
                })
                .collect(),
            top_k: Some(VOCAB),
            ..Default::default()
        })
        .await
        .context("Predict")?
        .into_inner();
    let probabilities = response
        .predictions
        .iter()
        .map(|p| {
            let mut row = vec![f64::NAN; VOCAB as usize];
            for t in &p.top {
                if let Some(slot) = row.get_mut(t.id as usize) {
                    *slot = t.probability;
                }
            }
            row
        })
        .collect();
    Ok(Distributions {
        model: response.model,
        version: response.version,
        probabilities,
    })
}

/// Largest |a - b| over all sequences and ids; fails when the two are not
/// of the same model or shape, or a probability is missing.
pub fn max_difference(a: &Distributions, b: &Distributions) -> anyhow::Result<f64> {
    if (&a.model, a.version) != (&b.model, b.version) {
        bail!(
            "different models: {}@{} and {}@{}",
            a.model,
            a.version,
            b.model,
            b.version
        );
    }
    if a.probabilities.len() != b.probabilities.len() {
        bail!("different numbers of sequences");
    }
    let mut worst = 0f64;
    for (ra, rb) in a.probabilities.iter().zip(&b.probabilities) {
        if ra.len() != rb.len() {
            bail!("different vocabularies");
        }
        for (x, y) in ra.iter().zip(rb) {
            let d = (x - y).abs();
            if !d.is_finite() {
                bail!("a probability is missing or not finite");
            }
            worst = worst.max(d);
        }
    }
    Ok(worst)
}
