//! ModelService.
use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::convert::{config_to_proto, metrics_to_proto, spec_to_proto, timestamp};
use crate::error::check_name;
use crate::nn::metadata::ModelInfo;
use crate::nn::summary::summarize;
use crate::proto as pb;
use crate::proto::model_service_server::ModelService;
use crate::store::{ModelMetadata, ModelRegistry};
use crate::train::TrainConfig;

pub struct ModelApi {
    pub registry: Arc<ModelRegistry>,
}

fn model_to_proto(meta: &ModelMetadata, weights_bytes: u64) -> Result<pb::Model, Status> {
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
    })
}

type Chunks = Pin<Box<dyn Stream<Item = Result<pb::ExportModelChunk, Status>> + Send>>;

#[tonic::async_trait]
impl ModelService for ModelApi {
    async fn list_models(
        &self,
        _request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let registry = Arc::clone(&self.registry);
        let models = tokio::task::spawn_blocking(move || -> Result<Vec<pb::Model>, Status> {
            let mut latest: Vec<ModelMetadata> = Vec::new();
            for m in registry.list()? {
                match latest.iter_mut().find(|l| l.name == m.name) {
                    Some(l) if l.version < m.version => *l = m,
                    Some(_) => {}
                    None => latest.push(m),
                }
            }
            latest.sort_by(|a, b| a.name.cmp(&b.name));
            latest
                .iter()
                .map(|m| {
                    let size = registry.weights_size(&m.name, m.version)?.unwrap_or(0);
                    model_to_proto(m, size)
                })
                .collect()
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(pb::ListModelsResponse { models }))
    }

    async fn get_model(
        &self,
        request: Request<pb::GetModelRequest>,
    ) -> Result<Response<pb::Model>, Status> {
        let r = request.into_inner();
        let version = (r.version != 0).then_some(r.version);
        let not_found = || {
            Status::not_found(match version {
                Some(v) => format!("name {:?} version {v} names no model", r.name),
                None => format!("name {:?} names no model", r.name),
            })
        };
        check_name("name", &r.name).map_err(|_| not_found())?;
        let registry = Arc::clone(&self.registry);
        let name = r.name.clone();
        let found = tokio::task::spawn_blocking(move || -> Result<_, Status> {
            let Some(meta) = registry.get(&name, version)? else {
                return Ok(None);
            };
            let size = registry
                .weights_size(&meta.name, meta.version)?
                .unwrap_or(0);
            Ok(Some(model_to_proto(&meta, size)?))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        found.map(Response::new).ok_or_else(not_found)
    }

    async fn delete_model(
        &self,
        _request: Request<pb::DeleteModelRequest>,
    ) -> Result<Response<pb::DeleteModelResponse>, Status> {
        Err(Status::unimplemented("DeleteModel is not implemented yet"))
    }

    type ExportModelStream = Chunks;

    async fn export_model(
        &self,
        _request: Request<pb::ExportModelRequest>,
    ) -> Result<Response<Self::ExportModelStream>, Status> {
        Err(Status::unimplemented("ExportModel is not implemented yet"))
    }

    async fn import_model(
        &self,
        _request: Request<Streaming<pb::ImportModelChunk>>,
    ) -> Result<Response<pb::Model>, Status> {
        Err(Status::unimplemented("ImportModel is not implemented yet"))
    }
}
