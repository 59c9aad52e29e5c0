//! What a client's spec must satisfy: the configured limits, and a
//! request (a preset and overrides) resolved into a checked `ModelSpec`.
use super::naming::parameter_count;
use super::spec::{preset, LayerSpec, ModelSpec, PRESETS};
use crate::error::{check_range, InvalidField};

/// Upper bounds on what one request may ask for.
#[derive(Clone, Debug)]
pub struct SpecLimits {
    pub max_vocab_size: usize,
    pub max_embedding_dim: usize,
    pub max_window: usize,
    pub max_layers: usize,
    pub max_units: usize,
    pub max_parameters: usize,
}

impl Default for SpecLimits {
    fn default() -> Self {
        Self {
            max_vocab_size: 1 << 20,
            max_embedding_dim: 4096,
            max_window: 4096,
            max_layers: 16,
            max_units: 4096,
            max_parameters: 200_000_000,
        }
    }
}

/// A spec as a client sends it: an optional preset and the fields that
/// override it.
#[derive(Clone, Debug, Default)]
pub struct SpecRequest {
    pub preset: Option<String>,
    pub vocab_size: Option<usize>,
    pub embedding_dim: Option<usize>,
    pub window: Option<usize>,
    pub embedding_dropout: Option<f32>,
    pub layers: Option<Vec<LayerSpec>>,
}

impl SpecRequest {
    /// Applies the overrides to the preset (if any) and validates the result.
    /// `dataset_vocab` is the vocabulary of the data the model will see: it is
    /// the default vocab size and its lower bound.
    pub fn resolve(
        &self,
        dataset_vocab: Option<usize>,
        limits: &SpecLimits,
    ) -> Result<ModelSpec, InvalidField> {
        let base = match self.preset.as_deref() {
            None | Some("") => None,
            Some(name) => Some(preset(name).ok_or_else(|| {
                InvalidField::new(
                    "spec.preset",
                    format!("must be one of {}, got {name:?}", PRESETS.join(", ")),
                )
            })?),
        };
        let required = |field: &str| {
            InvalidField::new(
                format!("spec.{field}"),
                "must be set when no preset is named",
            )
        };
        let vocab_size = match (self.vocab_size, dataset_vocab, &base) {
            (Some(v), _, _) => v,
            (None, Some(v), _) => v,
            (None, None, Some(b)) => b.vocab_size,
            (None, None, None) => return Err(required("vocab_size")),
        };
        let spec = ModelSpec {
            vocab_size,
            embedding_dim: self
                .embedding_dim
                .or(base.as_ref().map(|b| b.embedding_dim))
                .ok_or_else(|| required("embedding_dim"))?,
            window: self
                .window
                .or(base.as_ref().map(|b| b.window))
                .ok_or_else(|| required("window"))?,
            embedding_dropout: self
                .embedding_dropout
                .or(base.as_ref().map(|b| b.embedding_dropout))
                .unwrap_or(0.0),
            layers: match (&self.layers, &base) {
                (Some(layers), _) if !layers.is_empty() => layers.clone(),
                (_, Some(b)) => b.layers.clone(),
                _ => return Err(required("layers")),
            },
        };
        spec.validate(limits)?;
        if let Some(data_vocab) = dataset_vocab {
            if spec.vocab_size < data_vocab {
                return Err(InvalidField::new(
                    "spec.vocab_size",
                    format!(
                        "must be at least the dataset's vocabulary size {data_vocab}, got {}",
                        spec.vocab_size
                    ),
                ));
            }
        }
        Ok(spec)
    }
}

fn check_dropout(field: &str, p: f32) -> Result<(), InvalidField> {
    if !(0.0..1.0).contains(&p) {
        return Err(InvalidField::new(
            field,
            format!("must be in [0, 1), got {p}"),
        ));
    }
    Ok(())
}

impl ModelSpec {
    pub fn validate(&self, limits: &SpecLimits) -> Result<(), InvalidField> {
        check_range("spec.vocab_size", self.vocab_size, 2, limits.max_vocab_size)?;
        check_range(
            "spec.embedding_dim",
            self.embedding_dim,
            1,
            limits.max_embedding_dim,
        )?;
        check_range("spec.window", self.window, 1, limits.max_window)?;
        check_dropout("spec.embedding_dropout", self.embedding_dropout)?;
        if self.layers.is_empty() || self.layers.len() > limits.max_layers {
            return Err(InvalidField::new(
                "spec.layers",
                format!(
                    "must have 1..={} layers, got {}",
                    limits.max_layers,
                    self.layers.len()
                ),
            ));
        }
        for (i, layer) in self.layers.iter().enumerate() {
            check_range(
                &format!("spec.layers[{i}].units"),
                layer.units,
                1,
                limits.max_units,
            )?;
            check_dropout(&format!("spec.layers[{i}].dropout"), layer.dropout)?;
        }
        let total = parameter_count(self);
        if total > limits.max_parameters as u64 {
            return Err(InvalidField::new(
                "spec",
                format!(
                    "must have at most {} parameters, got {total}",
                    limits.max_parameters
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_resolve_and_override_field_by_field() {
        let limits = SpecLimits::default();
        let req = SpecRequest {
            preset: Some("tuning".into()),
            window: Some(5),
            ..Default::default()
        };
        let spec = req.resolve(None, &limits).unwrap();
        assert_eq!(spec.window, 5);
        assert_eq!(spec.layers.len(), 2);
        assert_eq!(spec.layers[0].units, 128);
        assert_eq!(spec.layers[0].dropout, 0.3);
        assert_eq!(spec.vocab_size, 100);
    }

    #[test]
    fn invalid_fields_are_named() {
        let limits = SpecLimits::default();
        let mut layers = preset("deep").unwrap().layers;
        layers[1].units = 0;
        let req = SpecRequest {
            preset: Some("deep".into()),
            layers: Some(layers),
            ..Default::default()
        };
        let err = req.resolve(None, &limits).unwrap_err();
        assert_eq!(
            err.to_string(),
            "spec.layers[1].units must be 1..=4096, got 0"
        );
        let err = SpecRequest {
            preset: Some("nope".into()),
            ..Default::default()
        }
        .resolve(None, &limits)
        .unwrap_err();
        assert_eq!(err.field, "spec.preset");
        let err = SpecRequest {
            preset: Some("deep".into()),
            window: Some(0),
            ..Default::default()
        }
        .resolve(None, &limits)
        .unwrap_err();
        assert_eq!(err.field, "spec.window");
    }
}
