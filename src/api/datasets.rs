//! DatasetService.
use std::sync::Arc;

use tokio::sync::{mpsc, watch, Semaphore};
use tonic::{Request, Response, Status, Streaming};

use super::blocking::blocking;
use super::convert::timestamp;
use super::status::{IntoStatus, OrStatus};
use super::stream_end::{check_clean_end, let_transport_see_resets, RequestEnd};
use super::vocabulary_from;
use crate::data::Vocabulary;
use crate::data::{
    DataError, DatasetInput, DatasetRecord, Datasets, TokenizerKind, Upload, UploadHeader,
};
use crate::jobs::JobManager;
use crate::proto as pb;
use crate::proto::dataset_service_server::DatasetService;
use crate::store::ModelRegistry;

pub struct DatasetApi {
    datasets: Arc<Datasets>,
    jobs: JobManager,
    uploads: Arc<Semaphore>,
    max_uploads: usize,
    /// The server's registry (its catalog knows every version), for
    /// `vocabulary_from`.
    models: Arc<ModelRegistry>,
    /// True once the server is shutting down: open uploads end unsaved.
    stopping: watch::Receiver<bool>,
}

impl DatasetApi {
    pub fn new(
        datasets: Arc<Datasets>,
        jobs: JobManager,
        models: Arc<ModelRegistry>,
        max_uploads_in_flight: usize,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        Self {
            datasets,
            jobs,
            uploads: Arc::new(Semaphore::new(max_uploads_in_flight)),
            max_uploads: max_uploads_in_flight,
            models,
            stopping,
        }
    }

    /// The vocabulary `vocabulary_from` names, if set.
    async fn reused_vocabulary(
        &self,
        field: &'static str,
        from: Option<pb::VocabularyFrom>,
    ) -> Result<Option<Vocabulary>, Status> {
        let Some(from) = from else {
            return Ok(None);
        };
        let (datasets, models) = (Arc::clone(&self.datasets), Arc::clone(&self.models));
        blocking(move || vocabulary_from::resolve(&datasets, &models, field, &from))
            .await
            .map(Some)
    }
}

/// What the transport hands the blocking upload task: chunks, then `End`
/// once the client closed its stream. A channel closed without `End` means
/// the upload was abandoned.
enum Piece {
    Chunk(Vec<u8>),
    End,
}

/// Runs on the blocking pool. `Ok(None)`: abandoned, and dropping `upload`
/// removed its staged files.
fn run_upload(
    mut upload: Upload,
    mut pieces: mpsc::Receiver<Piece>,
) -> Result<Option<DatasetRecord>, DataError> {
    while let Some(piece) = pieces.blocking_recv() {
        match piece {
            Piece::Chunk(bytes) => upload.write(&bytes)?,
            Piece::End => return upload.finish().map(Some),
        }
    }
    tracing::info!(
        received = upload.received(),
        "upload abandoned; its staged files are removed"
    );
    Ok(None)
}

fn header_from_proto(
    h: pb::UploadDatasetHeader,
    vocabulary: Option<Vocabulary>,
) -> Result<UploadHeader, Status> {
    if let Some(v) = &vocabulary {
        let requested = pb::Tokenizer::try_from(h.tokenizer).unwrap_or(pb::Tokenizer::Unspecified);
        let tokenizer = vocabulary_from::tokenizer_for(
            v,
            requested,
            "header.tokenizer",
            h.max_vocab_size,
            "header.max_vocab_size",
        )?;
        return Ok(UploadHeader {
            name: h.name,
            tokenizer,
            vocab_size: h.vocab_size as usize,
            max_vocab_size: 0,
            vocabulary,
        });
    }
    let tokenizer = match pb::Tokenizer::try_from(h.tokenizer) {
        Ok(pb::Tokenizer::Unspecified) | Ok(pb::Tokenizer::Char) => TokenizerKind::Char,
        Ok(pb::Tokenizer::Byte) => TokenizerKind::Byte,
        Ok(pb::Tokenizer::Ids) => TokenizerKind::Ids,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "header.tokenizer must be TOKENIZER_CHAR, TOKENIZER_BYTE or TOKENIZER_IDS, got {}",
                h.tokenizer
            )))
        }
    };
    Ok(UploadHeader {
        name: h.name,
        tokenizer,
        vocab_size: h.vocab_size as usize,
        max_vocab_size: h.max_vocab_size as usize,
        vocabulary: None,
    })
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
        source_bytes: d.source_bytes,
        created_at: Some(timestamp(d.created_at_ms)),
        preview: d.preview.clone(),
        unknown_tokens: d.unknown_tokens,
    }
}

