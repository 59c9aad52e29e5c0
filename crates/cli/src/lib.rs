//! The client subcommands of `lstmd`: they talk to a running server over
//! gRPC, show live progress on a terminal and print tables or JSON.
//!
//! Exit codes: 0 success; 1 a job ended failed or cancelled; 2 a client
//! error (bad flags, a local file, or a request the server refused as
//! invalid, unknown or not allowed); 3 a server error (unreachable,
//! unavailable, overloaded, internal).
// A function fits on a screen: clippy.toml sets the limit.
#![warn(clippy::too_many_lines)]
pub mod client;
pub mod datasets;
pub mod follow;
pub mod jobs;
pub mod leaderboard;
pub mod models;
pub mod output;
pub mod plot;
pub mod predict;
pub mod serving;
pub mod spec_args;
pub mod train;
pub mod tune;

use std::process::ExitCode;

use tonic::Code;

pub use client::{ClientArgs, CLIENT_HEADING};
/// The generated API, the one layer this crate builds on.
pub use lstmd_proto::v1 as proto;

/// Exit codes, as the module documentation lists them.
pub const EXIT_JOB_UNSUCCESSFUL: u8 = 1;
pub const EXIT_CLIENT_ERROR: u8 = 2;
pub const EXIT_SERVER_ERROR: u8 = 3;

/// Why a client command did not succeed; decides the exit code.
#[derive(Debug)]
pub struct Failure {
    pub exit_code: u8,
    pub message: String,
}

impl Failure {
    /// A mistake on this side: flags, local files.
    pub fn local(message: impl Into<String>) -> Self {
        Failure {
            exit_code: EXIT_CLIENT_ERROR,
            message: message.into(),
        }
    }

    pub fn unreachable(message: impl Into<String>) -> Self {
        Failure {
            exit_code: EXIT_SERVER_ERROR,
            message: message.into(),
        }
    }

    /// The job ran but ended failed or cancelled.
    pub fn job(message: impl Into<String>) -> Self {
        Failure {
            exit_code: EXIT_JOB_UNSUCCESSFUL,
            message: message.into(),
        }
    }
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        let client_side = matches!(
            status.code(),
            Code::InvalidArgument
                | Code::NotFound
                | Code::AlreadyExists
                | Code::FailedPrecondition
                | Code::OutOfRange
                | Code::PermissionDenied
                | Code::Unauthenticated
        );
        let code = format!("{:?}", status.code());
        let mut message = format!("{}: {}", screaming_snake(&code), status.message());
        // What a plaintext client sees from a TLS-only port: the HTTP/2
        // handshake breaks, and tonic says no more than one of these.
        let broken = (status.code() == Code::Unknown
            && status.message().contains("transport error"))
            || (status.code() == Code::Internal && status.message().contains("h2 protocol error"));
        if broken {
            message.push_str(
                " (the connection broke during the call: if the server serves TLS, \
                 connect with --server https://HOST:PORT and --tls-ca CA.pem)",
            );
        }
        Failure {
            exit_code: if client_side {
                EXIT_CLIENT_ERROR
            } else {
                EXIT_SERVER_ERROR
            },
            message,
        }
    }
}

/// `InvalidArgument` -> `INVALID_ARGUMENT`, as grpcurl and the gRPC docs
/// name codes.
fn screaming_snake(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// The client subcommands.
#[derive(clap::Subcommand)]
pub enum ClientCommand {
    /// Upload, list, show and delete datasets.
    Datasets(datasets::DatasetsArgs),
    /// Train a model and follow its progress.
    Train(Box<train::TrainArgs>),
    /// Search hyperparameters with a live leaderboard.
    Tune(Box<tune::TuneArgs>),
    /// List, show, follow and cancel jobs.
    Jobs(jobs::JobsArgs),
    /// List, show, export, import and delete models.
    Models(models::ModelsArgs),
    /// Next-token probabilities for a text or a list of token ids.
    Predict(predict::PredictArgs),
    /// Sample a continuation of a prompt, token by token as it comes.
    Generate(predict::GenerateArgs),
    /// Draw a model's learning curves to a PNG or SVG file.
    Plot(plot::PlotArgs),
    /// Point a version label (stable, canary, ...) at a version, or remove it.
    Label(serving::LabelArgs),
    /// Set a model's dynamic batching (max batch, max delay).
    Batching(serving::BatchingArgs),
}

/// Runs a client subcommand; prints its error on stderr.
pub fn run(command: ClientCommand) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_SERVER_ERROR);
        }
    };
    let result = runtime.block_on(async move {
        match command {
            ClientCommand::Datasets(a) => datasets::run(a).await,
            ClientCommand::Train(a) => train::run(*a).await,
            ClientCommand::Tune(a) => tune::run(*a).await,
            ClientCommand::Jobs(a) => jobs::run(a).await,
            ClientCommand::Models(a) => models::run(a).await,
            ClientCommand::Predict(a) => predict::run_predict(a).await,
            ClientCommand::Generate(a) => predict::run_generate(a).await,
            ClientCommand::Plot(a) => plot::run(a).await,
            ClientCommand::Label(a) => serving::run_label(a).await,
            ClientCommand::Batching(a) => serving::run_batching(a).await,
        }
    });
    // Blocking prompt threads must not keep the process alive.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            ExitCode::from(failure.exit_code)
        }
    }
}

/// Resolves a dataset given by id or by name (the newest of that name).
pub async fn dataset_id(client: &mut client::Client, id_or_name: &str) -> Result<String, Failure> {
    use crate::proto as pb;
    let datasets = client
        .datasets
        .list_datasets(pb::ListDatasetsRequest {})
        .await?
        .into_inner()
        .datasets;
    if datasets.iter().any(|d| d.id == id_or_name) {
        return Ok(id_or_name.to_string());
    }
    datasets
        .iter()
        .filter(|d| d.name == id_or_name)
        .max_by_key(|d| d.created_at.as_ref().map(|t| (t.seconds, t.nanos)))
        .map(|d| d.id.clone())
        .ok_or_else(|| Failure::local(format!("no dataset has the id or name {id_or_name:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_map_to_exit_codes() {
        let f = Failure::from(tonic::Status::invalid_argument("spec.window must be > 0"));
        assert_eq!(f.exit_code, EXIT_CLIENT_ERROR);
        assert_eq!(f.message, "INVALID_ARGUMENT: spec.window must be > 0");
        assert_eq!(
            Failure::from(tonic::Status::not_found("x")).exit_code,
            EXIT_CLIENT_ERROR
        );
        assert_eq!(
            Failure::from(tonic::Status::resource_exhausted("queue full")).exit_code,
            EXIT_SERVER_ERROR
        );
        assert_eq!(
            Failure::from(tonic::Status::internal("x")).message,
            "INTERNAL: x"
        );
    }
}
