//! ModelService.
use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::blocking::blocking;
use super::convert::{config_to_proto, metrics_to_proto, spec_request, spec_to_proto, timestamp};
use super::status::OrStatus;
use super::stream_end::{check_clean_end, let_transport_see_resets, RequestEnd};
use crate::error::{check_name, shown};
use crate::interop::formats::{export_files, ExportFormat, ImportFiles};
use crate::nn::metadata::validate_import;
use crate::nn::metadata::ModelInfo;
use crate::nn::summary::summarize;
use crate::nn::{InferenceContext, SpecLimits};
use crate::predict::Predictor;
use crate::proto as pb;
use crate::proto::model_service_server::ModelService;
use crate::store::{now_millis, Listing, ModelRegistry};
use crate::train::TrainConfig;

pub struct ModelApi {
    pub registry: Arc<ModelRegistry>,
    pub predictor: Arc<Predictor>,
    pub spec_limits: SpecLimits,
    /// Largest model an ImportModel stream may carry, in bytes.
    pub max_import_bytes: usize,
}

const EXPORT_CHUNK: usize = 1 << 20;

fn not_found(name: &str, version: Option<u32>) -> Status {
    let name = shown(name);
    Status::not_found(match version {
        Some(v) => format!("name {name} version {v} names no model"),
        None => format!("name {name} names no model"),
    })
}

/// A registered version as the API shows it.
fn model_to_proto(listing: &Listing) -> Result<pb::Model, Status> {
    let (meta, weights_bytes) = (&listing.metadata, listing.weights_bytes);
    let info = ModelInfo::from_map(&meta.rest).map_err(|e| {
        Status::internal(format!(
            "model {}@{} metadata is unreadable: {e}",
            meta.name, meta.version
        ))
    })?;
    let summary = summarize(&info.spec);
    let config: Option<TrainConfig> = serde_json::from_value(info.training.clone()).ok();
    Ok(pb::Model {
        name: meta.name.clone(),
        version: meta.version,
        created_at: Some(timestamp(info.created_at_ms)),
        spec: Some(spec_to_proto(&info.spec)),
        config: config.as_ref().map(config_to_proto),
        history: info.history.iter().map(metrics_to_proto).collect(),
        summary: Some(pb::ModelSummary {
            layers: summary
                .layers
                .iter()
                .map(|r| pb::LayerSummary {
                    name: r.name.clone(),
                    kind: r.kind.clone(),
                    output_shape: r.output_shape.clone(),
                    parameters: r.parameters,
                    keras_parameters: r.keras_parameters,
                })
                .collect(),
            total_parameters: summary.total_parameters,
            trainable_parameters: summary.total_parameters,
            non_trainable_parameters: 0,
            keras_total_parameters: summary.keras_total_parameters,
        }),
        dataset_id: info.dataset_id.clone(),
        job_id: info.job_id.clone(),
        vocabulary_kind: info
            .vocabulary()
            .map(|v| v.kind().to_string())
            .unwrap_or_default(),
        vocab_size: info.spec.vocab_size as u32,
        weights_bytes,
        context: Some(context_to_proto(info.context())),
        ..Default::default()
    })
}

fn context_to_proto(c: InferenceContext) -> pb::InferenceContext {
    match c {
        InferenceContext::Window { window, positions } => pb::InferenceContext {
            kind: "window".into(),
            window: window as u32,
            loss_positions: positions.name().into(),
        },
        InferenceContext::Stateful { window } => pb::InferenceContext {
            kind: "stateful".into(),
            window: window as u32,
            loss_positions: String::new(),
        },
    }
}

type Chunks = Pin<Box<dyn Stream<Item = Result<pb::ExportModelChunk, Status>> + Send>>;

#[tonic::async_trait]
impl ModelService for ModelApi {
    async fn list_models(
        &self,
        _request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let registry = Arc::clone(&self.registry);
        let listed = blocking(move || registry.latest_of_each()).await?;
        let models = listed
            .iter()
            .map(model_to_proto)
            .collect::<Result<_, _>>()?;
        Ok(Response::new(pb::ListModelsResponse { models }))
    }

    async fn get_model(
        &self,
        request: Request<pb::GetModelRequest>,
    ) -> Result<Response<pb::Model>, Status> {
        let r = request.into_inner();
        let version = (r.version != 0).then_some(r.version);
        let not_found = || not_found(&r.name, version);
        check_name("name", &r.name).map_err(|_| not_found())?;
        let registry = Arc::clone(&self.registry);
        let name = r.name.clone();
        let found = blocking(move || registry.listing(&name, version)).await?;
        let mut model = model_to_proto(&found.ok_or_else(not_found)?)?;
        super::model_serving::add_serving_view(&self.registry, &self.predictor, &mut model)?;
        Ok(Response::new(model))
    }

