//! `vocabulary_from` of CreateDataset and UploadDataset: the vocabulary a new
//! text dataset reuses (an existing dataset's or a model version's), so a
//! held-out text can validate models of another dataset.
use tonic::Status;

use crate::data::{DataError, Datasets, TokenizerKind, Vocabulary};
use crate::nn::metadata::ModelInfo;
use crate::proto as pb;
use crate::store::ModelRegistry;

/// Looks the vocabulary up (blocking: it reads records). `field` prefixes
/// the names in errors (`vocabulary_from`, `header.vocabulary_from`).
pub fn resolve(
    datasets: &Datasets,
    registry: &ModelRegistry,
    field: &str,
    from: &pb::VocabularyFrom,
) -> Result<Vocabulary, Status> {
    let no_text = |what: String| {
        Status::invalid_argument(format!(
            "{what} holds token ids: it has no vocabulary to reuse"
        ))
    };
    match (from.dataset_id.is_empty(), from.model.is_empty()) {
        (false, true) => {
            let dataset = datasets.get(&from.dataset_id).map_err(|e| match e {
                DataError::NotFound(id) => {
                    Status::not_found(format!("{field}.dataset_id {id:?} names no dataset"))
                }
                other => Status::internal(other.to_string()),
            })?;
            dataset
                .vocabulary
                .ok_or_else(|| no_text(format!("{field}.dataset_id {}", dataset.id)))
        }
        (true, false) => {
            let version = (from.model_version > 0).then_some(from.model_version);
            let meta = registry
                .get(&from.model, version)
                .map_err(|e| Status::internal(e.to_string()))?
                .ok_or_else(|| {
                    Status::not_found(match version {
                        Some(v) => {
                            format!("{field}.model {:?} version {v} names no model", from.model)
                        }
                        None => format!("{field}.model {:?} names no model", from.model),
                    })
                })?;
            let info = ModelInfo::from_map(&meta.rest).map_err(|e| {
                Status::internal(format!(
                    "model {}@{} metadata is unreadable: {e}",
                    meta.name, meta.version
                ))
            })?;
            info.vocabulary().cloned().ok_or_else(|| {
                no_text(format!(
                    "{field}.model {:?} version {}",
                    meta.name, meta.version
                ))
            })
        }
        _ => Err(Status::invalid_argument(format!(
            "{field} must set one of dataset_id or model"
        ))),
    }
}

/// The tokenizer of a dataset that reuses `vocabulary`: the vocabulary's
/// own. A request that names another, or a vocabulary limit, is refused.
pub fn tokenizer_for(
    vocabulary: &Vocabulary,
    requested: pb::Tokenizer,
    tokenizer_field: &str,
    max_vocab_size: u32,
    max_vocab_size_field: &str,
) -> Result<TokenizerKind, Status> {
    let (kind, name) = match vocabulary {
        Vocabulary::Char { .. } => (TokenizerKind::Char, pb::Tokenizer::Char),
        Vocabulary::Byte => (TokenizerKind::Byte, pb::Tokenizer::Byte),
    };
    if !matches!(requested, pb::Tokenizer::Unspecified) && requested != name {
        return Err(Status::invalid_argument(format!(
            "{tokenizer_field} must be unset or {} to reuse a {} vocabulary, got {}",
            name.as_str_name(),
            vocabulary.kind(),
            requested.as_str_name()
        )));
    }
    if max_vocab_size != 0 {
        return Err(Status::invalid_argument(format!(
            "{max_vocab_size_field} must be 0 with vocabulary_from (the vocabulary is reused as it is), got {max_vocab_size}"
        )));
    }
    Ok(kind)
}
