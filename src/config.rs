//! Flags and environment of `lstmd serve`.
use std::net::SocketAddr;
use std::path::PathBuf;

use candle_core::Device;

use crate::data::DataLimits;
use crate::nn::SpecLimits;
use crate::predict::PredictLimits;
use crate::train::TrainLimits;

#[derive(clap::Args, Clone, Debug)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "LSTMD_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Directory holding datasets, models and records.
    #[arg(long, env = "LSTMD_DATA_DIR", default_value = "./lstmd-data")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub stores: StoreArgs,
    /// A file holding the key (32 bytes or more, e.g. `openssl rand -hex
    /// 32`) that signs portable sessions' tokens; replicas that share it
    /// accept each other's. Unset: a random key of this process, so its
    /// tokens end with it.
    #[arg(long, env = "LSTMD_SESSION_KEY_FILE")]
    pub session_key_file: Option<PathBuf>,
    /// Training worker threads (default: half the cores, at least 1).
    #[arg(long, env = "LSTMD_WORKERS")]
    pub workers: Option<usize>,
    /// `cpu`, or `cuda` / `cuda:N` on a binary built with the `cuda` feature.
    #[arg(long, env = "LSTMD_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Jobs that may wait in the queue; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "LSTMD_MAX_QUEUED_JOBS", default_value_t = 64)]
    pub max_queued_jobs: usize,
    /// Largest gRPC message accepted, in bytes.
    #[arg(long, env = "LSTMD_MAX_MESSAGE_BYTES", default_value_t = 64 << 20)]
    pub max_message_bytes: usize,
    /// Seconds after which a client connection is asked to go (HTTP/2
    /// GOAWAY) so that its next calls open a new one: behind a Kubernetes
    /// Service, which balances connections, not calls, clients spread over
    /// new replicas. Calls in flight finish. 0: never.
    #[arg(long, env = "LSTMD_MAX_CONNECTION_AGE", default_value_t = 0)]
    pub max_connection_age: u64,
    /// Seconds to wait for open streams on shutdown.
    #[arg(long, env = "LSTMD_SHUTDOWN_GRACE", default_value_t = 30)]
    pub shutdown_grace: u64,
    /// Threads each matrix multiply may use (sets RAYON_NUM_THREADS).
    #[arg(long, env = "LSTMD_MATMUL_THREADS", default_value_t = 1)]
    pub matmul_threads: usize,
    /// Log format on stderr: `text` for people, `json` (one object a line)
    /// for log collectors. Filter with RUST_LOG (default `info`).
    #[arg(long, env = "LSTMD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Serve Prometheus metrics over HTTP at `/metrics` on this address
    /// (e.g. 0.0.0.0:9090). Off unless set.
    #[arg(long, env = "LSTMD_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Serve `grpc.health.v1.Health` alone, in plaintext, on this address
    /// too: Kubernetes' gRPC probes cannot speak TLS. Off unless set.
    #[arg(long, env = "LSTMD_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub security: SecurityArgs,
    /// Threads the fused CPU kernels (f32 training and inference) use, the
    /// calling thread included; 0 means one per core. Set once per process.
    #[arg(long, env = "LSTMD_KERNEL_THREADS", default_value_t = 0)]
    pub kernel_threads: usize,
    #[command(flatten)]
    pub limits: LimitArgs,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Where records and blobs live: the data dir (neither flag), or the
/// cluster stores (both).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct StoreArgs {
    /// Keep records, the job queue and events in PostgreSQL
    /// (`postgres://user:password@host:port/db`) instead of the data dir;
    /// goes with --blobs. The data dir then holds only local scratch files.
    #[arg(long, env = "LSTMD_RECORDS")]
    pub records: Option<String>,
    /// CA certificates (PEM) that the database's TLS certificate is checked
    /// against, beside the system's (a managed database's CA bundle). TLS
    /// is used as the URL's sslmode says: `?sslmode=require` insists on it.
    #[arg(long, env = "LSTMD_RECORDS_CA_FILE")]
    pub records_ca_file: Option<PathBuf>,
    /// Keep weights, checkpoints and datasets in S3-compatible object
    /// storage (`s3://bucket/prefix`; credentials, region and endpoint from
    /// the AWS_* environment variables); goes with --records.
    #[arg(long, env = "LSTMD_BLOBS")]
    pub blobs: Option<String>,
    /// The S3 API's address, for S3-compatible servers (MinIO, Ceph, ...);
    /// AWS_ENDPOINT_URL does the same. Requests are path-style.
    #[arg(long, env = "LSTMD_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// Allow a plain-http --s3-endpoint (a server inside the cluster).
    #[arg(long, env = "LSTMD_S3_ALLOW_HTTP")]
    pub s3_allow_http: bool,
}