    async fn set_model_label(
        &self,
        request: Request<pb::SetModelLabelRequest>,
    ) -> Result<Response<pb::SetModelLabelResponse>, Status> {
        super::model_serving::set_label(&self.registry, &self.predictor, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn set_model_batching(
        &self,
        request: Request<pb::SetModelBatchingRequest>,
    ) -> Result<Response<pb::BatchingSettings>, Status> {
        super::model_serving::set_batching(&self.registry, &self.predictor, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn delete_model(
        &self,
        request: Request<pb::DeleteModelRequest>,
    ) -> Result<Response<pb::DeleteModelResponse>, Status> {
        let r = request.into_inner();
        let version = (r.version != 0).then_some(r.version);
        check_name("name", &r.name).map_err(|_| not_found(&r.name, version))?;
        let registry = Arc::clone(&self.registry);
        let name = r.name.clone();
        let deleted = blocking(move || registry.delete(&name, version).or_status()).await?;
        if deleted.is_empty() {
            return Err(not_found(&r.name, version));
        }
        self.predictor.evict(&r.name, version);
        tracing::info!(model = %r.name, versions = ?deleted, "model deleted");
        Ok(Response::new(pb::DeleteModelResponse { versions: deleted }))
    }

    type ExportModelStream = Chunks;

    async fn export_model(
        &self,
        request: Request<pb::ExportModelRequest>,
    ) -> Result<Response<Self::ExportModelStream>, Status> {
        let r = request.into_inner();
        let version = (r.version != 0).then_some(r.version);
        let format = ExportFormat::parse("format", &r.format).or_status()?;
        check_name("name", &r.name).map_err(|_| not_found(&r.name, version))?;
        let registry = Arc::clone(&self.registry);
        let name = r.name.clone();
        let (meta, files) = blocking(move || {
            let Some(meta) = registry.get(&name, version).or_status()? else {
                return Err(not_found(&name, version));
            };
            let missing =
                || Status::internal(format!("model {name}@{} lacks a file", meta.version));
            let weights = registry
                .weights(&meta.name, meta.version)
                .or_status()?
                .ok_or_else(missing)?;
            let metadata = registry
                .metadata_json(&meta.name, meta.version)
                .or_status()?
                .ok_or_else(missing)?;
            let files = export_files(format, &meta.name, weights, metadata).or_status()?;
            Ok((meta, files))
        })
        .await?;
        let mut chunks = Vec::new();
        for (file, bytes) in files {
            for (i, part) in bytes.chunks(EXPORT_CHUNK).enumerate() {
                chunks.push(Ok(pb::ExportModelChunk {
                    file: file.to_string(),
                    data: part.to_vec(),
                    name: if i == 0 {
                        meta.name.clone()
                    } else {
                        String::new()
                    },
                    version: meta.version,
                }));
            }
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn import_model(
        &self,
        request: Request<Streaming<pb::ImportModelChunk>>,
    ) -> Result<Response<pb::Model>, Status> {
        let end = request.extensions().get::<RequestEnd>().cloned();
        let mut stream = request.into_inner();
        let (mut name, mut spec, mut files) = (None, None, ImportFiles::default());
        while let Some(chunk) = stream.message().await? {
            if name.is_none() {
                check_name("name", &chunk.name).or_status()?;
                name = Some(chunk.name.clone());
                spec = chunk.spec.clone();
            }
            files.append(&chunk.file, &chunk.data).or_status()?;
            if files.len() > self.max_import_bytes {
                return Err(Status::resource_exhausted(format!(
                    "an imported model must be at most {} bytes",
                    self.max_import_bytes
                )));
            }
        }
        // Register only what a client ended normally: a reset stream is not
        // a model, even when its chunks happen to parse.
        check_clean_end(end.as_ref())?;
        let_transport_see_resets().await;
        let name = name
            .ok_or_else(|| Status::invalid_argument("the stream must carry at least one chunk"))?;
        let spec = spec
            .map(|s| spec_request(Some(s)))
            .transpose()
            .or_status()?;
        let registry = Arc::clone(&self.registry);
        let limits = self.spec_limits.clone();
        let max_bytes = self.max_import_bytes as u64;
        let model = blocking(move || {
            let (metadata, weights) = files.into_lstmd(spec, &limits, max_bytes).or_status()?;
            let mut info = validate_import(&metadata, &weights, &limits)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            info.created_at_ms = now_millis();
            let metadata = registry
                .register(&name, info.to_map(), &weights)
                .or_status()?;
            model_to_proto(&Listing {
                metadata,
                weights_bytes: weights.len() as u64,
            })
        })
        .await?;
        tracing::info!(model = %model.name, version = model.version, "model imported");
        Ok(Response::new(model))
    }
}
