//! lstmd's model as a Keras Sequential: Keras' class names, the paths its
//! weights file keeps each layer's variables under, and how Keras' gate
//! blocks map onto PyTorch's.
use std::collections::HashMap;

use crate::nn::{Cell, ModelSpec};

/// Keras' class for a cell.
pub fn keras_class(cell: Cell) -> &'static str {
    match cell {
        Cell::Lstm => "LSTM",
        Cell::Gru => "GRU",
        Cell::Rnn => "SimpleRNN",
    }
}

pub fn cell_of(class: &str) -> Option<Cell> {
    match class {
        "LSTM" => Some(Cell::Lstm),
        "GRU" => Some(Cell::Gru),
        "SimpleRNN" => Some(Cell::Rnn),
        _ => None,
    }
}

/// Keras' `to_snake_case` for the classes lstmd knows ("SimpleRNN" ->
/// "simple_rnn"); others lower-cased (they are refused anyway).
fn snake(class: &str) -> String {
    match class {
        "SimpleRNN" => "simple_rnn".into(),
        other => other.to_ascii_lowercase(),
    }
}

/// Keras' saving code names the layers of a Sequential in
/// model.weights.h5 by class, not by layer name: `layers/lstm`,
/// `layers/lstm_1`, ... in layer order.
#[derive(Default)]
pub struct PathNamer {
    seen: HashMap<String, usize>,
}

impl PathNamer {
    /// The group of the next layer of `class`, e.g. "layers/lstm_1".
    pub fn next(&mut self, class: &str) -> String {
        let base = snake(class);
        let n = self.seen.entry(base.clone()).or_insert(0);
        let name = if *n == 0 { base } else { format!("{base}_{n}") };
        *n += 1;
        format!("layers/{name}")
    }
}

/// For each PyTorch gate block, the Keras block it comes from (and back:
/// both orders are their own inverse). LSTM: Keras (i, f, c, o) is
/// PyTorch's (i, f, g, o). GRU: Keras (z, r, h) against PyTorch (r, z, n).
pub fn gate_order(cell: Cell) -> &'static [usize] {
    match cell {
        Cell::Lstm => &[0, 1, 2, 3],
        Cell::Gru => &[1, 0, 2],
        Cell::Rnn => &[0],
    }
}

/// A layer of the Sequential, and where its variables live.
#[derive(Clone, Debug)]
pub enum WeightedLayer {
    Embedding {
        path: String,
    },
    /// No variables (an empty group).
    Dropout {
        path: String,
        rate: f32,
    },
    /// `index` into the spec's layers.
    Recurrent {
        path: String,
        index: usize,
        use_bias: bool,
    },
    Dense {
        path: String,
        use_bias: bool,
    },
}

/// The layers of `spec` as a Keras Sequential, named as Keras saves them
/// (a Dropout after each layer with a dropout rate).
pub fn weighted_layers(spec: &ModelSpec) -> Vec<WeightedLayer> {
    let mut namer = PathNamer::default();
    let mut out = vec![WeightedLayer::Embedding {
        path: namer.next("Embedding"),
    }];
    let dropout = |namer: &mut PathNamer, out: &mut Vec<WeightedLayer>, rate: f32| {
        if rate > 0.0 {
            out.push(WeightedLayer::Dropout {
                path: namer.next("Dropout"),
                rate,
            });
        }
    };
    dropout(&mut namer, &mut out, spec.embedding_dropout);
    for (index, layer) in spec.layers.iter().enumerate() {
        let class = if layer.bidirectional {
            "Bidirectional"
        } else {
            keras_class(layer.cell)
        };
        out.push(WeightedLayer::Recurrent {
            path: namer.next(class),
            index,
            use_bias: true,
        });
        dropout(&mut namer, &mut out, layer.dropout);
    }
    out.push(WeightedLayer::Dense {
        path: namer.next("Dense"),
        use_bias: true,
    });
    out
}

/// The name Keras gives a cell's variables group ("lstm_cell").
pub fn cell_name(cell: Cell) -> String {
    format!("{}_cell", snake(keras_class(cell)))
}

/// Where one direction's variables (kernel, recurrent kernel, bias) live.
pub fn cell_vars(layer_path: &str, bidirectional: bool, reverse: bool) -> String {
    match (bidirectional, reverse) {
        (false, _) => format!("{layer_path}/cell/vars"),
        (true, false) => format!("{layer_path}/forward_layer/cell/vars"),
        (true, true) => format!("{layer_path}/backward_layer/cell/vars"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_count_per_class_like_keras() {
        let mut n = PathNamer::default();
        let got: Vec<String> = ["Embedding", "LSTM", "Dropout", "LSTM", "SimpleRNN", "Dense"]
            .iter()
            .map(|c| n.next(c))
            .collect();
        assert_eq!(
            got,
            [
                "layers/embedding",
                "layers/lstm",
                "layers/dropout",
                "layers/lstm_1",
                "layers/simple_rnn",
                "layers/dense"
            ]
        );
    }
}