impl StoreArgs {
    /// The S3 client's settings from --s3-endpoint and --s3-allow-http.
    pub fn blob_options(&self) -> Vec<(String, String)> {
        let mut options = Vec::new();
        if let Some(endpoint) = &self.s3_endpoint {
            options.push(("aws_endpoint".to_string(), endpoint.clone()));
        }
        if self.s3_allow_http {
            options.push(("aws_allow_http".to_string(), "true".to_string()));
        }
        options
    }

    /// The stores these flags name, with `data_dir` for local files.
    pub fn urls(&self, data_dir: &std::path::Path) -> crate::store::StoreUrls {
        crate::store::StoreUrls {
            data_dir: data_dir.to_path_buf(),
            records: self.records.clone(),
            records_ca_file: self.records_ca_file.clone(),
            blobs: self.blobs.clone(),
            blob_options: self.blob_options(),
        }
    }
}

/// TLS and bearer-token auth.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct SecurityArgs {
    /// Serve TLS with this PEM certificate chain (needs --tls-key).
    #[arg(long, env = "LSTMD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "LSTMD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by these PEM CA certificates
    /// (mutual TLS; needs --tls-cert).
    #[arg(long, env = "LSTMD_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Require `authorization: Bearer <token>` on every call but health and
    /// reflection; the file holds the tokens, one a line (blank lines and
    /// `#` comments ignored), and is re-read when it changes.
    #[arg(long, env = "LSTMD_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,
}

/// Bounds on every size a client controls.
#[derive(clap::Args, Clone, Debug)]
pub struct LimitArgs {
    /// Largest vocabulary of a dataset or model, in tokens.
    #[arg(long, env = "LSTMD_MAX_VOCAB_SIZE", default_value_t = 1 << 20)]
    pub max_vocab_size: usize,
    /// Largest dataset a client may send, in bytes (text, or 4 per token
    /// id); an upload past it gets RESOURCE_EXHAUSTED.
    #[arg(long, env = "LSTMD_MAX_DATASET_BYTES", default_value_t = 1 << 30)]
    pub max_dataset_bytes: u64,
    /// UploadDataset streams open at once; more get RESOURCE_EXHAUSTED.
    #[arg(long, env = "LSTMD_MAX_UPLOADS_IN_FLIGHT", default_value_t = 4)]
    pub max_uploads_in_flight: usize,
    /// Widest embedding a model spec may ask for.
    #[arg(long, env = "LSTMD_MAX_EMBEDDING_DIM", default_value_t = 4096)]
    pub max_embedding_dim: usize,
    /// Longest training window (tokens of context) a model spec may ask for.
    #[arg(long, env = "LSTMD_MAX_WINDOW", default_value_t = 4096)]
    pub max_window: usize,
    /// Most recurrent layers in one model.
    #[arg(long, env = "LSTMD_MAX_LAYERS", default_value_t = 16)]
    pub max_layers: usize,
    /// Most units in one recurrent layer.
    #[arg(long, env = "LSTMD_MAX_UNITS", default_value_t = 4096)]
    pub max_units: usize,
    /// Largest model an ImportModel stream may carry, in bytes.
    #[arg(long, env = "LSTMD_MAX_MODEL_BYTES", default_value_t = 1 << 30)]
    pub max_model_bytes: usize,
    /// Largest model, in parameters.
    #[arg(long, env = "LSTMD_MAX_PARAMETERS", default_value_t = 200_000_000)]
    pub max_parameters: usize,
    /// Most epochs one training job may ask for.
    #[arg(long, env = "LSTMD_MAX_EPOCHS", default_value_t = 100_000)]
    pub max_epochs: u32,
    /// Largest training batch, in windows.
    #[arg(long, env = "LSTMD_MAX_BATCH_SIZE", default_value_t = 65_536)]
    pub max_batch_size: usize,
    /// Sequences in one Predict call.
    #[arg(long, env = "LSTMD_MAX_PREDICT_BATCH", default_value_t = 1024)]
    pub max_predict_batch: usize,
    /// Tokens in one Predict sequence.
    #[arg(long, env = "LSTMD_MAX_SEQUENCE_LEN", default_value_t = 4096)]
    pub max_sequence_len: usize,
    /// Predict calls being served at once; more get RESOURCE_EXHAUSTED at
    /// once (shed, not queued), which bounds memory and latency under
    /// overload.
    #[arg(long, env = "LSTMD_MAX_PREDICT_IN_FLIGHT", default_value_t = 256)]
    pub max_predict_in_flight: usize,
    /// Dynamic batching: sequences merged into one forward pass (1 = off).
    #[arg(long, env = "LSTMD_MAX_BATCH", default_value_t = 64)]
    pub max_batch: usize,
    /// Dynamic batching: microseconds a request waits for others to join.
    /// With 0, requests that arrive while a forward pass runs join the next
    /// one: no added latency when idle, full batches under load.
    #[arg(long, env = "LSTMD_MAX_BATCH_DELAY", default_value_t = 0)]
    pub max_batch_delay: u64,
    /// Predict requests queued per model; more get RESOURCE_EXHAUSTED.
    #[arg(long, env = "LSTMD_MAX_PREDICT_QUEUE", default_value_t = 256)]
    pub max_predict_queue: usize,
    /// Memory for loaded models (weights bytes); least recently used go first.
    #[arg(long, env = "LSTMD_MODEL_CACHE_BYTES", default_value_t = 2 << 30)]
    pub model_cache_bytes: u64,
    /// Open prediction sessions at most.
    #[arg(long, env = "LSTMD_MAX_SESSIONS", default_value_t = 1024)]
    pub max_sessions: usize,
    /// Seconds an idle session lives.
    #[arg(long, env = "LSTMD_SESSION_IDLE_TIMEOUT", default_value_t = 300)]
    pub session_idle_timeout: u64,
    /// Tokens one Generate call may ask for.
    #[arg(long, env = "LSTMD_MAX_GENERATE_TOKENS", default_value_t = 4096)]
    pub max_generate_tokens: usize,
}

