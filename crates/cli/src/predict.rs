//! `lstmd predict` and `lstmd generate`.
use std::io::Write;

use super::client::{Client, ClientArgs};
use super::output::{self, Format};
use super::Failure;
use crate::proto as pb;

/// The model and how inputs are read.
#[derive(clap::Args)]
pub struct ModelInput {
    /// The model's name.
    #[arg(long)]
    pub model: String,
    /// A version (default: the latest).
    #[arg(long)]
    pub version: Option<u32>,
    /// Read inputs as token ids (`3,1,4` or `3 1 4`); the default for models
    /// without a text vocabulary.
    #[arg(long)]
    pub ids: bool,
}

#[derive(clap::Args)]
pub struct PredictArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub input: ModelInput,
    /// Next tokens to show per input.
    #[arg(long, default_value_t = 5)]
    pub top_k: u32,
    /// One or more inputs, each a text or a list of ids; one batch.
    #[arg(required = true)]
    pub inputs: Vec<String>,
}

#[derive(clap::Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub input: ModelInput,
    /// Tokens to sample.
    #[arg(long, default_value_t = 100)]
    pub max_tokens: u32,
    /// Softmax temperature (0 = always the likeliest token).
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Sample among the k likeliest tokens only (0 = all).
    #[arg(long, default_value_t = 0)]
    pub top_k: u32,
    /// The same seed gives the same tokens.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop after sampling this id (repeatable).
    #[arg(long = "stop-id")]
    pub stop_ids: Vec<u32>,
    /// The prompt: a text, or ids.
    pub prompt: String,
}

impl ModelInput {
    /// The model (its latest version unless one is named) and whether its
    /// inputs are ids.
    async fn resolve(&self, client: &mut Client) -> Result<(pb::Model, bool), Failure> {
        let model = super::models::get(client, &self.model, self.version).await?;
        let ids = self.ids || model.vocabulary_kind.is_empty();
        Ok((model, ids))
    }
}

fn sequence(input: &str, ids: bool) -> Result<pb::Sequence, Failure> {
    if !ids {
        return Ok(pb::Sequence {
            ids: vec![],
            text: input.to_string(),
        });
    }
    let ids = input
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<u32>()
                .map_err(|_| Failure::local(format!("token ids must be whole numbers, got {s:?}")))
        })
        .collect::<Result<_, _>>()?;
    Ok(pb::Sequence {
        ids,
        text: String::new(),
    })
}

/// A token for people: its text quoted, or its id.
fn token(t: &pb::TokenProbability) -> String {
    if t.text.is_empty() {
        format!("#{}", t.id)
    } else {
        format!("{:?}", t.text)
    }
}

pub async fn run_predict(args: PredictArgs) -> Result<(), Failure> {
    let format = args.client.output;
    let mut client = args.client.connect().await?;
    let (model, ids) = args.input.resolve(&mut client).await?;
    let sequences = args
        .inputs
        .iter()
        .map(|i| sequence(i, ids))
        .collect::<Result<_, _>>()?;
    let response = client
        .predict
        .predict(pb::PredictRequest {
            model: model.name.clone(),
            version: model.version,
            sequences,
            top_k: Some(args.top_k),
            ..Default::default()
        })
        .await?
        .into_inner();
    if format == Format::Json {
        return output::print_json(&response);
    }
    for (input, prediction) in args.inputs.iter().zip(&response.predictions) {
        println!(
            "{input:?} -> (model {} v{})",
            response.model, response.version
        );
        let mut table = output::table(&["RANK", "TOKEN", "ID", "PROBABILITY"], &[0, 2, 3]);
        for (rank, t) in prediction.top.iter().enumerate() {
            table.add_row(vec![
                (rank + 1).to_string(),
                token(t),
                t.id.to_string(),
                format!("{:.4}", t.probability),
            ]);
        }
        output::print_table(&table);
    }
    Ok(())
}

pub async fn run_generate(args: GenerateArgs) -> Result<(), Failure> {
    let format = args.client.output;
    let mut client = args.client.connect().await?;
    let (model, ids) = args.input.resolve(&mut client).await?;
    let mut stream = client
        .predict
        .generate(pb::GenerateRequest {
            model: model.name.clone(),
            version: model.version,
            prompt: Some(sequence(&args.prompt, ids)?),
            max_tokens: args.max_tokens,
            temperature: args.temperature,
            top_k: args.top_k,
            seed: args.seed,
            stop_ids: args.stop_ids.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut stdout = std::io::stdout();
    if format == Format::Text {
        print!("{}", args.prompt);
    }
    while let Some(response) = stream.message().await? {
        if format == Format::Json {
            output::print_json(&response)?;
            continue;
        }
        if let Some(t) = &response.token {
            if ids {
                print!(" {}", t.id);
            } else {
                print!("{}", t.text);
            }
            // Each token as it comes.
            let _ = stdout.flush();
        }
    }
    if format == Format::Text {
        println!();
    }
    Ok(())
}
