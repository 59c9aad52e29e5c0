//! A Keras `model.summary()`: each layer's output shape and parameter count.
use serde::{Deserialize, Serialize};

use super::naming::{keras_layer_parameter_count, layer_parameter_count};
use super::spec::ModelSpec;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerRow {
    pub name: String,
    pub kind: String,
    /// Batch dimension as -1 (Keras' `None`).
    pub output_shape: Vec<i64>,
    /// PyTorch's count (two biases per recurrent gate set).
    pub parameters: u64,
    /// Keras' count (one bias per gate set for LSTM and SimpleRNN).
    pub keras_parameters: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub layers: Vec<LayerRow>,
    pub total_parameters: u64,
    pub keras_total_parameters: u64,
}

pub fn summarize(spec: &ModelSpec) -> Summary {
    let window = spec.window as i64;
    let mut rows = Vec::new();
    let emb = (spec.vocab_size * spec.embedding_dim) as u64;
    rows.push(LayerRow {
        name: "embedding".into(),
        kind: "Embedding".into(),
        output_shape: vec![-1, window, spec.embedding_dim as i64],
        parameters: emb,
        keras_parameters: emb,
    });
    let dropout_row = |name: String, shape: &[i64]| LayerRow {
        name,
        kind: "Dropout".into(),
        output_shape: shape.to_vec(),
        parameters: 0,
        keras_parameters: 0,
    };
    if spec.embedding_dropout > 0.0 {
        let shape = rows[0].output_shape.clone();
        rows.push(dropout_row("embedding_dropout".into(), &shape));
    }
    let mut input = spec.embedding_dim;
    let last = spec.layers.len() - 1;
    for (i, layer) in spec.layers.iter().enumerate() {
        let width = layer.output_width() as i64;
        let shape = if i < last {
            vec![-1, window, width]
        } else {
            vec![-1, width]
        };
        let class = layer.cell.class_name();
        rows.push(LayerRow {
            name: format!("layers.{i}"),
            kind: if layer.bidirectional {
                format!("Bidirectional({class})")
            } else {
                class.to_string()
            },
            output_shape: shape.clone(),
            parameters: layer_parameter_count(layer, input),
            keras_parameters: keras_layer_parameter_count(layer, input),
        });
        if layer.dropout > 0.0 {
            rows.push(dropout_row(format!("layers.{i}.dropout"), &shape));
        }
        input = layer.output_width();
    }
    let dense = (spec.vocab_size * input + spec.vocab_size) as u64;
    rows.push(LayerRow {
        name: "dense".into(),
        kind: "Dense".into(),
        output_shape: vec![-1, spec.vocab_size as i64],
        parameters: dense,
        keras_parameters: dense,
    });
    Summary {
        total_parameters: rows.iter().map(|r| r.parameters).sum(),
        keras_total_parameters: rows.iter().map(|r| r.keras_parameters).sum(),
        layers: rows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::spec::preset;

    #[test]
    fn keras_counts_of_the_tutorial_dropout_model() {
        // Keras' summary() of the tutorial's model_lstm_dropout:
        // Embedding 800, LSTM 18,688, LSTM 33,024, Dense 6,500.
        let s = summarize(&preset("dropout").unwrap());
        let keras: Vec<u64> = s
            .layers
            .iter()
            .filter(|r| r.kind != "Dropout")
            .map(|r| r.keras_parameters)
            .collect();
        assert_eq!(keras, vec![800, 18_688, 33_024, 6_500]);
        assert_eq!(s.keras_total_parameters, 59_012);
        assert_eq!(s.layers[1].output_shape, vec![-1, 10, 64]);
        assert_eq!(s.layers.last().unwrap().output_shape, vec![-1, 100]);
    }
}
