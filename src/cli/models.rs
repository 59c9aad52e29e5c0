//! `lstmd models list|show|export|import|rm`.
use std::path::{Path, PathBuf};

use super::client::ClientArgs;
use super::output::{self, Format};
use super::Failure;
use crate::proto as pb;

#[derive(clap::Args)]
pub struct ModelsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub action: ModelsAction,
}

/// The two files a model travels as.
const MODEL_FILES: [&str; 2] = ["model.safetensors", "metadata.json"];

#[derive(clap::Subcommand)]
pub enum ModelsAction {
    /// The latest version of every model.
    List,
    /// The Keras-style summary and the training history.
    Show {
        name: String,
        /// A version (default: the latest).
        #[arg(long)]
        version: Option<u32>,
    },
    /// Write model.safetensors and metadata.json (PyTorch loads them).
    Export {
        name: String,
        #[arg(long)]
        version: Option<u32>,
        /// The directory to write into (created if missing).
        #[arg(long, short = 'd', default_value = ".")]
        dir: PathBuf,
    },
    /// Register model.safetensors and metadata.json from a directory as a
    /// new version of NAME.
    Import {
        dir: PathBuf,
        #[arg(long)]
        name: String,
    },
    /// Delete a model: one version, or all of them.
    Rm {
        name: String,
        #[arg(long)]
        version: Option<u32>,
    },
}

pub async fn run(args: ModelsArgs) -> Result<(), Failure> {
    let format = args.client.output;
    let mut client = args.client.connect().await?;
    match args.action {
        ModelsAction::List => {
            let models = client
                .models
                .list_models(pb::ListModelsRequest {})
                .await?
                .into_inner();
            if format == Format::Json {
                return output::print_json(&models);
            }
            let mut table = output::table(
                &[
                    "NAME", "VERSION", "PARAMS", "EPOCHS", "LOSS", "VAL_LOSS", "CREATED",
                ],
                &[1, 2, 3, 4, 5],
            );
            for m in &models.models {
                let last = m.history.last();
                table.add_row(vec![
                    m.name.clone(),
                    m.version.to_string(),
                    m.summary
                        .as_ref()
                        .map(|s| s.total_parameters.to_string())
                        .unwrap_or_default(),
                    m.history.len().to_string(),
                    last.map(|e| format!("{:.4}", e.loss))
                        .unwrap_or_else(|| "-".into()),
                    last.and_then(|e| e.val_loss)
                        .map(|v| format!("{v:.4}"))
                        .unwrap_or_else(|| "-".into()),
                    output::time(&m.created_at),
                ]);
            }
            output::print_table(&table);
            Ok(())
        }
        ModelsAction::Show { name, version } => {
            let model = get(&mut client, &name, version).await?;
            if format == Format::Json {
                return output::print_json(&model);
            }
            show(&model);
            Ok(())
        }
        ModelsAction::Export { name, version, dir } => {
            let (model, written) = export(&mut client, &name, version, &dir).await?;
            if format == Format::Json {
                return output::print_json(&serde_json::json!({
                    "name": model.0,
                    "version": model.1,
                    "files": written,
                }));
            }
            println!("exported {} v{} to {}", model.0, model.1, dir.display());
            for f in written {
                println!("  {f}");
            }
            Ok(())
        }
        ModelsAction::Import { dir, name } => {
            let model = import(&mut client, &dir, &name).await?;
            if format == Format::Json {
                return output::print_json(&model);
            }
            println!("imported {} v{}", model.name, model.version);
            Ok(())
        }
        ModelsAction::Rm { name, version } => {
            let response = client
                .models
                .delete_model(pb::DeleteModelRequest {
                    name: name.clone(),
                    version: version.unwrap_or(0),
                })
                .await?
                .into_inner();
            if format == Format::Json {
                return output::print_json(&response);
            }
            let versions: Vec<String> = response.versions.iter().map(|v| format!("v{v}")).collect();
            println!("deleted {name} {}", versions.join(" "));
            Ok(())
        }
    }
}

pub async fn get(
    client: &mut super::client::Client,
    name: &str,
    version: Option<u32>,
) -> Result<pb::Model, Failure> {
    Ok(client
        .models
        .get_model(pb::GetModelRequest {
            name: name.into(),
            version: version.unwrap_or(0),
        })
        .await?
        .into_inner())
}