/// Reads an upload's first message, which must be its header.
async fn read_header(
    api: &DatasetApi,
    stream: &mut Streaming<pb::UploadDatasetRequest>,
) -> Result<UploadHeader, Status> {
    use pb::upload_dataset_request::Part;
    match stream.message().await? {
        Some(pb::UploadDatasetRequest {
            part: Some(Part::Header(h)),
        }) => {
            let reused = api
                .reused_vocabulary("header.vocabulary_from", h.vocabulary_from.clone())
                .await?;
            header_from_proto(h, reused)
        }
        Some(_) => Err(Status::invalid_argument(
            "messages[0] must be the header; chunks follow it",
        )),
        None => Err(Status::invalid_argument(
            "messages must start with a header, got an empty stream",
        )),
    }
}

/// What message `index` of an upload brings: a chunk, the end (only when
/// the client ended its stream normally), or why the upload stops.
fn piece_of(
    message: Result<Option<pb::UploadDatasetRequest>, Status>,
    index: u64,
    stream_end: Option<&RequestEnd>,
) -> Result<Piece, Status> {
    use pb::upload_dataset_request::Part;
    let part = match message? {
        None => return check_clean_end(stream_end).map(|()| Piece::End),
        Some(m) => m.part,
    };
    match part {
        Some(Part::Chunk(bytes)) if !bytes.is_empty() => Ok(Piece::Chunk(bytes)),
        Some(Part::Chunk(_)) => Err(Status::invalid_argument(format!(
            "messages[{index}].chunk must hold 1 or more bytes, got none"
        ))),
        Some(Part::Header(_)) => Err(Status::invalid_argument(format!(
            "messages[{index}] must be a chunk: only the first message is a header"
        ))),
        None => Err(Status::invalid_argument(format!(
            "messages[{index}] must set chunk"
        ))),
    }
}

/// An upload's answer: the worker's error first (bad data is the cause),
/// then why the stream stopped, else the new dataset.
fn upload_answer(
    name: &str,
    refused: Option<Status>,
    outcome: Result<Option<DatasetRecord>, DataError>,
) -> Result<Response<pb::Dataset>, Status> {
    match (refused, outcome) {
        (_, Err(e)) => {
            tracing::info!(name = %name, error = %e, "upload refused");
            Err(e.into_status())
        }
        (Some(status), _) => {
            tracing::info!(name = %name, status = %status, "upload ended early");
            Err(status)
        }
        (None, Ok(Some(record))) => {
            tracing::info!(id = %record.id, name = %record.name, tokens = record.token_count, bytes = record.source_bytes, "dataset uploaded");
            Ok(Response::new(dataset_to_proto(&record)))
        }
        (None, Ok(None)) => Err(Status::internal(
            "the upload task stopped before the end of the stream",
        )),
    }
}

