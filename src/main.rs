// A function fits on a screen: clippy.toml sets the limit.
#![warn(clippy::too_many_lines)]
use std::process::ExitCode;

use lstmd::app::{self, Command};
use lstmd::config::{LogFormat, ServeArgs};

fn main() -> ExitCode {
    lstmd::cli::output::quiet_on_broken_pipe();
    lstmd::server::tls::choose_crypto_provider();
    match app::parse().command {
        Command::Serve(args) => match serve(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Migrate(args) => match app::migrate(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Client(command) => lstmd::cli::run(command),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // candle reads /proc/cpuinfo on every matmul unless this is set; it must
    // be set before any thread or candle call exists.
    // Reuse freed memory rather than re-faulting pages every training step.
    lstmd::nn::fused::memory::keep_freed_memory();
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // SAFETY: still single-threaded here.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", args.matmul_threads.to_string()) };
    }
    init_logs(args.log_format);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let server = lstmd::server::start(args, shutdown_signal()).await?;
        server.wait().await
    })
}

/// Logs to stderr, filtered by RUST_LOG (default `info`); each RPC's events
/// carry its span (`rpc`, `request_id`).
fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal, not in a file or a pipe.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.init(),
        // One JSON object a line, with the current span's fields and the
        // spans it is in.
        LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
