//! Model specs: `Embedding -> recurrent layers -> Dense softmax`, and the
//! tutorial's presets. What a client may ask for is in validation.rs.
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cell {
    Lstm,
    Gru,
    Rnn,
}

impl Cell {
    /// Gate blocks stacked in PyTorch's weight matrices.
    pub fn gates(self) -> usize {
        match self {
            Cell::Lstm => 4,
            Cell::Gru => 3,
            Cell::Rnn => 1,
        }
    }

    /// The PyTorch / Keras class name.
    pub fn class_name(self) -> &'static str {
        match self {
            Cell::Lstm => "LSTM",
            Cell::Gru => "GRU",
            Cell::Rnn => "RNN",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerSpec {
    pub cell: Cell,
    pub units: usize,
    pub bidirectional: bool,
    /// Inverted dropout on this layer's output, training only.
    pub dropout: f32,
}

impl LayerSpec {
    pub fn directions(&self) -> usize {
        if self.bidirectional {
            2
        } else {
            1
        }
    }

    /// Width of the layer's output (both directions concatenated).
    pub fn output_width(&self) -> usize {
        self.units * self.directions()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub vocab_size: usize,
    pub embedding_dim: usize,
    pub window: usize,
    pub embedding_dropout: f32,
    pub layers: Vec<LayerSpec>,
}

pub const PRESETS: [&str; 4] = ["dropout", "tuning", "bidirectional", "deep"];

fn lstm(units: usize, bidirectional: bool, dropout: f32) -> LayerSpec {
    LayerSpec {
        cell: Cell::Lstm,
        units,
        bidirectional,
        dropout,
    }
}

/// The tutorial's four models: Embedding(100, 8), window 10, Dense(100).
pub fn preset(name: &str) -> Option<ModelSpec> {
    let layers = match name {
        "dropout" => vec![lstm(64, false, 0.5), lstm(64, false, 0.5)],
        "tuning" => vec![lstm(128, false, 0.3), lstm(128, false, 0.3)],
        "bidirectional" => vec![lstm(64, true, 0.0)],
        "deep" => vec![lstm(64, false, 0.0), lstm(64, false, 0.0)],
        _ => return None,
    };
    Some(ModelSpec {
        vocab_size: 100,
        embedding_dim: 8,
        window: 10,
        embedding_dropout: 0.0,
        layers,
    })
}

impl ModelSpec {
    /// Width of the last recurrent layer's output, the Dense layer's input.
    pub fn final_width(&self) -> usize {
        self.layers
            .last()
            .map(LayerSpec::output_width)
            .unwrap_or(self.embedding_dim)
    }
}
