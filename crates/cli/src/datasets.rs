//! `lstmd datasets upload|list|show|rm`.
use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::io::AsyncReadExt;

use super::client::ClientArgs;
use super::output::{self, Format};
use super::Failure;
use crate::proto as pb;

#[derive(clap::Args)]
pub struct DatasetsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub action: DatasetsAction,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenizerArg {
    /// UTF-8 text, one token per character.
    Char,
    /// Any bytes, one token per byte.
    Byte,
    /// Little-endian u32 token ids (needs --vocab-size).
    Ids,
}

#[derive(clap::Subcommand)]
pub enum DatasetsAction {
    /// Stream a file to the server, with a byte progress bar.
    Upload(UploadArgs),
    /// All datasets.
    List,
    /// One dataset, by id or name.
    Show {
        /// The dataset's id (`ds-...`) or name.
        dataset: String,
    },
    /// Delete a dataset, by id or name (refused while a job uses it).
    Rm {
        /// The dataset's id (`ds-...`) or name.
        dataset: String,
    },
}

#[derive(clap::Args)]
pub struct UploadArgs {
    /// The file to send: UTF-8 text (char), any bytes (byte) or
    /// little-endian u32 ids (ids).
    pub file: PathBuf,
    /// The dataset's name (default: the file name without extension).
    #[arg(long)]
    pub name: Option<String>,
    /// How the file becomes tokens.
    #[arg(long, value_enum, default_value_t = TokenizerArg::Char)]
    pub tokenizer: TokenizerArg,
    /// For --tokenizer ids: every id is below this.
    #[arg(long, required_if_eq("tokenizer", "ids"))]
    pub vocab_size: Option<u32>,
    /// For --tokenizer char: keep the most frequent characters only.
    #[arg(long)]
    pub max_vocab_size: Option<u32>,
    /// Tokenize with this dataset's vocabulary (id or name) instead of
    /// building one: e.g. a held-out text to pass as
    /// `train --validation-dataset`. Unseen characters become `<unk>`.
    #[arg(long, value_name = "DATASET", conflicts_with_all = ["max_vocab_size", "vocabulary_from_model"])]
    pub vocabulary_from: Option<String>,
    /// Tokenize with this model's vocabulary (its latest version, or
    /// NAME@VERSION).
    #[arg(long, value_name = "MODEL", conflicts_with = "max_vocab_size")]
    pub vocabulary_from_model: Option<String>,
}

/// `NAME` or `NAME@VERSION`.
fn model_vocabulary(model: &str) -> Result<pb::VocabularyFrom, Failure> {
    let (name, version) = match model.split_once('@') {
        Some((name, v)) => (
            name,
            v.parse().map_err(|_| {
                Failure::local(format!(
                    "--vocabulary-from-model must be NAME or NAME@VERSION, got {model:?}"
                ))
            })?,
        ),
        None => (model, 0),
    };
    Ok(pb::VocabularyFrom {
        model: name.to_string(),
        model_version: version,
        ..Default::default()
    })
}

/// Bytes per upload message: well under the server's message limit.
const CHUNK_BYTES: usize = 1 << 20;

pub async fn run(args: DatasetsArgs) -> Result<(), Failure> {
    let format = args.client.output;
    let mut client = args.client.connect().await?;
    match args.action {
        DatasetsAction::Upload(upload) => send_file(&mut client, upload, format).await,
        DatasetsAction::List => list(&mut client, format).await,
        DatasetsAction::Show { dataset } => {
            let id = super::dataset_id(&mut client, &dataset).await?;
            let dataset = client
                .datasets
                .get_dataset(pb::GetDatasetRequest { id })
                .await?
                .into_inner();
            if format == Format::Json {
                return output::print_json(&dataset);
            }
            show(&dataset);
            Ok(())
        }
        DatasetsAction::Rm { dataset } => {
            let id = super::dataset_id(&mut client, &dataset).await?;
            let response = client
                .datasets
                .delete_dataset(pb::DeleteDatasetRequest { id: id.clone() })
                .await?
                .into_inner();
            if format == Format::Json {
                return output::print_json(&response);
            }
            println!("deleted dataset {id}");
            Ok(())
        }
    }
}

