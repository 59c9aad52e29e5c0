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

// Parsed once at start: the small Migrate variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum Command {
    /// Run the gRPC service.
    Serve(ServeArgs),
    /// Apply the database migrations a release needs, then exit (`serve`
    /// applies them too; run this first to upgrade the schema on its own,
    /// e.g. from a Kubernetes Job before a rolling update).
    Migrate(MigrateArgs),
    #[command(flatten)]
    Client(ClientCommand),
}

#[derive(clap::Args)]
pub struct MigrateArgs {
    /// The database: `postgres://user:password@host:port/db`.
    #[arg(long, env = "LSTMD_RECORDS")]
    pub records: String,
}

/// `lstmd migrate`: prints the migrations applied (none when up to date).
pub fn migrate(args: &MigrateArgs) -> anyhow::Result<()> {
    let (_, applied) = crate::store::postgres::PgRecords::connect(&args.records)?;
    let known = crate::store::postgres::schema_version();
    if applied.is_empty() {
        println!("database schema up to date (version {known})");
    } else {
        println!("applied migrations {applied:?}; database schema at version {known}");
    }
    Ok(())
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
