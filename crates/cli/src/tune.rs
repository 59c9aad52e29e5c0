//! `lstmd tune`: submits a hyperparameter search and follows it with a live
//! leaderboard.
use super::client::ClientArgs;
use super::follow::{follow_to_end, OnInterrupt};
use super::spec_args::{parse_cell, with_flag_names, ConfigArgs, JobTarget, SpecArgs};
use super::Failure;
use crate::proto as pb;

#[derive(clap::Args)]
pub struct TuneArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub target: JobTarget,
    #[command(flatten)]
    pub spec: SpecArgs,
    #[command(flatten)]
    pub config: ConfigArgs,
    #[command(flatten)]
    pub space: SpaceArgs,
    /// grid, random or hyperband.
    #[arg(long, help_heading = "Search")]
    pub strategy: Option<String>,
    /// Trials to run at most (random and hyperband; a grid runs every
    /// combination).
    #[arg(long, help_heading = "Search")]
    pub max_trials: Option<u32>,
    /// Trials training at once.
    #[arg(long, help_heading = "Search")]
    pub parallel_trials: Option<u32>,
    /// val_loss (default) or val_accuracy.
    #[arg(long, help_heading = "Search")]
    pub objective: Option<String>,
    /// Seeds the sampling of random and hyperband searches.
    #[arg(long, help_heading = "Search")]
    pub search_seed: Option<u64>,
    /// hyperband: the epochs the surviving trials reach.
    #[arg(long, help_heading = "Search")]
    pub max_epochs: Option<u32>,
    /// hyperband: keep the best 1/N of the trials at each rung.
    #[arg(long, help_heading = "Search")]
    pub reduction_factor: Option<u32>,
    /// Keep every trial's model (MODEL.trial-N).
    #[arg(long, help_heading = "Search")]
    pub keep_trial_models: bool,
    /// Print the job and return at once.
    #[arg(long)]
    pub detach: bool,
    /// What Ctrl-C does while following.
    #[arg(long, value_enum, default_value_t = OnInterrupt::Ask)]
    pub on_interrupt: OnInterrupt,
}

/// The search space: each flag takes choices (`32,64,128`) or a range
/// (`0.0..0.5`).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct SpaceArgs {
    /// Units of every recurrent layer, e.g. `32,64,128` or `16..256`.
    #[arg(long, value_parser = parse_space, help_heading = "Search space")]
    pub search_units: Option<pb::ParamSpace>,
    /// Recurrent layers in the stack, e.g. `1,2`.
    #[arg(long, value_parser = parse_space, help_heading = "Search space")]
    pub search_layers: Option<pb::ParamSpace>,
    /// Cells to try, e.g. `lstm,gru`.
    #[arg(long, value_delimiter = ',', value_parser = parse_cell, help_heading = "Search space")]
    pub search_cells: Vec<pb::Cell>,
    /// e.g. `false,true`.
    #[arg(long, value_delimiter = ',', help_heading = "Search space")]
    pub search_bidirectional: Vec<bool>,
    /// Dropout after every recurrent layer, e.g. `0.2,0.5` or `0.0..0.5`.
    #[arg(long, value_parser = parse_space, help_heading = "Search space")]
    pub search_dropout: Option<pb::ParamSpace>,
    /// Learning rates, e.g. `0.001,0.01` or `1e-4..1e-2` (a range is
    /// sampled log-uniformly by the server).
    #[arg(long, value_parser = parse_space, help_heading = "Search space")]
    pub search_learning_rate: Option<pb::ParamSpace>,
    /// Windows per step, e.g. `32,64`.
    #[arg(long, value_parser = parse_space, help_heading = "Search space")]
    pub search_batch_size: Option<pb::ParamSpace>,
    /// Embedding widths, e.g. `8,16,32`.
    #[arg(long, value_parser = parse_space, help_heading = "Search space")]
    pub search_embedding_dim: Option<pb::ParamSpace>,
}

impl SpaceArgs {
    fn to_proto(&self) -> pb::SearchSpace {
        pb::SearchSpace {
            units: self.search_units.clone(),
            num_layers: self.search_layers.clone(),
            cells: self.search_cells.iter().map(|&c| c as i32).collect(),
            bidirectional: self.search_bidirectional.clone(),
            dropout: self.search_dropout.clone(),
            learning_rate: self.search_learning_rate.clone(),
            batch_size: self.search_batch_size.clone(),
            embedding_dim: self.search_embedding_dim.clone(),
        }
    }
}

/// `32,64,128` (choices) or `0.0001..0.01` (a range).
fn parse_space(s: &str) -> Result<pb::ParamSpace, String> {
    let number = |v: &str| {
        v.trim()
            .parse::<f64>()
            .map_err(|_| format!("expected numbers as A,B,C or a range MIN..MAX, got {s:?}"))
    };
    if let Some((min, max)) = s.split_once("..") {
        return Ok(pb::ParamSpace {
            choices: vec![],
            min: Some(number(min)?),
            max: Some(number(max)?),
        });
    }
    Ok(pb::ParamSpace {
        choices: s.split(',').map(number).collect::<Result<_, _>>()?,
        min: None,
        max: None,
    })
}

pub async fn run(args: TuneArgs) -> Result<(), Failure> {
    let mut client = args.client.connect().await?;
    let (dataset_id, validation_dataset_id) = args.target.resolve(&mut client).await?;
    let request = pb::CreateTuningJobRequest {
        model_name: args.target.model_name(),
        dataset_id,
        validation_dataset_id,
        spec: Some(args.spec.to_proto()),
        config: Some(args.config.to_proto()),
        search_space: Some(args.space.to_proto()),
        strategy: args.strategy.clone().unwrap_or_default(),
        max_trials: args.max_trials.unwrap_or(0),
        parallel_trials: args.parallel_trials.unwrap_or(0),
        objective: args.objective.clone().unwrap_or_default(),
        seed: args.search_seed.unwrap_or(0),
        max_epochs: args.max_epochs.unwrap_or(0),
        reduction_factor: args.reduction_factor.unwrap_or(0),
        keep_trial_models: args.keep_trial_models,
    };
    let job = client
        .jobs
        .create_tuning_job(request)
        .await
        .map_err(|e| with_flag_names(e.into()))?
        .into_inner();
    super::train::submitted(&job, args.client.output, args.detach)?;
    if args.detach {
        return Ok(());
    }
    follow_to_end(&mut client, &job.id, args.client.output, args.on_interrupt).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_spaces() {
        let c = parse_space("32,64").unwrap();
        assert_eq!((c.choices, c.min, c.max), (vec![32.0, 64.0], None, None));
        let r = parse_space("0.001..0.1").unwrap();
        assert_eq!((r.min, r.max), (Some(0.001), Some(0.1)));
        assert!(parse_space("a,b").unwrap_err().contains("MIN..MAX"));
    }
}
