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
        /// The model's name.
        name: String,
        /// A version (default: the latest).
        #[arg(long)]
        version: Option<u32>,
    },
    /// Write the model's files: model.safetensors and metadata.json
    /// (PyTorch loads them), NAME.keras (Keras 3), or NAME/VERSION/model.onnx
    /// with NAME/config.pbtxt (onnxruntime, Triton's model repository).
    Export {
        /// The model's name.
        name: String,
        /// A version (default: the latest).
        #[arg(long)]
        version: Option<u32>,
        /// The directory to write into (created if missing).
        #[arg(long, short = 'd', default_value = ".")]
        dir: PathBuf,
        /// safetensors (PyTorch), keras (Keras 3) or onnx (onnxruntime, Triton).
        #[arg(long, default_value = "safetensors", value_parser = ["safetensors", "keras", "onnx"])]
        format: String,
    },
    /// Register a model as a new version of NAME: a directory holding
    /// model.safetensors and metadata.json, a Keras 3 `.keras` archive, or
    /// a Keras `.weights.h5` with the model's spec given by the flags.
    Import {
        /// A directory holding model.safetensors and metadata.json, a Keras 3
        /// `.keras` archive, or a Keras `.weights.h5` (with the spec flags).
        path: PathBuf,
        /// The model to add the version to (created if new).
        #[arg(long)]
        name: String,
        /// For a .weights.h5: the Keras model's architecture.
        #[command(flatten)]
        spec: super::spec_args::SpecArgs,
    },
    /// Delete a model: one version, or all of them.
    Rm {
        /// The model's name.
        name: String,
        /// Only this version (default: every version).
        #[arg(long)]
        version: Option<u32>,
    },
}

