//! `lstmd train`: submits a training job and follows it live.
use super::client::ClientArgs;
use super::follow::{follow_to_end, OnInterrupt};
use super::output::{self, Format};
use super::spec_args::{with_flag_names, ConfigArgs, JobTarget, SpecArgs};
use super::Failure;
use crate::proto as pb;

#[derive(clap::Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub target: JobTarget,
    #[command(flatten)]
    pub spec: SpecArgs,
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Print the job and return at once; follow it later with
    /// `lstmd jobs watch`.
    #[arg(long)]
    pub detach: bool,
    /// What Ctrl-C does while following.
    #[arg(long, value_enum, default_value_t = OnInterrupt::Ask)]
    pub on_interrupt: OnInterrupt,
}

pub async fn run(args: TrainArgs) -> Result<(), Failure> {
    let mut client = args.client.connect().await?;
    let (dataset_id, validation_dataset_id) = args.target.resolve(&mut client).await?;
    let request = pb::CreateTrainingJobRequest {
        model_name: args.target.model_name(),
        dataset_id,
        validation_dataset_id,
        spec: Some(args.spec.to_proto()),
        config: Some(args.config.to_proto()),
    };
    let job = client
        .jobs
        .create_training_job(request)
        .await
        .map_err(|e| with_flag_names(e.into()))?
        .into_inner();
    submitted(&job, args.client.output, args.detach)?;
    if args.detach {
        return Ok(());
    }
    follow_to_end(&mut client, &job.id, args.client.output, args.on_interrupt).await
}

/// Reports a new job: its id for people; the Job itself in JSON when the
/// caller detaches (a followed job's events follow instead).
pub fn submitted(job: &pb::Job, format: Format, detach: bool) -> Result<(), Failure> {
    match format {
        Format::Json if detach => output::print_json(job),
        Format::Json => Ok(()),
        Format::Text => {
            println!(
                "job {} submitted: {} model {:?}",
                job.id,
                if job.kind.is_empty() {
                    "training"
                } else {
                    &job.kind
                },
                job.model_name
            );
            if detach {
                println!("follow it with `lstmd jobs watch {}`", job.id);
            }
            Ok(())
        }
    }
}
