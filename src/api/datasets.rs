//! DatasetService.
use std::sync::Arc;

use tonic::{Request, Response, Status, Streaming};

use super::convert::timestamp;
use crate::data::{DatasetInput, DatasetRecord, Datasets, TokenizerKind};
use crate::proto as pb;
use crate::proto::dataset_service_server::DatasetService;

pub struct DatasetApi {
    pub datasets: Arc<Datasets>,
}

fn tokenizer_to_proto(t: TokenizerKind) -> pb::Tokenizer {
    match t {
        TokenizerKind::Char => pb::Tokenizer::Char,
        TokenizerKind::Byte => pb::Tokenizer::Byte,
        TokenizerKind::Ids => pb::Tokenizer::Ids,
    }
}

pub fn dataset_to_proto(d: &DatasetRecord) -> pb::Dataset {
    pb::Dataset {
        id: d.id.clone(),
        name: d.name.clone(),
        tokenizer: tokenizer_to_proto(d.tokenizer) as i32,
        token_count: d.token_count,
        vocab_size: d.vocab_size as u32,
        size_bytes: d.size_bytes,
        created_at: Some(timestamp(d.created_at_ms)),
        preview: d.preview.clone(),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("worker task failed: {e}")))
}

#[tonic::async_trait]
impl DatasetService for DatasetApi {
    async fn create_dataset(
        &self,
        request: Request<pb::CreateDatasetRequest>,
    ) -> Result<Response<pb::Dataset>, Status> {
        let r = request.into_inner();
        let tokenizer = pb::Tokenizer::try_from(r.tokenizer).unwrap_or(pb::Tokenizer::Unspecified);
        let input =
            match r.data {
                Some(pb::create_dataset_request::Data::Ids(ids)) => {
                    if !matches!(tokenizer, pb::Tokenizer::Unspecified | pb::Tokenizer::Ids) {
                        return Err(Status::invalid_argument(
                            "tokenizer must be TOKENIZER_IDS or unset for an ids dataset",
                        ));
                    }
                    DatasetInput::Ids {
                        ids: ids.ids,
                        vocab_size: ids.vocab_size as usize,
                    }
                }
                Some(pb::create_dataset_request::Data::Text(text)) => DatasetInput::Text {
                    text,
                    tokenizer: match tokenizer {
                        pb::Tokenizer::Unspecified | pb::Tokenizer::Char => TokenizerKind::Char,
                        pb::Tokenizer::Byte => TokenizerKind::Byte,
                        pb::Tokenizer::Ids => return Err(Status::invalid_argument(
                            "tokenizer must be TOKENIZER_CHAR or TOKENIZER_BYTE for a text dataset",
                        )),
                    },
                    max_vocab_size: r.max_vocab_size as usize,
                },
                None => return Err(Status::invalid_argument("data must be set: ids or text")),
            };
        let datasets = Arc::clone(&self.datasets);
        let record = blocking(move || datasets.create(&r.name, input)).await??;
        tracing::info!(id = %record.id, name = %record.name, tokens = record.token_count, "dataset created");
        Ok(Response::new(dataset_to_proto(&record)))
    }

    async fn upload_dataset(
        &self,
        _request: Request<Streaming<pb::UploadDatasetRequest>>,
    ) -> Result<Response<pb::Dataset>, Status> {
        Err(Status::unimplemented(
            "UploadDataset is not implemented yet",
        ))
    }

    async fn get_dataset(
        &self,
        request: Request<pb::GetDatasetRequest>,
    ) -> Result<Response<pb::Dataset>, Status> {
        let id = request.into_inner().id;
        let datasets = Arc::clone(&self.datasets);
        let record = blocking(move || datasets.get(&id)).await??;
        Ok(Response::new(dataset_to_proto(&record)))
    }

    async fn list_datasets(
        &self,
        _request: Request<pb::ListDatasetsRequest>,
    ) -> Result<Response<pb::ListDatasetsResponse>, Status> {
        let datasets = Arc::clone(&self.datasets);
        let all = blocking(move || datasets.list()).await??;
        Ok(Response::new(pb::ListDatasetsResponse {
            datasets: all.iter().map(dataset_to_proto).collect(),
        }))
    }

    async fn delete_dataset(
        &self,
        _request: Request<pb::DeleteDatasetRequest>,
    ) -> Result<Response<pb::DeleteDatasetResponse>, Status> {
        Err(Status::unimplemented(
            "DeleteDataset is not implemented yet",
        ))
    }
}