#[tonic::async_trait]
impl DatasetService for DatasetApi {
    async fn create_dataset(
        &self,
        request: Request<pb::CreateDatasetRequest>,
    ) -> Result<Response<pb::Dataset>, Status> {
        let r = request.into_inner();
        let tokenizer = pb::Tokenizer::try_from(r.tokenizer).map_err(|_| {
            Status::invalid_argument(format!(
                "tokenizer must be TOKENIZER_CHAR, TOKENIZER_BYTE or TOKENIZER_IDS, got {}",
                r.tokenizer
            ))
        })?;
        let reused = self
            .reused_vocabulary("vocabulary_from", r.vocabulary_from.clone())
            .await?;
        if reused.is_some() && !matches!(r.data, Some(pb::create_dataset_request::Data::Text(_))) {
            return Err(Status::invalid_argument(
                "vocabulary_from applies to text datasets only (data.text)",
            ));
        }
        let tokenizer = match &reused {
            Some(v) => match vocabulary_from::tokenizer_for(
                v,
                tokenizer,
                "tokenizer",
                r.max_vocab_size,
                "max_vocab_size",
            )? {
                TokenizerKind::Byte => pb::Tokenizer::Byte,
                _ => pb::Tokenizer::Char,
            },
            None => tokenizer,
        };
        let input =
            match r.data {
                Some(pb::create_dataset_request::Data::Ids(ids)) => {
                    if !matches!(tokenizer, pb::Tokenizer::Unspecified | pb::Tokenizer::Ids) {
                        return Err(Status::invalid_argument(
                            "tokenizer must be TOKENIZER_IDS or unset for an ids dataset",
                        ));
                    }
                    if r.max_vocab_size != 0 {
                        return Err(Status::invalid_argument(
                            "max_vocab_size applies to TOKENIZER_CHAR only; leave it 0 for an ids dataset",
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
                        pb::Tokenizer::Byte if r.max_vocab_size != 0 => {
                            return Err(Status::invalid_argument(
                                "max_vocab_size applies to TOKENIZER_CHAR only; leave it 0 for TOKENIZER_BYTE",
                            ))
                        }
                        pb::Tokenizer::Byte => TokenizerKind::Byte,
                        pb::Tokenizer::Ids => return Err(Status::invalid_argument(
                            "tokenizer must be TOKENIZER_CHAR or TOKENIZER_BYTE for a text dataset",
                        )),
                    },
                    max_vocab_size: r.max_vocab_size as usize,
                    vocabulary: reused,
                },
                None => return Err(Status::invalid_argument("data must be set: ids or text")),
            };
        let datasets = Arc::clone(&self.datasets);
        let record = blocking(move || datasets.create(&r.name, input)).await?;
        tracing::info!(id = %record.id, name = %record.name, tokens = record.token_count, "dataset created");
        Ok(Response::new(dataset_to_proto(&record)))
    }

    async fn upload_dataset(
        &self,
        request: Request<Streaming<pb::UploadDatasetRequest>>,
    ) -> Result<Response<pb::Dataset>, Status> {
        let _permit = Arc::clone(&self.uploads).try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "{} uploads are in flight, the server's limit (--max-uploads-in-flight); retry later",
                self.max_uploads
            ))
        })?;
        let stream_end = request.extensions().get::<RequestEnd>().cloned();
        let mut stream = request.into_inner();
        let header = read_header(self, &mut stream).await?;
        let name = header.name.clone();
        let datasets = Arc::clone(&self.datasets);
        let upload = blocking(move || Upload::begin(datasets, header)).await?;
        // Two chunks may wait while one is written: memory stays a few
        // chunks, whatever the corpus size.
        let (tx, rx) = mpsc::channel(2);
        let worker = tokio::task::spawn_blocking(move || run_upload(upload, rx));
        let mut index = 0u64;
        let mut stopping = self.stopping.clone();
        let refused = loop {
            index += 1;
            // An idle client would otherwise hold the shutdown for the
            // whole grace period, and the upload would be lost anyway.
            let message = tokio::select! {
                m = stream.message() => m,
                _ = stopping.wait_for(|s| *s) => break Some(Status::unavailable(format!(
                    "the server is shutting down: the upload was not saved (at messages[{index}]); send it again"
                ))),
            };
            let piece = match piece_of(message, index, stream_end.as_ref()) {
                Ok(Piece::End) => {
                    let_transport_see_resets().await;
                    Piece::End
                }
                Ok(piece) => piece,
                Err(status) => break Some(status),
            };
            let end = matches!(piece, Piece::End);
            // A send fails once the worker stopped on bad data: its error
            // is the answer.
            if tx.send(piece).await.is_err() || end {
                break None;
            }
        };
        drop(tx);
        let outcome = worker
            .await
            .map_err(|e| Status::internal(format!("upload task failed: {e}")))?;
        upload_answer(&name, refused, outcome)
    }

    async fn get_dataset(
        &self,
        request: Request<pb::GetDatasetRequest>,
    ) -> Result<Response<pb::Dataset>, Status> {
        let id = request.into_inner().id;
        let datasets = Arc::clone(&self.datasets);
        let record = blocking(move || datasets.get(&id)).await?;
        Ok(Response::new(dataset_to_proto(&record)))
    }

    async fn list_datasets(
        &self,
        _request: Request<pb::ListDatasetsRequest>,
    ) -> Result<Response<pb::ListDatasetsResponse>, Status> {
        let datasets = Arc::clone(&self.datasets);
        let all = blocking(move || datasets.list()).await?;
        Ok(Response::new(pb::ListDatasetsResponse {
            datasets: all.iter().map(dataset_to_proto).collect(),
        }))
    }

    async fn delete_dataset(
        &self,
        request: Request<pb::DeleteDatasetRequest>,
    ) -> Result<Response<pb::DeleteDatasetResponse>, Status> {
        let id = request.into_inner().id;
        let datasets = Arc::clone(&self.datasets);
        let lookup = id.clone();
        blocking(move || datasets.get(&lookup)).await?;
        self.jobs.check_dataset_unused(&id).await.or_status()?;
        let datasets = Arc::clone(&self.datasets);
        let record = blocking(move || datasets.delete(&id)).await?;
        tracing::info!(id = %record.id, name = %record.name, "dataset deleted");
        Ok(Response::new(pb::DeleteDatasetResponse {}))
    }
}
