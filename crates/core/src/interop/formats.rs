//! Which files a format's export holds, and how an upload of Keras files
//! becomes lstmd's own pair (metadata.json, model.safetensors).
use super::tensors::LstmdModel;
use super::{keras, keras_export, onnx, InteropError};
use crate::error::InvalidField;
use crate::nn::{SpecLimits, SpecRequest};

/// lstmd's own files, what PyTorch-side tools read.
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const METADATA_FILE: &str = "metadata.json";

/// The formats ExportModel writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    Safetensors,
    Keras,
    Onnx,
}

impl ExportFormat {
    /// "" is lstmd's own format.
    pub fn parse(field: &str, value: &str) -> Result<Self, InvalidField> {
        match value {
            "" | "safetensors" => Ok(Self::Safetensors),
            "keras" => Ok(Self::Keras),
            "onnx" => Ok(Self::Onnx),
            other => Err(InvalidField::new(
                field,
                format!("must be safetensors, keras or onnx, got {other:?}"),
            )),
        }
    }
}

/// A registered model's files (`weights`, `metadata` as stored) in
/// `format`, each with its file name.
pub fn export_files(
    format: ExportFormat,
    name: &str,
    weights: Vec<u8>,
    metadata: Vec<u8>,
) -> Result<Vec<(&'static str, Vec<u8>)>, InteropError> {
    let model = || LstmdModel::from_files(&metadata, &weights);
    Ok(match format {
        ExportFormat::Keras => vec![(keras::ARCHIVE, keras_export::export(&model()?)?)],
        ExportFormat::Onnx => {
            let model = model()?;
            let config = onnx::triton_config(name, model.info.spec.vocab_size);
            vec![
                (onnx::FILE, onnx::export(&model, name)?),
                (onnx::TRITON_CONFIG, config.into_bytes()),
            ]
        }
        ExportFormat::Safetensors => vec![(WEIGHTS_FILE, weights), (METADATA_FILE, metadata)],
    })
}

/// A Keras upload — model.keras alone, or model.weights.h5 with the spec
/// it was saved with (resolved under `limits`) — as an lstmd model.
pub fn from_keras(
    archive: Vec<u8>,
    weights_h5: Vec<u8>,
    spec: Option<SpecRequest>,
    limits: &SpecLimits,
    max_bytes: u64,
) -> Result<LstmdModel, InteropError> {
    match (archive.is_empty(), weights_h5.is_empty(), spec) {
        (false, true, _) => keras::import_archive(&archive, max_bytes),
        (true, false, Some(spec)) => {
            keras::import_weights(weights_h5, &spec.resolve(None, limits)?)
        }
        (true, false, None) => Err(InvalidField::new(
            "spec",
            format!("must be set to import {}", keras::WEIGHTS),
        )
        .into()),
        _ => Err(InteropError::BothKerasFiles),
    }
}

/// The files of a model upload as they arrive, in any of the forms an
/// import takes: lstmd's own pair, a Keras archive, or Keras weights.
#[derive(Default)]
pub struct ImportFiles {
    weights: Vec<u8>,
    metadata: Vec<u8>,
    archive: Vec<u8>,
    weights_h5: Vec<u8>,
}

impl ImportFiles {
    /// Appends a piece of the file named `file`.
    pub fn append(&mut self, file: &str, data: &[u8]) -> Result<(), InvalidField> {
        let target = match file {
            WEIGHTS_FILE => &mut self.weights,
            METADATA_FILE => &mut self.metadata,
            keras::ARCHIVE => &mut self.archive,
            keras::WEIGHTS => &mut self.weights_h5,
            other => {
                return Err(InvalidField::new(
                    "file",
                    format!(
                        "must be {WEIGHTS_FILE:?}, {METADATA_FILE:?}, {:?} or {:?}, got {other:?}",
                        keras::ARCHIVE,
                        keras::WEIGHTS
                    ),
                ))
            }
        };
        target.extend_from_slice(data);
        Ok(())
    }

    /// Bytes received so far, over every file.
    pub fn len(&self) -> usize {
        self.weights.len() + self.metadata.len() + self.archive.len() + self.weights_h5.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// lstmd's own (metadata.json, model.safetensors), converted from the
    /// Keras files when those came (see `from_keras`).
    pub fn into_lstmd(
        self,
        spec: Option<SpecRequest>,
        limits: &SpecLimits,
        max_bytes: u64,
    ) -> Result<(Vec<u8>, Vec<u8>), InteropError> {
        let from_keras_files = !self.archive.is_empty() || !self.weights_h5.is_empty();
        let own_files = (!self.weights.is_empty(), !self.metadata.is_empty());
        match (from_keras_files, own_files) {
            (true, (false, false)) => {
                from_keras(self.archive, self.weights_h5, spec, limits, max_bytes)?.to_files()
            }
            (true, _) => Err(InteropError::BothForms),
            (false, (true, true)) => Ok((self.metadata, self.weights)),
            (false, _) => Err(InteropError::OwnPairIncomplete),
        }
    }
}
