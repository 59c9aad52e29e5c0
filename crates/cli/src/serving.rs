//! `lstmd label` (point a version label at a version, or remove it) and
//! `lstmd batching` (a model's own dynamic batching).
use super::client::ClientArgs;
use super::output::{self, Format};
use super::Failure;
use crate::proto as pb;

#[derive(clap::Args)]
pub struct LabelArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The model name.
    pub name: String,
    /// The label, e.g. stable or canary.
    pub label: String,
    /// The version the label names from now on (loaded and run once before
    /// the label moves).
    #[arg(required_unless_present = "remove")]
    pub version: Option<u32>,
    /// Remove the label instead.
    #[arg(long, conflicts_with = "version")]
    pub remove: bool,
}

#[derive(clap::Args)]
pub struct BatchingArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The model name (every version).
    pub name: String,
    /// Sequences merged into one forward pass (1 = no batching).
    #[arg(long)]
    pub max_batch: Option<u32>,
    /// Microseconds the first request of a batch waits for others.
    #[arg(long)]
    pub max_delay_us: Option<u64>,
}

pub async fn run_label(args: LabelArgs) -> Result<(), Failure> {
    let format = args.client.output;
    let mut client = args.client.connect().await?;
    let answer = client
        .models
        .set_model_label(pb::SetModelLabelRequest {
            name: args.name.clone(),
            label: args.label.clone(),
            version: args.version.unwrap_or(0),
        })
        .await?
        .into_inner();
    if format == Format::Json {
        return output::print_json(&answer);
    }
    let before = match answer.previous_version {
        0 => "unset".to_string(),
        v => format!("v{v}"),
    };
    let after = args
        .version
        .map_or("removed".to_string(), |v| format!("v{v}"));
    println!("{} {}: {before} -> {after}", args.name, args.label);
    Ok(())
}

pub async fn run_batching(args: BatchingArgs) -> Result<(), Failure> {
    let format = args.client.output;
    let mut client = args.client.connect().await?;
    let answer = client
        .models
        .set_model_batching(pb::SetModelBatchingRequest {
            name: args.name.clone(),
            max_batch: args.max_batch,
            max_delay_us: args.max_delay_us,
        })
        .await?
        .into_inner();
    if format == Format::Json {
        return output::print_json(&answer);
    }
    println!(
        "{}: max batch {}, max delay {} us",
        args.name, answer.max_batch, answer.max_delay_us
    );
    Ok(())
}
