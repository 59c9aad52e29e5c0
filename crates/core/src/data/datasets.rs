//! Dataset records and their token streams (little-endian u32 blobs).
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::tokens::TokenStream;
use super::vocabulary::{check_ids, Vocabulary};
use super::DataError;
use crate::error::{check_name, check_range, InvalidField};
use crate::store::{from_json, now_millis, to_json, Store};

const TABLE: &str = "datasets";
pub(crate) const PREVIEW_TOKENS: usize = 64;

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
    /// Bytes the client sent (text, or 4 per id): what the size limit counts.
    #[serde(default)]
    pub source_bytes: u64,
    pub created_at_ms: u64,
    pub vocabulary: Option<Vocabulary>,
    pub preview: String,
    /// Char datasets: characters the vocabulary lacks, stored as `<unk>`.
    #[serde(default)]
    pub unknown_tokens: u64,
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
        /// Another dataset's or model's vocabulary to tokenize with, instead
        /// of one built from the text (its kind decides the tokenizer).
        vocabulary: Option<Vocabulary>,
    },
}

#[derive(Clone, Debug)]
pub struct DataLimits {
    pub max_vocab_size: usize,
    /// Largest dataset a client may send, in bytes (text, or 4 per id).
    pub max_dataset_bytes: u64,
}

/// A token stream ready to be stored: in memory (inline datasets) or in a
/// staged file (uploads).
pub(crate) enum TokenBlob {
    Bytes(Vec<u8>),
    File(tempfile::NamedTempFile),
}

/// Everything `commit` needs besides the name.
pub(crate) struct Prepared {
    pub tokenizer: TokenizerKind,
    pub vocabulary: Option<Vocabulary>,
    pub vocab_size: usize,
    pub blob: TokenBlob,
    pub token_count: u64,
    pub preview_ids: Vec<u32>,
    pub source_bytes: u64,
    /// Characters stored as `<unk>` (char vocabularies).
    pub unknown_tokens: u64,
    /// The field to name when there are too few tokens.
    pub field: &'static str,
}

pub struct Datasets {
    store: Arc<dyn Store>,
    limits: DataLimits,
    /// Serialises "is the name free?" with the record write, in this process.
    names: Mutex<()>,
}

/// Tokens stored as `<unk>`: id 0 of a char vocabulary (a byte
/// vocabulary's 0 is the NUL byte, and raw ids have no text).
pub(crate) fn unknown_count(vocabulary: Option<&Vocabulary>, ids: &[u32]) -> u64 {
    match vocabulary {
        Some(Vocabulary::Char { .. }) => ids.iter().filter(|&&id| id == 0).count() as u64,
        _ => 0,
    }
}

pub(crate) fn tokens_key(id: &str) -> String {
    format!("datasets/{id}/tokens.u32")
}

fn blobs_prefix(id: &str) -> String {
    format!("datasets/{id}")
}

impl Datasets {
    pub fn new(store: Arc<dyn Store>, limits: DataLimits) -> Self {
        Self {
            store,
            limits,
            names: Mutex::new(()),
        }
    }

    pub fn limits(&self) -> &DataLimits {
        &self.limits
    }

    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub(crate) fn check_size(&self, bytes: u64) -> Result<(), DataError> {
        if bytes > self.limits.max_dataset_bytes {
            return Err(DataError::TooLarge {
                limit: self.limits.max_dataset_bytes,
            });
        }
        Ok(())
    }

    /// Refuses a vocabulary larger than the configured limit.
    pub(crate) fn check_vocabulary(
        &self,
        vocab: &Vocabulary,
        field: &str,
    ) -> Result<(), DataError> {
        if vocab.size() > self.limits.max_vocab_size {
            let rule = match vocab {
                Vocabulary::Char { tokens } => format!(
                    "must bound the vocabulary to {}, the corpus has {} distinct characters",
                    self.limits.max_vocab_size,
                    tokens.len() - 1
                ),
                Vocabulary::Byte => format!(
                    "cannot be the byte tokenizer: its 256 ids exceed the server's vocabulary limit {}",
                    self.limits.max_vocab_size
                ),
            };
            return Err(InvalidField::new(field, rule).into());
        }
        Ok(())
    }

    /// `max_vocab_size` of a char tokenizer: 0 (no limit) or 2..=limit.
    pub(crate) fn check_max_vocab_size(&self, field: &str, value: usize) -> Result<(), DataError> {
        if value != 0 {
            check_range(field, value, 2, self.limits.max_vocab_size).map_err(|_| {
                InvalidField::new(
                    field,
                    format!(
                        "must be 0 (no limit) or 2..={}, got {value}",
                        self.limits.max_vocab_size
                    ),
                )
            })?;
        }
        Ok(())
    }

    pub(crate) fn check_name_free(&self, name: &str) -> Result<(), DataError> {
        if self.list()?.iter().any(|d| d.name == name) {
            return Err(DataError::AlreadyExists(name.to_string()));
        }
        Ok(())
    }

