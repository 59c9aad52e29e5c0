//! The dynamic batcher: concurrent requests for one model merge into one
//! forward pass, up to `max_batch` sequences or `max_delay`, whichever comes
//! first (Triton's and TF Serving's scheme). It runs on a thread of its own
//! that also runs the forward pass: a request costs one channel send and one
//! wake-up, with no hop through tokio's blocking pool, whose threads (up to
//! 512) and their memory grew with the load. A bounded queue admits
//! requests; a full one refuses instead of growing.
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::stats::ModelStats;
use crate::backend::{Backend, EngineError};

#[derive(Clone, Copy, Debug)]
pub struct BatchingConfig {
    /// Sequences merged into one forward pass at most (1 = no batching).
    pub max_batch: usize,
    /// How long the first request of a batch waits for others.
    pub max_delay: Duration,
    /// Requests waiting per model before new ones are refused.
    pub max_queue: usize,
}

/// The batch size and delay in force, changed while the batcher runs (a
/// model's own settings).
pub struct LiveSettings {
    max_batch: AtomicUsize,
    max_delay_us: AtomicU64,
}

impl LiveSettings {
    pub fn new(max_batch: usize, max_delay: Duration) -> Self {
        Self {
            max_batch: AtomicUsize::new(max_batch.max(1)),
            max_delay_us: AtomicU64::new(max_delay.as_micros() as u64),
        }
    }

    pub fn set(&self, max_batch: usize, max_delay: Duration) {
        self.max_batch.store(max_batch.max(1), Ordering::Relaxed);
        self.max_delay_us
            .store(max_delay.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn max_batch(&self) -> usize {
        self.max_batch.load(Ordering::Relaxed)
    }

    pub fn max_delay(&self) -> Duration {
        Duration::from_micros(self.max_delay_us.load(Ordering::Relaxed))
    }
}

type Reply = oneshot::Sender<Result<Vec<Vec<f32>>, SubmitError>>;

struct Request {
    sequences: Vec<Vec<u32>>,
    reply: Reply,
    queued: Instant,
}

pub struct Batcher {
    tx: SyncSender<Request>,
    passes: Arc<AtomicU64>,
    pub settings: Arc<LiveSettings>,
}

/// Why a request got no answer.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("the queue is full")]
    QueueFull,
    #[error("the model's batcher stopped")]
    Stopped,
    #[error("the forward pass panicked")]
    Panicked,
    /// Shared by every request of the failed batch.
    #[error(transparent)]
    Failed(Arc<EngineError>),
}

impl Batcher {
    /// Starts the batching thread for `inference`; it ends when the batcher
    /// is dropped (the model left the cache) and its queue is drained.
    pub fn start(
        inference: Arc<dyn Backend>,
        settings: Arc<LiveSettings>,
        max_queue: usize,
        stats: Arc<ModelStats>,
        name: &str,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(max_queue.max(1));
        let passes = Arc::new(AtomicU64::new(0));
        let worker = Worker {
            inference,
            settings: Arc::clone(&settings),
            passes: Arc::clone(&passes),
            stats,
        };
        // Thread names are at most 15 bytes on Linux.
        let thread: String = format!("batch {name}").chars().take(15).collect();
        std::thread::Builder::new()
            .name(thread)
            .spawn(move || worker.run(rx))?;
        Ok(Self {
            tx,
            passes,
            settings,
        })
    }

    /// Forward passes run so far (each serves one batch of requests).
    pub fn forward_passes(&self) -> u64 {
        self.passes.load(Ordering::Relaxed)
    }

    /// Next-token distributions for `sequences`, computed in a batch with
    /// whatever else is queued.
    pub async fn submit(&self, sequences: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>, SubmitError> {
        let (reply, rx) = oneshot::channel();
        let request = Request {
            sequences,
            reply,
            queued: Instant::now(),
        };
        self.tx.try_send(request).map_err(|e| match e {
            TrySendError::Full(_) => SubmitError::QueueFull,
            TrySendError::Disconnected(_) => SubmitError::Stopped,
        })?;
        rx.await.unwrap_or(Err(SubmitError::Stopped))
    }
}

struct Worker {
    inference: Arc<dyn Backend>,
    settings: Arc<LiveSettings>,
    passes: Arc<AtomicU64>,
    stats: Arc<ModelStats>,
}

impl Worker {
    fn run(self, rx: mpsc::Receiver<Request>) {
        // Reused from pass to pass: no allocation per batch but the answers.
        let mut batch: Vec<Request> = Vec::new();
        let mut sequences: Vec<Vec<u32>> = Vec::new();
        while let Ok(first) = rx.recv() {
            let (max_batch, delay) = (self.settings.max_batch(), self.settings.max_delay());
            let deadline = Instant::now() + delay;
            let mut size = first.sequences.len();
            batch.push(first);
            while size < max_batch {
                let next = if delay.is_zero() {
                    rx.try_recv().ok()
                } else {
                    let left = deadline.saturating_duration_since(Instant::now());
                    rx.recv_timeout(left).ok()
                };
                let Some(r) = next else { break };
                size += r.sequences.len();
                batch.push(r);
            }
            self.pass(&mut batch, &mut sequences, size);
        }
    }

    /// One forward pass over every queued request; answers each.
    fn pass(&self, batch: &mut Vec<Request>, sequences: &mut Vec<Vec<u32>>, size: usize) {
        for r in batch.iter() {
            metrics::histogram!("lstmd_predict_queue_seconds").record(r.queued.elapsed());
        }
        self.passes.fetch_add(1, Ordering::Relaxed);
        self.stats.record_pass(size);
        sequences.clear();
        let mut counts = Vec::with_capacity(batch.len());
        for r in batch.iter_mut() {
            counts.push(r.sequences.len());
            sequences.append(&mut r.sequences);
        }
        let inference = &self.inference;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            inference.probabilities(sequences)
        }));
        let result = match result {
            Ok(r) => r.map_err(|e| SubmitError::Failed(Arc::new(e))),
            Err(_) => Err(SubmitError::Panicked),
        };
        match result {
            Ok(probs) => {
                let mut probs = probs.into_iter();
                for (r, n) in batch.drain(..).zip(counts) {
                    let _ = r.reply.send(Ok(probs.by_ref().take(n).collect()));
                }
            }
            Err(e) => {
                for r in batch.drain(..) {
                    let _ = r.reply.send(Err(e.clone()));
                }
            }
        }
    }
}
