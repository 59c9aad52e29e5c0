//! The `lstmd` command line as a whole: `serve` and the client
//! subcommands, with the client options accepted before the subcommand too
//! (`lstmd --server HOST:PORT models list`).
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::cli::{ClientArgs, ClientCommand, CLIENT_HEADING};
use std::path::PathBuf;

use anyhow::Context;

use crate::config::{ServeArgs, StoreArgs};
use crate::store::copy::copy_data_dir;
use crate::store::{backends, LocalStore};

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
    #[command(flatten)]
    pub stores: StoreArgs,
    /// Also copy a single-node data dir (not in use) into the cluster
    /// stores, which must be empty: every dataset, model, job and event.
    #[arg(long)]
    pub from_data_dir: Option<PathBuf>,
}

/// `lstmd migrate`: applies the migrations the database lacks (printing
/// them), then copies `--from-data-dir` when given.
pub fn migrate(args: &MigrateArgs) -> anyhow::Result<()> {
    use crate::store::postgres::{schema_version, PgRecords};
    let records = args
        .stores
        .records
        .as_deref()
        .context("--records (or LSTMD_RECORDS) names the database to migrate")?;
    let (_, applied) = PgRecords::connect(records, args.stores.records_ca_file.as_deref())?;
    let known = schema_version();
    if applied.is_empty() {
        println!("database schema up to date (version {known})");
    } else {
        println!("applied migrations {applied:?}; database schema at version {known}");
    }
    let Some(data_dir) = &args.from_data_dir else {
        return Ok(());
    };
    anyhow::ensure!(
        args.stores.blobs.is_some(),
        "--from-data-dir needs --blobs, where the data dir's files go"
    );
    let from = LocalStore::open(data_dir).with_context(|| {
        format!(
            "cannot open data dir {} (is a server using it?)",
            data_dir.display()
        )
    })?;
    let scratch = tempfile::tempdir()?;
    let to = backends::open(&args.stores.urls(scratch.path()))?;
    let copied = copy_data_dir(&from, to.store.as_ref())?;
    println!(
        "copied {} records and {} blobs ({} bytes) from {}",
        copied.records,
        copied.blobs,
        copied.bytes,
        data_dir.display()
    );
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