impl LimitArgs {
    pub fn data(&self) -> DataLimits {
        DataLimits {
            max_vocab_size: self.max_vocab_size,
            max_dataset_bytes: self.max_dataset_bytes,
        }
    }

    pub fn spec(&self) -> SpecLimits {
        SpecLimits {
            max_vocab_size: self.max_vocab_size,
            max_embedding_dim: self.max_embedding_dim,
            max_window: self.max_window,
            max_layers: self.max_layers,
            max_units: self.max_units,
            max_parameters: self.max_parameters,
        }
    }

    pub fn train(&self) -> TrainLimits {
        TrainLimits {
            max_epochs: self.max_epochs,
            max_batch_size: self.max_batch_size,
        }
    }

    pub fn predict(&self) -> PredictLimits {
        PredictLimits {
            max_batch: self.max_predict_batch,
            max_sequence_len: self.max_sequence_len,
            max_in_flight: self.max_predict_in_flight,
            max_generate_tokens: self.max_generate_tokens,
            model_cache_bytes: self.model_cache_bytes,
            max_sessions: self.max_sessions,
            session_idle_timeout: std::time::Duration::from_secs(self.session_idle_timeout),
            batching: crate::predict::batcher::BatchingConfig {
                max_batch: self.max_batch.max(1),
                max_delay: std::time::Duration::from_micros(self.max_batch_delay),
                max_queue: self.max_predict_queue,
            },
        }
    }
}

impl ServeArgs {
    /// Defaults as `lstmd serve` with no flags and no environment would
    /// have them, on `listen` and `data_dir`.
    pub fn defaults(listen: SocketAddr, data_dir: PathBuf) -> Self {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let mut args = Only::parse_from(["lstmd"]).serve;
        args.listen = listen;
        args.data_dir = data_dir;
        args
    }

    pub fn workers(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1);
            (cores / 2).max(1)
        })
    }
}

/// Parses `--device`: `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device, String> {
    let s = s.trim().to_ascii_lowercase();
    if s == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match s.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| format!("--device must be cpu, cuda or cuda:N, got {s:?}"))?,
        None => return Err(format!("--device must be cpu, cuda or cuda:N, got {s:?}")),
    };
    cuda_device(ordinal)
}

#[cfg(feature = "cuda")]
fn cuda_device(ordinal: usize) -> Result<Device, String> {
    let unusable = |e: candle_core::Error| format!("--device cuda:{ordinal} cannot be used: {e}");
    let device = Device::new_cuda(ordinal).map_err(unusable)?;
    probe(&device).map_err(unusable)?;
    Ok(device)
}

/// A product (cuBLAS) and an element-wise op (candle's PTX kernels) on the
/// device, checked on the host: a driver too old for the kernels, or a
/// missing library, fails here, at start, rather than in the first job.
#[cfg(feature = "cuda")]
fn probe(device: &Device) -> candle_core::Result<()> {
    use candle_core::Tensor;
    let a = Tensor::arange(0f32, 6.0, device)?.reshape((2, 3))?;
    let product = a.matmul(&a.t()?)?; // [[5, 14], [14, 50]]
    let got = candle_nn::ops::sigmoid(&(product / 100.0)?)?
        .sum_all()?
        .to_scalar::<f32>()?;
    let want: f32 = [5.0f32, 14.0, 14.0, 50.0]
        .iter()
        .map(|v| 1.0 / (1.0 + (-v / 100.0).exp()))
        .sum();
    if (got - want).abs() > 1e-4 {
        candle_core::bail!("a test computation gave {got}, expected {want}");
    }
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(ordinal: usize) -> Result<Device, String> {
    Err(format!(
        "--device cuda:{ordinal} needs a binary built with the `cuda` feature (cargo build --release --features cuda); this one has CPU support only"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_parsing() {
        assert!(matches!(parse_device("cpu"), Ok(Device::Cpu)));
        assert!(parse_device("tpu")
            .unwrap_err()
            .contains("--device must be"));
        #[cfg(not(feature = "cuda"))]
        assert!(parse_device("cuda:1")
            .unwrap_err()
            .contains("`cuda` feature"));
    }
}
