//! Dataset records and their token streams (little-endian u32 blobs).
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::vocabulary::{check_ids, Vocabulary};
use super::DataError;
use crate::error::{check_name, check_range, InvalidField};
use crate::store::{from_json, now_millis, to_json, Store};

const TABLE: &str = "datasets";
const PREVIEW_TOKENS: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenizerKind {
    Char,
    Byte,
    Ids,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DatasetRecord {
    pub id: String,
    pub name: String,
    pub tokenizer: TokenizerKind,
    pub vocab_size: usize,
    pub token_count: u64,
    pub size_bytes: u64,
    pub created_at_ms: u64,
    pub vocabulary: Option<Vocabulary>,
    pub preview: String,
}

pub enum DatasetInput {
    Ids {
        ids: Vec<u32>,
        vocab_size: usize,
    },
    Text {
        text: String,
        tokenizer: TokenizerKind,
        max_vocab_size: usize,
    },
}

#[derive(Clone, Debug)]
pub struct DataLimits {
    pub max_vocab_size: usize,
}

pub struct Datasets {
    store: Arc<dyn Store>,
    limits: DataLimits,
}

fn tokens_key(id: &str) -> String {
    format!("datasets/{id}/tokens.u32")
}

impl Datasets {
    pub fn new(store: Arc<dyn Store>, limits: DataLimits) -> Self {
        Self { store, limits }
    }

    pub fn create(&self, name: &str, input: DatasetInput) -> Result<DatasetRecord, DataError> {
        check_name("name", name)?;
        if self.list()?.iter().any(|d| d.name == name) {
            return Err(DataError::AlreadyExists(name.to_string()));
        }
        let (tokenizer, tokens, vocabulary, vocab_size) = match input {
            DatasetInput::Ids { ids, vocab_size } => {
                check_range("ids.vocab_size", vocab_size, 2, self.limits.max_vocab_size)?;
                check_ids("ids.ids", &ids, vocab_size)?;
                (TokenizerKind::Ids, ids, None, vocab_size)
            }
            DatasetInput::Text {
                text,
                tokenizer,
                max_vocab_size,
            } => {
                let vocab = match tokenizer {
                    TokenizerKind::Byte => Vocabulary::Byte,
                    _ => Vocabulary::char_from_corpus(&text, max_vocab_size),
                };
                if vocab.size() > self.limits.max_vocab_size {
                    return Err(InvalidField::new(
                        "max_vocab_size",
                        format!(
                            "must bound the vocabulary to {}, the corpus has {} distinct characters",
                            self.limits.max_vocab_size,
                            vocab.size() - 1
                        ),
                    )
                    .into());
                }
                let size = vocab.size();
                (tokenizer, vocab.encode(&text), Some(vocab), size)
            }
        };
        if tokens.len() < 2 {
            let field = if tokenizer == TokenizerKind::Ids {
                "ids.ids"
            } else {
                "text"
            };
            return Err(InvalidField::new(
                field,
                format!("must hold at least 2 tokens, got {}", tokens.len()),
            )
            .into());
        }
        let preview_ids = &tokens[..tokens.len().min(PREVIEW_TOKENS)];
        let preview = match &vocabulary {
            Some(v) => v.decode(preview_ids),
            None => preview_ids
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(" "),
        };
        let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
        let record = DatasetRecord {
            id: format!("ds-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
            name: name.to_string(),
            tokenizer,
            vocab_size,
            token_count: tokens.len() as u64,
            size_bytes: bytes.len() as u64,
            created_at_ms: now_millis(),
            vocabulary,
            preview,
        };
        // Tokens first, record last: the record is the commit point.
        self.store.put_blob(&tokens_key(&record.id), &bytes)?;
        self.store
            .put_record(TABLE, &record.id, &to_json(&record))?;
        Ok(record)
    }

    pub fn get(&self, id: &str) -> Result<DatasetRecord, DataError> {
        if check_name("id", id).is_err() {
            return Err(DataError::NotFound(id.to_string()));
        }
        match self.store.get_record(TABLE, id)? {
            Some(b) => Ok(from_json(&b)?),
            None => Err(DataError::NotFound(id.to_string())),
        }
    }

    pub fn list(&self) -> Result<Vec<DatasetRecord>, DataError> {
        let mut all: Vec<DatasetRecord> = self
            .store
            .list_records(TABLE, "")?
            .iter()
            .map(|(_, b)| from_json(b))
            .collect::<Result<_, _>>()?;
        all.sort_by_key(|d| d.created_at_ms);
        Ok(all)
    }

    /// The whole token stream of a dataset.
    pub fn tokens(&self, id: &str) -> Result<Vec<u32>, DataError> {
        let bytes = self
            .store
            .get_blob(&tokens_key(id))?
            .ok_or_else(|| DataError::NotFound(id.to_string()))?;
        Ok(bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}