/// `datasets upload`: the header from the flags, then the file.
async fn send_file(
    client: &mut super::client::Client,
    args: UploadArgs,
    format: Format,
) -> Result<(), Failure> {
    let UploadArgs {
        file,
        name,
        tokenizer,
        vocab_size,
        max_vocab_size,
        vocabulary_from,
        vocabulary_from_model,
    } = args;
    let vocabulary_from = match (vocabulary_from, vocabulary_from_model) {
        (Some(dataset), _) => Some(pb::VocabularyFrom {
            dataset_id: super::dataset_id(client, &dataset).await?,
            ..Default::default()
        }),
        (None, Some(model)) => Some(model_vocabulary(&model)?),
        (None, None) => None,
    };
    let name = match name {
        Some(n) => n,
        None => file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .ok_or_else(|| Failure::local(format!("{}: no file name", file.display())))?,
    };
    let header = pb::UploadDatasetHeader {
        name,
        tokenizer: match tokenizer {
            // The default: a reused vocabulary brings its own kind.
            TokenizerArg::Char if vocabulary_from.is_some() => pb::Tokenizer::Unspecified,
            TokenizerArg::Char => pb::Tokenizer::Char,
            TokenizerArg::Byte => pb::Tokenizer::Byte,
            TokenizerArg::Ids => pb::Tokenizer::Ids,
        } as i32,
        vocab_size: vocab_size.unwrap_or(0),
        max_vocab_size: max_vocab_size.unwrap_or(0),
        vocabulary_from,
    };
    let dataset = upload(client, &file, header, format).await?;
    if format == Format::Json {
        return output::print_json(&dataset);
    }
    println!("uploaded dataset {} ({})", dataset.id, dataset.name);
    show(&dataset);
    Ok(())
}

/// `datasets list`: a table of every dataset.
async fn list(client: &mut super::client::Client, format: Format) -> Result<(), Failure> {
    let datasets = client
        .datasets
        .list_datasets(pb::ListDatasetsRequest {})
        .await?
        .into_inner();
    if format == Format::Json {
        return output::print_json(&datasets);
    }
    let mut table = output::table(
        &[
            "ID",
            "NAME",
            "TOKENIZER",
            "TOKENS",
            "VOCAB",
            "SIZE",
            "CREATED",
        ],
        &[3, 4, 5],
    );
    for d in &datasets.datasets {
        table.add_row(vec![
            d.id.clone(),
            d.name.clone(),
            output::tokenizer(d.tokenizer),
            d.token_count.to_string(),
            d.vocab_size.to_string(),
            output::bytes(d.size_bytes),
            output::time(&d.created_at),
        ]);
    }
    output::print_table(&table);
    Ok(())
}

/// Streams the header, then the file in chunks, read as they are sent.
async fn upload(
    client: &mut super::client::Client,
    path: &std::path::Path,
    header: pb::UploadDatasetHeader,
    format: Format,
) -> Result<pb::Dataset, Failure> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| Failure::local(format!("{}: {e}", path.display())))?;
    let size = file
        .metadata()
        .await
        .map_err(|e| Failure::local(format!("{}: {e}", path.display())))?
        .len();
    let target = if format == Format::Text && output::is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(size), target);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30.cyan/blue} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let _ = tx
        .send(pb::UploadDatasetRequest {
            part: Some(pb::upload_dataset_request::Part::Header(header)),
        })
        .await;
    let display = path.display().to_string();
    let reader_bar = bar.clone();
    // Reads ahead of the stream by a few chunks; a read error ends the
    // stream early, which the server treats as an interrupted upload.
    let reader = tokio::spawn(async move {
        loop {
            let mut chunk = vec![0u8; CHUNK_BYTES];
            let n = match file.read(&mut chunk).await {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) => return Err(Failure::local(format!("{display}: {e}"))),
            };
            chunk.truncate(n);
            let message = pb::UploadDatasetRequest {
                part: Some(pb::upload_dataset_request::Part::Chunk(chunk)),
            };
            if tx.send(message).await.is_err() {
                return Ok(());
            }
            reader_bar.inc(n as u64);
        }
    });
    let result = client
        .datasets
        .upload_dataset(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    bar.finish_and_clear();
    reader
        .await
        .map_err(|e| Failure::local(format!("reading {}: {e}", path.display())))??;
    Ok(result?.into_inner())
}

fn show(d: &pb::Dataset) {
    println!("Dataset:   {} ({})", d.id, d.name);
    println!("Tokenizer: {}", output::tokenizer(d.tokenizer));
    println!("Tokens:    {}", d.token_count);
    println!("Vocab:     {}", d.vocab_size);
    if d.unknown_tokens > 0 {
        println!(
            "Unknown:   {} characters not in the vocabulary, stored as <unk>",
            d.unknown_tokens
        );
    }
    println!(
        "Size:      {} (source {})",
        output::bytes(d.size_bytes),
        output::bytes(d.source_bytes)
    );
    println!("Created:   {}", output::time(&d.created_at));
    if !d.preview.is_empty() {
        println!("Preview:   {:?}", d.preview);
    }
}
