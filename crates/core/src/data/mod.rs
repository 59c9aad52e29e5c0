//! Datasets: tokenizers, vocabularies, windowing, stored token streams.
pub mod datasets;
pub mod tokens;
pub mod upload;
// A model's vocabulary travels in its metadata, so it lives in the engine.
pub use lstmd_engine::vocabulary;
pub mod windows;

pub use datasets::{DataLimits, DatasetInput, DatasetRecord, Datasets, TokenizerKind};
pub use tokens::TokenStream;
pub use upload::{Upload, UploadHeader};
pub use vocabulary::Vocabulary;
pub use windows::{Streams, Windows};

use crate::error::InvalidField;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    #[error("dataset {0:?} not found")]
    NotFound(String),
    #[error("a dataset named {0:?} already exists")]
    AlreadyExists(String),
    #[error("the dataset exceeds the server's limit of {limit} bytes (--max-dataset-bytes)")]
    TooLarge { limit: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}
