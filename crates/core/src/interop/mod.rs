//! Model formats other than lstmd's own (model.safetensors + metadata.json):
//! Keras 3 archives and weights files, and ONNX graphs. Pure conversions
//! between file bytes and an lstmd model; no gRPC, no store.
pub mod formats;
pub mod hdf5;
pub mod keras;
pub mod keras_export;
mod keras_layers;
pub mod onnx;
pub mod tensors;

/// Why a conversion failed. Every message names the file, layer or weight
/// at fault.
#[derive(Debug, thiserror::Error)]
pub enum InteropError {
    /// The input is not a well-formed file of its format.
    #[error("{file} is unreadable: {reason}")]
    Unreadable { file: String, reason: String },
    /// A layer (or setting of one) lstmd's models cannot express.
    #[error("layer {layer:?} ({class}) is not supported: {reason}")]
    Unsupported {
        layer: String,
        class: String,
        reason: String,
    },
    /// The config describes a model lstmd cannot build.
    #[error("config.json: {0}")]
    Config(String),
    /// A weight is missing, misshapen or unexpected.
    #[error("weight {path:?}: {reason}")]
    Weight { path: String, reason: String },
    /// A request's field breaks a rule.
    #[error(transparent)]
    Invalid(#[from] crate::error::InvalidField),
    #[error("send {} or {}, not both", keras::ARCHIVE, keras::WEIGHTS)]
    BothKerasFiles,
    #[error(
        "send Keras files or {} and {}, not both",
        formats::WEIGHTS_FILE,
        formats::METADATA_FILE
    )]
    BothForms,
    #[error(
        "the stream must carry both {} and {}",
        formats::WEIGHTS_FILE,
        formats::METADATA_FILE
    )]
    OwnPairIncomplete,
    /// The lstmd model being exported is inconsistent (a store problem).
    #[error("the model's files are unreadable: {0}")]
    Model(String),
}

impl InteropError {
    pub fn unreadable(file: &str, reason: impl std::fmt::Display) -> Self {
        Self::Unreadable {
            file: file.into(),
            reason: reason.to_string(),
        }
    }

    pub fn weight(path: &str, reason: impl Into<String>) -> Self {
        Self::Weight {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// Whether the client's input is at fault (INVALID_ARGUMENT) rather
    /// than the stored model (INTERNAL).
    pub fn is_invalid_input(&self) -> bool {
        !matches!(self, Self::Model(_))
    }
}

impl From<candle_core::Error> for InteropError {
    fn from(e: candle_core::Error) -> Self {
        Self::Model(e.to_string())
    }
}
