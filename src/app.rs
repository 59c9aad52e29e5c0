//! The `lstmd` command line as a whole: `serve` and the client
//! subcommands, with the client options accepted before the subcommand too
//! (`lstmd --server HOST:PORT models list`).
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::cli::{ClientArgs, ClientCommand, CLIENT_HEADING};
use crate::config::ServeArgs;

#[derive(Parser)]
#[command(
    name = "lstmd",
    version,
    about = "Train and serve recurrent next-token models over gRPC",
    after_help = "Client commands talk to --server (env LSTMD_SERVER, default 127.0.0.1:50051);\n\
        the client options go before or after the subcommand.\n\
        Exit codes: 0 success, 1 a job failed or was cancelled, 2 client error, 3 server error."
)]
pub struct Cli {
    /// The client options, global: each subcommand also declares them, and
    /// clap hands a value given here down to it.
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the gRPC service.
    Serve(ServeArgs),
    #[command(flatten)]
    Client(ClientCommand),
}

/// The command tree, with the client options hidden from `serve`, which
/// ignores them (global options reach every subcommand).
pub fn command() -> clap::Command {
    let mut cmd = Cli::command();
    cmd.build();
    cmd.mut_subcommand("serve", |serve| {
        serve.mut_args(|arg| {
            if arg.is_global_set() && arg.get_help_heading() == Some(CLIENT_HEADING) {
                arg.hide(true)
            } else {
                arg
            }
        })
    })
}

/// Parses the process's arguments; prints help or the error and exits on
/// a bad command line, as clap does.
pub fn parse() -> Cli {
    let matches = command().get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}
