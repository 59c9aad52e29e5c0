//! Per-model serving statistics (requests, errors, latency, batch sizes),
//! kept by version for GetModel and mirrored into the Prometheus metrics
//! with `model` and `version` labels (bounded: only registered versions that
//! served a request get a series).
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bounds of the batch-size buckets (sequences in one forward pass);
/// the last bucket takes the rest.
pub const BATCH_BUCKETS: [u64; 8] = [1, 2, 4, 8, 16, 32, 64, 128];

pub const MODEL_REQUESTS: &str = "lstmd_model_requests_total";
pub const MODEL_ERRORS: &str = "lstmd_model_errors_total";
pub const MODEL_LATENCY: &str = "lstmd_model_request_duration_seconds";
pub const MODEL_BATCH: &str = "lstmd_model_batch_sequences";

pub struct ModelStats {
    // Metric handles made once: no label allocation per request.
    requests_metric: metrics::Counter,
    errors_metric: metrics::Counter,
    latency_metric: metrics::Histogram,
    batch_metric: metrics::Histogram,
    requests: AtomicU64,
    errors: AtomicU64,
    sequences: AtomicU64,
    latency_us: AtomicU64,
    passes: AtomicU64,
    batch_counts: [AtomicU64; BATCH_BUCKETS.len() + 1],
}

/// A copy of one version's statistics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StatsSnapshot {
    pub requests: u64,
    pub errors: u64,
    pub sequences: u64,
    pub mean_latency: Duration,
    pub forward_passes: u64,
    /// Forward passes by batch size: (upper bound, count); 0 = larger.
    pub batch_sizes: Vec<(u64, u64)>,
}

impl ModelStats {
    fn new(model: &str, version: u32) -> Self {
        let labels = [
            ("model", model.to_string()),
            ("version", version.to_string()),
        ];
        Self {
            requests_metric: metrics::counter!(MODEL_REQUESTS, &labels),
            errors_metric: metrics::counter!(MODEL_ERRORS, &labels),
            latency_metric: metrics::histogram!(MODEL_LATENCY, &labels),
            batch_metric: metrics::histogram!(MODEL_BATCH, &labels),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            sequences: AtomicU64::new(0),
            latency_us: AtomicU64::new(0),
            passes: AtomicU64::new(0),
            batch_counts: Default::default(),
        }
    }

    /// One answered request (`ok` false: it failed after the model was
    /// found).
    pub fn record_request(&self, sequences: usize, latency: Duration, ok: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.sequences
            .fetch_add(sequences as u64, Ordering::Relaxed);
        self.latency_us
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
        self.requests_metric.increment(1);
        self.latency_metric.record(latency);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
            self.errors_metric.increment(1);
        }
    }

    /// One forward pass of `size` sequences.
    pub fn record_pass(&self, size: usize) {
        self.passes.fetch_add(1, Ordering::Relaxed);
        let bucket = BATCH_BUCKETS
            .iter()
            .position(|&b| size as u64 <= b)
            .unwrap_or(BATCH_BUCKETS.len());
        self.batch_counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.batch_metric.record(size as f64);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let requests = self.requests.load(Ordering::Relaxed);
        let latency = self.latency_us.load(Ordering::Relaxed);
        StatsSnapshot {
            requests,
            errors: self.errors.load(Ordering::Relaxed),
            sequences: self.sequences.load(Ordering::Relaxed),
            mean_latency: Duration::from_micros(latency.checked_div(requests).unwrap_or(0)),
            forward_passes: self.passes.load(Ordering::Relaxed),
            batch_sizes: BATCH_BUCKETS
                .iter()
                .copied()
                .chain([0])
                .zip(&self.batch_counts)
                .map(|(b, c)| (b, c.load(Ordering::Relaxed)))
                .filter(|(_, c)| *c > 0)
                .collect(),
        }
    }
}

/// Statistics of every version that served, by (name, version).
#[derive(Default)]
pub struct StatsTable {
    by_model: Mutex<HashMap<(String, u32), Arc<ModelStats>>>,
}

impl StatsTable {
    pub fn of(&self, name: &str, version: u32) -> Arc<ModelStats> {
        let mut map = self.by_model.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(
            map.entry((name.to_string(), version))
                .or_insert_with(|| Arc::new(ModelStats::new(name, version))),
        )
    }

    pub fn snapshot(&self, name: &str, version: u32) -> StatsSnapshot {
        let map = self.by_model.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&(name.to_string(), version))
            .map(|s| s.snapshot())
            .unwrap_or_default()
    }

    /// Forgets deleted versions (all of a name when `version` is None).
    pub fn forget(&self, name: &str, version: Option<u32>) {
        let mut map = self.by_model.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|(n, v), _| n != name || version.is_some_and(|want| want != *v));
    }
}
