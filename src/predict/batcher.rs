//! The dynamic batcher: concurrent requests for one model merge into one
//! forward pass, up to `max_batch` sequences or `max_delay`, whichever comes
//! first (Triton's and TF Serving's scheme). A bounded queue admits requests;
//! a full one refuses instead of growing.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::infer::Inference;

#[derive(Clone, Copy, Debug)]
pub struct BatchingConfig {
    /// Sequences merged into one forward pass at most (1 = no batching).
    pub max_batch: usize,
    /// How long the first request of a batch waits for others.
    pub max_delay: Duration,
    /// Requests waiting per model before new ones are refused.
    pub max_queue: usize,
}

type Reply = oneshot::Sender<candle_core::Result<Vec<Vec<f32>>>>;

struct Request {
    sequences: Vec<Vec<u32>>,
    reply: Reply,
}

/// Queue time and batch size of one forward pass, for metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct BatchStats {
    pub sequences: usize,
    pub requests: usize,
    pub oldest_wait: Duration,
}

pub struct Batcher {
    tx: mpsc::Sender<(Request, Instant)>,
    passes: Arc<AtomicU64>,
}

/// Why a request got no answer.
pub enum SubmitError {
    QueueFull,
    Failed(candle_core::Error),
}

impl Batcher {
    /// Starts the batching task for `inference`; it ends when the batcher is
    /// dropped.
    pub fn start(inference: Arc<Inference>, config: BatchingConfig) -> Self {
        let (tx, rx) = mpsc::channel(config.max_queue.max(1));
        let passes = Arc::new(AtomicU64::new(0));
        tokio::spawn(run(inference, config, rx, Arc::clone(&passes)));
        Self { tx, passes }
    }

    /// Forward passes run so far (each serves one batch of requests).
    pub fn forward_passes(&self) -> u64 {
        self.passes.load(Ordering::Relaxed)
    }

    /// Next-token distributions for `sequences`, computed in a batch with
    /// whatever else is queued.
    pub async fn submit(&self, sequences: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>, SubmitError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send((Request { sequences, reply }, Instant::now()))
            .map_err(|_| SubmitError::QueueFull)?;
        match rx.await {
            Ok(result) => result.map_err(SubmitError::Failed),
            Err(_) => Err(SubmitError::Failed(candle_core::Error::Msg(
                "the batcher stopped".into(),
            ))),
        }
    }
}

async fn run(
    inference: Arc<Inference>,
    config: BatchingConfig,
    mut rx: mpsc::Receiver<(Request, Instant)>,
    passes: Arc<AtomicU64>,
) {
    while let Some(first) = rx.recv().await {
        let mut size = first.0.sequences.len();
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + config.max_delay;
        while size < config.max_batch {
            let next = if config.max_delay.is_zero() {
                rx.try_recv().ok()
            } else {
                tokio::select! {
                    r = rx.recv() => r,
                    _ = tokio::time::sleep_until(deadline) => None,
                }
            };
            match next {
                Some(r) => {
                    size += r.0.sequences.len();
                    batch.push(r);
                }
                None => break,
            }
        }
        let stats = BatchStats {
            sequences: size,
            requests: batch.len(),
            oldest_wait: batch
                .iter()
                .map(|(_, t)| t.elapsed())
                .max()
                .unwrap_or_default(),
        };
        tracing::trace!(?stats, "forward pass");
        for (_, queued) in &batch {
            metrics::histogram!("lstmd_predict_queue_seconds").record(queued.elapsed());
        }
        passes.fetch_add(1, Ordering::Relaxed);
        let all: Vec<Vec<u32>> = batch
            .iter()
            .flat_map(|(r, _)| r.sequences.iter().cloned())
            .collect();
        let model = Arc::clone(&inference);
        let result =
            tokio::task::spawn_blocking(move || model.next_token_probabilities(&all)).await;
        let mut probs = match result {
            Ok(Ok(p)) => p.into_iter(),
            Ok(Err(e)) => {
                for (r, _) in batch {
                    let _ = r.reply.send(Err(candle_core::Error::Msg(e.to_string())));
                }
                continue;
            }
            Err(e) => {
                for (r, _) in batch {
                    let _ = r.reply.send(Err(candle_core::Error::Msg(format!(
                        "inference task failed: {e}"
                    ))));
                }
                continue;
            }
        };
        for (r, _) in batch {
            let mine: Vec<Vec<f32>> = probs.by_ref().take(r.sequences.len()).collect();
            let _ = r.reply.send(Ok(mine));
        }
    }
}
