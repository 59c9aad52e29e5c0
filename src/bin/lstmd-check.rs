//! `lstmd-check`: the numerical and service checks, from a built binary, for
//! a machine without a Rust toolchain (a GPU host; see scripts/gpu-check.sh).
//! Exits non-zero when a check fails.
// A function fits on a screen: clippy.toml sets the limit.
#![warn(clippy::too_many_lines)]
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use lstmd::check::golden::{self, Fixture, Forward};
use lstmd::check::service;

#[derive(Parser)]
#[command(name = "lstmd-check", version, about = "lstmd's self-checks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Logits, loss and gradients of the PyTorch fixtures on a device,
    /// through the composed candle path (and the fused kernels on the CPU).
    Golden {
        #[arg(long, default_value = "cpu")]
        device: String,
        #[arg(long, default_value = "tests/fixtures/golden")]
        fixtures: PathBuf,
        /// Largest relative error allowed.
        #[arg(long, default_value_t = 1e-4)]
        tolerance: f64,
    },
    /// Waits until a server's health says SERVING.
    Wait {
        #[arg(long)]
        addr: String,
        #[arg(long, default_value_t = 60.0)]
        seconds: f64,
    },
    /// Trains a small model on a server (on the server's device).
    Train {
        #[arg(long)]
        addr: String,
        #[arg(long, default_value = "gpu-check")]
        model: String,
        #[arg(long, default_value = "dropout")]
        preset: String,
        #[arg(long, default_value_t = 3)]
        epochs: u32,
    },
    /// The model's full next-token distributions for a fixed batch; saved
    /// with --out, or compared with an earlier --out with --against.
    Predict {
        #[arg(long)]
        addr: String,
        #[arg(long, default_value = "gpu-check")]
        model: String,
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        against: Option<PathBuf>,
        /// Largest absolute difference of a probability allowed.
        #[arg(long, default_value_t = 1e-4)]
        tolerance: f64,
    },
}

fn main() -> anyhow::Result<()> {
    // As `lstmd serve` does: candle reads /proc/cpuinfo on every matmul
    // unless this is set.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // SAFETY: still single-threaded here.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", "1") };
    }
    match Cli::parse().command {
        Command::Golden {
            device,
            fixtures,
            tolerance,
        } => run_golden(&device, &fixtures, tolerance),
        command => tokio::runtime::Runtime::new()?.block_on(run_service(command)),
    }
}

fn run_golden(device: &str, dir: &std::path::Path, tolerance: f64) -> anyhow::Result<()> {
    let device = lstmd::config::parse_device(device).map_err(anyhow::Error::msg)?;
    let mut forwards = vec![Forward::Composed];
    if device.is_cpu() {
        forwards.push(Forward::Fused);
    }
    let mut failed = 0;
    let cases = golden::cases(dir)?;
    for case in &cases {
        let fixture = Fixture::load(dir, case, candle_core::DType::F32, &device)?;
        for &forward in &forwards {
            let r = fixture.check(forward)?;
            let ok = r.worst() <= tolerance;
            failed += usize::from(!ok);
            println!(
                "{:<4} {:<11} {:<8} logits {:.1e}  loss {:.1e}  gradients {:.1e} ({})",
                if ok { "ok" } else { "FAIL" },
                r.name,
                format!("{forward:?}").to_lowercase(),
                r.logits,
                r.loss,
                r.gradients,
                r.worst_gradient
            );
        }
    }
    let runs = cases.len() * forwards.len();
    println!(
        "golden on {}: {} of {runs} within {tolerance:e} relative",
        device_name(&device),
        runs - failed
    );
    if failed > 0 || cases.is_empty() {
        bail!("{failed} golden checks failed");
    }
    Ok(())
}

fn device_name(device: &candle_core::Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

async fn run_service(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Golden { .. } => unreachable!("runs without a runtime"),
        Command::Wait { addr, seconds } => service::wait_serving(&addr, seconds).await,
        Command::Train {
            addr,
            model,
            preset,
            epochs,
        } => {
            let t = service::train(&addr, &model, &preset, epochs).await?;
            for m in &t.epochs {
                println!(
                    "epoch {}: loss {:.4} accuracy {:.3} val_loss {:.4} {:.0} samples/s",
                    m.epoch,
                    m.loss,
                    m.accuracy,
                    m.val_loss.unwrap_or(f64::NAN),
                    m.samples_per_second
                );
            }
            println!(
                "trained {model}@{} ({preset}, {epochs} epochs) in {:.1} s",
                t.version, t.seconds
            );
            Ok(())
        }
        Command::Predict {
            addr,
            model,
            out,
            against,
            tolerance,
        } => {
            let d = service::distributions(&addr, &model, 0).await?;
            if let Some(path) = out {
                std::fs::write(&path, serde_json::to_vec(&d)?)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            if let Some(path) = against {
                let bytes = std::fs::read(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                let other: service::Distributions = serde_json::from_slice(&bytes)?;
                let diff = service::max_difference(&d, &other)?;
                let seqs = d.probabilities.len();
                println!(
                    "{model}@{}: {seqs} sequences, largest probability difference {diff:.2e} (allowed {tolerance:e})",
                    d.version
                );
                if diff > tolerance {
                    bail!("predictions differ by {diff:e}, more than {tolerance:e}");
                }
            }
            Ok(())
        }
    }
}