fn show(m: &pb::Model) {
    println!("Model: {:?} v{}", m.name, m.version);
    println!(
        "Trained on {} (job {}), vocabulary {} ({} tokens), weights {}, created {}",
        m.dataset_id,
        if m.job_id.is_empty() { "-" } else { &m.job_id },
        m.vocabulary_kind,
        m.vocab_size,
        output::bytes(m.weights_bytes),
        output::time(&m.created_at)
    );
    if let Some(s) = &m.summary {
        println!();
        print_summary(s);
    }
    if !m.history.is_empty() {
        println!();
        output::print_table(&output::history_table(&m.history));
    }
}

/// Keras' `model.summary()` layout.
fn print_summary(s: &pb::ModelSummary) {
    let rule = |c: char| println!("{}", c.to_string().repeat(78));
    rule('_');
    println!(
        " {:<32}{:<28}{:>16}",
        "Layer (type)", "Output Shape", "Param #"
    );
    rule('=');
    for (i, layer) in s.layers.iter().enumerate() {
        let shape: Vec<String> = layer
            .output_shape
            .iter()
            .map(|&d| if d < 0 { "None".into() } else { d.to_string() })
            .collect();
        let params = if layer.keras_parameters != layer.parameters {
            format!("{} ({} Keras)", layer.parameters, layer.keras_parameters)
        } else {
            layer.parameters.to_string()
        };
        println!(
            " {:<32}{:<28}{:>16}",
            format!("{} ({})", layer.name, layer.kind),
            format!("({})", shape.join(", ")),
            params
        );
        if i + 1 < s.layers.len() {
            println!();
        }
    }
    rule('=');
    println!(
        "Total params: {} (Keras counts {})",
        s.total_parameters, s.keras_total_parameters
    );
    println!("Trainable params: {}", s.trainable_parameters);
    println!("Non-trainable params: {}", s.non_trainable_parameters);
    rule('_');
}

/// Streams the export into DIR, each file through a temporary file renamed
/// into place once complete.
async fn export(
    client: &mut super::client::Client,
    name: &str,
    version: Option<u32>,
    dir: &Path,
) -> Result<((String, u32), Vec<String>), Failure> {
    let local = |e: std::io::Error| Failure::local(format!("{}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(local)?;
    let mut stream = client
        .models
        .export_model(pb::ExportModelRequest {
            name: name.into(),
            version: version.unwrap_or(0),
        })
        .await?
        .into_inner();
    let mut model = (name.to_string(), 0);
    let mut files: Vec<(String, tempfile::NamedTempFile)> = Vec::new();
    while let Some(chunk) = stream.message().await? {
        if chunk.version > 0 {
            model = (chunk.name.clone(), chunk.version);
        }
        if !MODEL_FILES.contains(&chunk.file.as_str()) {
            return Err(Failure::unreachable(format!(
                "the server sent an unexpected file {:?}",
                chunk.file
            )));
        }
        if files.last().map(|f| f.0 != chunk.file).unwrap_or(true) {
            files.push((
                chunk.file.clone(),
                tempfile::NamedTempFile::new_in(dir).map_err(local)?,
            ));
        }
        let file = &mut files.last_mut().expect("pushed above").1;
        std::io::Write::write_all(file, &chunk.data).map_err(local)?;
    }
    let mut written = Vec::new();
    for (file, tmp) in files {
        let path = dir.join(&file);
        tmp.persist(&path).map_err(|e| local(e.error))?;
        written.push(path.display().to_string());
    }
    Ok((model, written))
}

async fn import(
    client: &mut super::client::Client,
    dir: &Path,
    name: &str,
) -> Result<pb::Model, Failure> {
    let mut messages = Vec::new();
    for file in MODEL_FILES {
        let path = dir.join(file);
        let bytes =
            std::fs::read(&path).map_err(|e| Failure::local(format!("{}: {e}", path.display())))?;
        // 1 MiB chunks, as the server exports.
        for (i, data) in bytes.chunks(1 << 20).enumerate() {
            messages.push(pb::ImportModelChunk {
                name: if messages.is_empty() && i == 0 {
                    name.into()
                } else {
                    String::new()
                },
                file: file.into(),
                data: data.to_vec(),
            });
        }
    }
    Ok(client
        .models
        .import_model(tokio_stream::iter(messages))
        .await?
        .into_inner())
}