    pub fn create(&self, name: &str, input: DatasetInput) -> Result<DatasetRecord, DataError> {
        check_name("name", name)?;
        let source_bytes = match &input {
            DatasetInput::Ids { ids, .. } => ids.len() as u64 * 4,
            DatasetInput::Text { text, .. } => text.len() as u64,
        };
        self.check_size(source_bytes)?;
        self.check_name_free(name)?;
        let (tokenizer, tokens, vocabulary, vocab_size, field) = match input {
            DatasetInput::Ids { ids, vocab_size } => {
                check_range("ids.vocab_size", vocab_size, 2, self.limits.max_vocab_size)?;
                check_ids("ids.ids", &ids, vocab_size)?;
                (TokenizerKind::Ids, ids, None, vocab_size, "ids.ids")
            }
            DatasetInput::Text {
                text,
                tokenizer,
                max_vocab_size,
                vocabulary,
            } => {
                let vocab = match (vocabulary, tokenizer) {
                    (Some(given), _) => given,
                    (None, TokenizerKind::Byte) => Vocabulary::Byte,
                    (None, _) => {
                        self.check_max_vocab_size("max_vocab_size", max_vocab_size)?;
                        Vocabulary::char_from_corpus(&text, max_vocab_size)
                    }
                };
                self.check_vocabulary(&vocab, "max_vocab_size")?;
                let size = vocab.size();
                let tokenizer = match vocab {
                    Vocabulary::Byte => TokenizerKind::Byte,
                    Vocabulary::Char { .. } => TokenizerKind::Char,
                };
                (tokenizer, vocab.encode(&text), Some(vocab), size, "text")
            }
        };
        let unknown_tokens = unknown_count(vocabulary.as_ref(), &tokens);
        let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
        self.commit(
            name,
            Prepared {
                tokenizer,
                vocabulary,
                vocab_size,
                blob: TokenBlob::Bytes(bytes),
                token_count: tokens.len() as u64,
                preview_ids: tokens[..tokens.len().min(PREVIEW_TOKENS)].to_vec(),
                source_bytes,
                unknown_tokens,
                field,
            },
        )
    }

    /// Stores the tokens, then the record (the commit point: a dataset
    /// exists once its record is written).
    pub(crate) fn commit(&self, name: &str, p: Prepared) -> Result<DatasetRecord, DataError> {
        if p.token_count < 2 {
            return Err(InvalidField::new(
                p.field,
                format!("must hold at least 2 tokens, got {}", p.token_count),
            )
            .into());
        }
        let preview = match &p.vocabulary {
            Some(v) => v.decode(&p.preview_ids),
            None => p
                .preview_ids
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(" "),
        };
        let record = DatasetRecord {
            id: format!("ds-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
            name: name.to_string(),
            tokenizer: p.tokenizer,
            vocab_size: p.vocab_size,
            token_count: p.token_count,
            size_bytes: p.token_count * 4,
            source_bytes: p.source_bytes,
            created_at_ms: now_millis(),
            vocabulary: p.vocabulary,
            preview,
            unknown_tokens: p.unknown_tokens,
        };
        let _names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        self.check_name_free(name)?;
        let key = tokens_key(&record.id);
        match p.blob {
            TokenBlob::Bytes(bytes) => self.store.put_blob(&key, &bytes)?,
            TokenBlob::File(file) => self.store.put_blob_file(&key, file)?,
        }
        self.store
            .put_record(TABLE, &record.id, &to_json(&record))?;
        Ok(record)
    }

    /// Deletes token streams whose record is missing (a crash between the
    /// blob and the record); run at startup, before any write.
    pub fn remove_orphans(&self) -> Result<usize, DataError> {
        Ok(crate::store::leftovers::remove_unrecorded(
            &*self.store,
            "datasets",
            TABLE,
            |parts| match parts {
                [id, _file] => Some((id.to_string(), blobs_prefix(id))),
                _ => None,
            },
        )?)
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

    /// Deletes a dataset: its record first (from then on it does not
    /// exist), then its token stream. Whether a job still needs it is the
    /// caller's question. A job that already opened the tokens keeps them
    /// (blobs are never rewritten in place); one that starts later fails
    /// with NOT_FOUND for the dataset.
    pub fn delete(&self, id: &str) -> Result<DatasetRecord, DataError> {
        let record = self.get(id)?;
        let _names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        self.store.delete_record(TABLE, id)?;
        self.store.delete_blobs(&blobs_prefix(id))?;
        Ok(record)
    }

    /// The whole token stream of a dataset, memory-mapped: the corpus is
    /// paged in on demand, not read into memory.
    pub fn tokens(&self, id: &str) -> Result<TokenStream, DataError> {
        let file = self
            .store
            .open_blob(&tokens_key(id))?
            .ok_or_else(|| DataError::NotFound(id.to_string()))?;
        Ok(TokenStream::map(&file)?)
    }
}