pub async fn run(args: ModelsArgs) -> Result<(), Failure> {
    let format = args.client.output;
    let mut client = args.client.connect().await?;
    match args.action {
        ModelsAction::List => list(&mut client, format).await,
        ModelsAction::Show { name, version } => {
            let model = get(&mut client, &name, version).await?;
            if format == Format::Json {
                return output::print_json(&model);
            }
            show(&model);
            Ok(())
        }
        ModelsAction::Export {
            name,
            version,
            dir,
            format: file_format,
        } => {
            let (model, written) = export(&mut client, &name, version, &dir, &file_format).await?;
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
        ModelsAction::Import { path, name, spec } => {
            let model = import(&mut client, &path, &name, &spec).await?;
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

/// `models list`: a table of every version of every model.
async fn list(client: &mut super::client::Client, format: Format) -> Result<(), Failure> {
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
    // A model trained on raw ids has no text vocabulary, only a size.
    let vocabulary = if m.vocabulary_kind.is_empty() {
        format!("token ids below {} (no text vocabulary)", m.vocab_size)
    } else {
        format!("vocabulary {} ({} tokens)", m.vocabulary_kind, m.vocab_size)
    };
    println!(
        "Trained on {} (job {}), {vocabulary}, weights {}, created {}",
        m.dataset_id,
        if m.job_id.is_empty() { "-" } else { &m.job_id },
        output::bytes(m.weights_bytes),
        output::time(&m.created_at)
    );
    if let Some(c) = &m.context {
        println!("Answers from: {}", context_line(c));
    }
    if let Some(s) = &m.summary {
        println!();
        print_summary(s);
    }
    if !m.history.is_empty() {
        println!();
        output::print_table(&output::history_table(&m.history));
    }
}

/// What Predict, Generate and sessions read of an input (GetModel's
/// `context`).
fn context_line(c: &pb::InferenceContext) -> String {
    match (c.kind.as_str(), c.loss_positions.as_str()) {
        ("stateful", _) => {
            "the whole input, then its carried state (stateful: one step per token)".into()
        }
        (_, "last") => format!(
            "the last {} tokens (trained on the last position: give it {} tokens)",
            c.window, c.window
        ),
        _ => format!(
            "the last {} tokens (trained on every position: any 1..={} tokens)",
            c.window, c.window
        ),
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

/// Where an exported file goes under DIR: lstmd's two files as they are,
/// NAME.keras, and Triton's layout NAME/config.pbtxt + NAME/VERSION/model.onnx.
fn local_path(dir: &Path, name: &str, version: u32, file: &str) -> Option<PathBuf> {
    // The name comes from the server: used as a path part only when it is
    // one plain file name (the server's own names always are).
    let mut parts = Path::new(name).components();
    let plain =
        matches!(parts.next(), Some(std::path::Component::Normal(_))) && parts.next().is_none();
    if !plain || name.starts_with('.') {
        return None;
    }
    match file {
        "model.safetensors" | "metadata.json" => Some(dir.join(file)),
        "model.keras" => Some(dir.join(format!("{name}.keras"))),
        "model.onnx" => Some(dir.join(name).join(version.to_string()).join(file)),
        "config.pbtxt" => Some(dir.join(name).join(file)),
        _ => None,
    }
}

/// Streams the export into DIR, each file through a temporary file renamed
/// into place once complete.
async fn export(
    client: &mut super::client::Client,
    name: &str,
    version: Option<u32>,
    dir: &Path,
    format: &str,
) -> Result<((String, u32), Vec<String>), Failure> {
    let local = |e: std::io::Error| Failure::local(format!("{}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(local)?;
    let mut stream = client
        .models
        .export_model(pb::ExportModelRequest {
            name: name.into(),
            version: version.unwrap_or(0),
            format: format.into(),
        })
        .await?
        .into_inner();
    let mut model = (name.to_string(), 0);
    let mut files: Vec<(String, PathBuf, tempfile::NamedTempFile)> = Vec::new();
    while let Some(chunk) = stream.message().await? {
        if chunk.version > 0 && !chunk.name.is_empty() {
            model = (chunk.name.clone(), chunk.version);
        }
        if files.last().map(|f| f.0 != chunk.file).unwrap_or(true) {
            let path = local_path(dir, &model.0, model.1, &chunk.file).ok_or_else(|| {
                Failure::unreachable(format!(
                    "the server sent an unexpected file {:?}",
                    chunk.file
                ))
            })?;
            let parent = path.parent().unwrap_or(dir);
            std::fs::create_dir_all(parent).map_err(local)?;
            let tmp = output::temp_file_in(parent, "").map_err(local)?;
            files.push((chunk.file.clone(), path, tmp));
        }
        let file = &mut files.last_mut().expect("pushed above").2;
        std::io::Write::write_all(file, &chunk.data).map_err(local)?;
    }
    let mut written = Vec::new();
    for (_, path, tmp) in files {
        tmp.persist(&path).map_err(|e| local(e.error))?;
        written.push(path.display().to_string());
    }
    Ok((model, written))
}

/// The files an import sends: (name the server knows, local path).
fn import_files(path: &Path) -> Result<Vec<(&'static str, PathBuf)>, Failure> {
    let file_name = path.file_name().and_then(|f| f.to_str()).unwrap_or("");
    if path.is_dir() {
        Ok(MODEL_FILES.iter().map(|f| (*f, path.join(f))).collect())
    } else if file_name.ends_with(".keras") {
        Ok(vec![("model.keras", path.to_path_buf())])
    } else if file_name.ends_with(".h5") {
        Ok(vec![("model.weights.h5", path.to_path_buf())])
    } else {
        Err(Failure::local(format!(
            "{}: expected a directory holding {}, a .keras archive or a .weights.h5 file",
            path.display(),
            MODEL_FILES.join(" and ")
        )))
    }
}

async fn import(
    client: &mut super::client::Client,
    source: &Path,
    name: &str,
    spec: &super::spec_args::SpecArgs,
) -> Result<pb::Model, Failure> {
    let mut messages = Vec::new();
    for (file, path) in import_files(source)? {
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
                spec: (file == "model.weights.h5" && messages.is_empty()).then(|| spec.to_proto()),
            });
        }
    }
    Ok(client
        .models
        .import_model(tokio_stream::iter(messages))
        .await?
        .into_inner())
}
