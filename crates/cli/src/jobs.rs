//! `lstmd jobs list|show|watch|cancel`.
use super::client::ClientArgs;
use super::follow::{follow_to_end, OnInterrupt};
use super::output::{self, Format};
use super::Failure;
use crate::proto as pb;

#[derive(clap::Args)]
pub struct JobsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub action: JobsAction,
}

#[derive(clap::Subcommand)]
pub enum JobsAction {
    /// Jobs, in the order the server lists them.
    List {
        /// Only jobs in this state: queued, running, succeeded, failed,
        /// cancelled.
        #[arg(long, value_parser = parse_state)]
        state: Option<pb::JobState>,
    },
    /// A job: spec, config, state, history (and trials for tuning jobs).
    Show {
        /// The job's id (`job-...`).
        id: String,
    },
    /// Follow a job's progress until it ends.
    Watch {
        /// The job's id (`job-...`).
        id: String,
        /// What Ctrl-C does.
        #[arg(long, value_enum, default_value_t = OnInterrupt::Detach)]
        on_interrupt: OnInterrupt,
    },
    /// Cancel a queued or running job.
    Cancel {
        /// The job's id (`job-...`).
        id: String,
    },
}

fn parse_state(s: &str) -> Result<pb::JobState, String> {
    pb::JobState::from_str_name(&format!("JOB_STATE_{}", s.to_ascii_uppercase()))
        .filter(|s| *s != pb::JobState::Unspecified)
        .ok_or_else(|| {
            format!("must be queued, running, succeeded, failed or cancelled, got {s:?}")
        })
}

pub async fn run(args: JobsArgs) -> Result<(), Failure> {
    let format = args.client.output;
    let mut client = args.client.connect().await?;
    match args.action {
        JobsAction::List { state } => {
            let mut jobs = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = client
                    .jobs
                    .list_jobs(pb::ListJobsRequest {
                        state: state.map(|s| s as i32).unwrap_or(0),
                        page_size: 0,
                        page_token,
                    })
                    .await?
                    .into_inner();
                jobs.extend(page.jobs);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            if format == Format::Json {
                return output::print_json(&pb::ListJobsResponse {
                    jobs,
                    next_page_token: String::new(),
                });
            }
            let mut table = output::table(
                &["ID", "KIND", "STATE", "MODEL", "EPOCHS", "LOSS", "CREATED"],
                &[4, 5],
            );
            for job in &jobs {
                let last = job.history.last();
                let epochs = job.config.as_ref().and_then(|c| c.epochs).unwrap_or(0);
                table.add_row(vec![
                    job.id.clone(),
                    job.kind.clone(),
                    output::job_state(job.state),
                    job.model_name.clone(),
                    format!("{}/{}", last.map(|m| m.epoch).unwrap_or(0), epochs),
                    last.map(|m| format!("{:.4}", m.loss))
                        .unwrap_or_else(|| "-".into()),
                    output::time(&job.created_at),
                ]);
            }
            output::print_table(&table);
            Ok(())
        }
        JobsAction::Show { id } => {
            let job = client
                .jobs
                .get_job(pb::GetJobRequest { id })
                .await?
                .into_inner();
            if format == Format::Json {
                return output::print_json(&job);
            }
            show(&job);
            Ok(())
        }
        JobsAction::Watch { id, on_interrupt } => {
            follow_to_end(&mut client, &id, format, on_interrupt).await
        }
        JobsAction::Cancel { id } => {
            let job = client
                .jobs
                .cancel_job(pb::CancelJobRequest { id })
                .await?
                .into_inner();
            if format == Format::Json {
                return output::print_json(&job);
            }
            println!("{}", cancel_line(&job));
            Ok(())
        }
    }
}

/// What CancelJob did: a running job only stops at its next batch, so its
/// state still reads `running`; say that it is being cancelled.
fn cancel_line(job: &pb::Job) -> String {
    if job.state == pb::JobState::Running as i32 {
        format!(
            "job {}: cancelling (it stops at its next batch, keeping its last checkpoint; \
             `lstmd jobs watch {}` follows it to the end)",
            job.id, job.id
        )
    } else {
        format!("job {}: {}", job.id, output::job_state(job.state))
    }
}

fn show(job: &pb::Job) {
    println!("Job:        {} ({})", job.id, job.kind);
    println!("State:      {}", output::job_state(job.state));
    if !job.error.is_empty() {
        println!("Error:      {}", job.error);
    }
    println!("Model:      {}", job.model_name);
    if let Some(m) = &job.model {
        println!("Registered: {} v{}", m.name, m.version);
    }
    println!("Dataset:    {}", job.dataset_id);
    if !job.validation_dataset_id.is_empty() {
        println!("Validation: {}", job.validation_dataset_id);
    }
    if !job.parent_id.is_empty() {
        println!("Parent:     {}", job.parent_id);
    }
    println!("Created:    {}", output::time(&job.created_at));
    println!("Started:    {}", output::time(&job.started_at));
    println!("Finished:   {}", output::time(&job.finished_at));
    if !job.history.is_empty() {
        println!();
        output::print_table(&output::history_table(&job.history));
    }
    if !job.trials.is_empty() {
        println!();
        output::print_table(&super::leaderboard::trials_table(&job.trials));
    }
}
