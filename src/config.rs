//! Flags and environment of `lstmd serve`.
use std::net::SocketAddr;
use std::path::PathBuf;

use candle_core::Device;

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
    /// How often a running epoch reports progress, in milliseconds.
    #[arg(long, env = "LSTMD_PROGRESS_INTERVAL_MS", default_value_t = 1000)]
    pub progress_interval_ms: u64,
    /// Seconds to wait for open streams on shutdown.
    #[arg(long, env = "LSTMD_SHUTDOWN_GRACE", default_value_t = 30)]
    pub shutdown_grace: u64,
    /// Threads each matrix multiply may use (sets RAYON_NUM_THREADS).
    #[arg(long, env = "LSTMD_MATMUL_THREADS", default_value_t = 1)]
    pub matmul_threads: usize,
    /// Threads the fused CPU kernels (f32 training and inference) use, the
    /// calling thread included; 0 means one per core. Set once per process.
    #[arg(long, env = "LSTMD_KERNEL_THREADS", default_value_t = 0)]
    pub kernel_threads: usize,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// Bounds on every size a client controls.
#[derive(clap::Args, Clone, Debug)]
pub struct LimitArgs {
    #[arg(long, env = "LSTMD_MAX_VOCAB_SIZE", default_value_t = 1 << 20)]
    pub max_vocab_size: usize,
    #[arg(long, env = "LSTMD_MAX_EMBEDDING_DIM", default_value_t = 4096)]
    pub max_embedding_dim: usize,
    #[arg(long, env = "LSTMD_MAX_WINDOW", default_value_t = 4096)]
    pub max_window: usize,
    #[arg(long, env = "LSTMD_MAX_LAYERS", default_value_t = 16)]
    pub max_layers: usize,
    #[arg(long, env = "LSTMD_MAX_UNITS", default_value_t = 4096)]
    pub max_units: usize,
    /// Largest model, in parameters.
    #[arg(long, env = "LSTMD_MAX_PARAMETERS", default_value_t = 200_000_000)]
    pub max_parameters: usize,
    #[arg(long, env = "LSTMD_MAX_EPOCHS", default_value_t = 100_000)]
    pub max_epochs: u32,
    #[arg(long, env = "LSTMD_MAX_BATCH_SIZE", default_value_t = 65_536)]
    pub max_batch_size: usize,
    /// Sequences in one Predict call.
    #[arg(long, env = "LSTMD_MAX_PREDICT_BATCH", default_value_t = 1024)]
    pub max_predict_batch: usize,
    /// Tokens in one Predict sequence.
    #[arg(long, env = "LSTMD_MAX_SEQUENCE_LEN", default_value_t = 4096)]
    pub max_sequence_len: usize,
    /// Predict calls being served at once; more get RESOURCE_EXHAUSTED.
    #[arg(long, env = "LSTMD_MAX_PREDICT_IN_FLIGHT", default_value_t = 256)]
    pub max_predict_in_flight: usize,
}

impl LimitArgs {
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
    Device::new_cuda(ordinal).map_err(|e| format!("--device cuda:{ordinal} cannot be used: {e}"))
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
