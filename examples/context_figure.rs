//! Last-position vs every-position vs stateful training on the shipped
//! Macbeth text, at equal epochs: held-out top-1 accuracy and
//! cross-entropy of the next character, read the way the server answers
//! (a window model from the last `window` characters, and from prompts of
//! 1..=window characters; a stateful model from its carried state), and
//! the per-token cost of Generate (sliding window vs carried state).
//!
//! `cargo run --release --example context_figure [EPOCHS]` (default 2).
//! Environment: `FIGURE_UNITS` (LSTM units, default 64), `FIGURE_WINDOW`
//! (default 16). Timings are wall clock on whatever else the machine runs.
use std::time::Instant;

use candle_core::{Device, Tensor};
use lstmd::backend::{backend_for, Backend};
use lstmd::data::Vocabulary;
use lstmd::nn::{Cell, InferenceContext, LayerSpec, ModelSpec, Network};
use lstmd::predict::context::Reading;
use lstmd::train::checkpoint::Checkpoint;
use lstmd::train::{train, TrainConfigRequest, TrainEvent, TrainInput, TrainLimits, TrainObserver};

struct Quiet;

impl TrainObserver for Quiet {
    fn event(&mut self, event: TrainEvent) {
        if let TrainEvent::Epoch { metrics, .. } = event {
            eprintln!(
                "  epoch {}: loss {:.3} accuracy {:.3} ({:.0} windows/s)",
                metrics.epoch, metrics.loss, metrics.accuracy, metrics.samples_per_second
            );
        }
    }
    fn checkpoint(&mut self, _: &Checkpoint) -> Result<(), String> {
        Ok(())
    }
    fn cancelled(&self) -> bool {
        false
    }
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Mean cross-entropy and top-1 accuracy of `probs` rows against `targets`.
fn score(probs: &[Vec<f32>], targets: &[u32]) -> (f64, f64) {
    let mut ce = 0.0;
    let mut hits = 0usize;
    for (p, &t) in probs.iter().zip(targets) {
        ce -= (p[t as usize].max(1e-30) as f64).ln();
        let best = (0..p.len()).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap();
        hits += (best == t as usize) as usize;
    }
    (
        ce / targets.len() as f64,
        hits as f64 / targets.len() as f64,
    )
}

/// A window model on the tail: each next character from the `len`
/// characters before it (len = window: what Predict reads).
fn window_scores(inference: &dyn Backend, tail: &[u32], len: usize, w: usize) -> (f64, f64) {
    let positions: Vec<usize> = (w..tail.len()).collect();
    let seqs: Vec<Vec<u32>> = positions
        .iter()
        .map(|&i| tail[i - len..i].to_vec())
        .collect();
    let targets: Vec<u32> = positions.iter().map(|&i| tail[i]).collect();
    let mut probs = Vec::new();
    for chunk in seqs.chunks(1024) {
        probs.extend(inference.probabilities(chunk).unwrap());
    }
    score(&probs, &targets)
}

/// A stateful model on the tail: the state carried over it from its start.
fn carried_scores(inference: &dyn Backend, tail: &[u32], w: usize) -> (f64, f64) {
    let mut reading = Reading::Carried(None);
    let mut probs = Vec::new();
    for (i, &id) in tail[..tail.len() - 1].iter().enumerate() {
        let p = reading.feed(inference, &[id]).unwrap();
        if i + 1 >= w {
            probs.push(p);
        }
    }
    score(&probs, &tail[w..])
}

/// Microseconds per generated token, feeding back `n` tokens.
fn generate_cost(
    inference: &dyn Backend,
    context: InferenceContext,
    prompt: &[u32],
    n: usize,
) -> f64 {
    let mut reading = Reading::new(context, false, true, usize::MAX);
    let mut probs = reading.feed(inference, prompt).unwrap();
    let start = Instant::now();
    for _ in 0..n {
        let id = (0..probs.len())
            .max_by(|&a, &b| probs[a].total_cmp(&probs[b]))
            .unwrap();
        probs = reading.feed(inference, &[id as u32]).unwrap();
    }
    start.elapsed().as_secs_f64() * 1e6 / n as f64
}

fn main() {
    let epochs: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2);
    let (units, w) = (env("FIGURE_UNITS", 64), env("FIGURE_WINDOW", 16));
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/macbeth.txt"
    ))
    .expect("tests/data/macbeth.txt");
    let vocab = Vocabulary::char_from_corpus(&text, 0);
    let tokens = vocab.encode(&text);
    let cut = tokens.len() * 9 / 10;
    let (head, tail) = (&tokens[..cut], &tokens[cut..]);
    let spec = ModelSpec {
        vocab_size: vocab.size(),
        embedding_dim: 16,
        window: w,
        embedding_dropout: 0.0,
        layers: vec![LayerSpec {
            cell: Cell::Lstm,
            units,
            bidirectional: false,
            dropout: 0.0,
        }],
    };
    println!(
        "Macbeth: {} chars, vocabulary {}; train on the first 90%, score the last {} chars",
        tokens.len(),
        vocab.size(),
        tail.len()
    );
    println!("Embedding 16, LSTM {units}, window {w}, batch 64, Adam lr 0.005, {epochs} epochs\n");
    println!(
        "{:<16} {:>9} {:>10} {:>10} {:>10} {:>13} {:>12}",
        "training", "train s", "ce (W)", "top-1 (W)", "ce (1..W)", "top-1 (1..W)", "generate µs"
    );
    for mode in ["last", "every", "stateful"] {
        let request = TrainConfigRequest {
            epochs: Some(epochs),
            batch_size: Some(64),
            learning_rate: Some(0.005),
            seed: Some(1),
            loss_positions: Some(if mode == "last" { "last" } else { "every" }.into()),
            stateful: Some(mode == "stateful"),
            progress_every_seconds: Some(0.0),
            ..Default::default()
        };
        let config = request.resolve(&TrainLimits::default(), false).unwrap();
        eprintln!("{mode}:");
        let started = Instant::now();
        let trained = train(
            TrainInput {
                spec: &spec,
                config: &config,
                tokens: head,
                validation_tokens: None,
                device: &Device::Cpu,
                resume: None,
            },
            &mut Quiet,
        )
        .unwrap();
        let seconds = started.elapsed().as_secs_f64();
        let map = trained
            .parameters
            .into_iter()
            .collect::<std::collections::HashMap<String, Tensor>>();
        let inference = backend_for(Network::from_tensors(&spec, &map).unwrap()).unwrap();
        let context = InferenceContext::of_training(w, &serde_json::to_value(&config).unwrap());
        let ((ce, top1), (ce_short, top1_short)) = if context.is_stateful() {
            let s = carried_scores(inference.as_ref(), tail, w);
            (s, s)
        } else {
            let full = window_scores(inference.as_ref(), tail, w, w);
            // Prompts of every length 1..=W, equally weighted.
            let mut sums = (0.0, 0.0);
            for len in 1..=w {
                let (c, a) = window_scores(inference.as_ref(), tail, len, w);
                sums = (sums.0 + c / w as f64, sums.1 + a / w as f64);
            }
            (full, sums)
        };
        let cost = generate_cost(inference.as_ref(), context, &tail[..w], 400);
        println!(
            "{mode:<16} {seconds:>9.1} {ce:>10.3} {top1:>10.3} {ce_short:>10.3} {top1_short:>13.3} {cost:>12.1}"
        );
    }
    println!("\nce/top-1 (W): each held-out char from the W chars before it (stateful: its carried state);");
    println!("(1..W): averaged over prompts of every length 1..=W. generate µs: one token of greedy Generate");
    println!(
        "(window: re-reads the last W tokens; stateful: one step). Wall clock on a shared machine."
    );
}
