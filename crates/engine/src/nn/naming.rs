//! Parameter names and shapes: exactly a PyTorch `state_dict` of the
//! reference module (`nn.Embedding`, one single-layer batch_first
//! `nn.LSTM`/`nn.GRU`/`nn.RNN` per layer in an `nn.ModuleList` called
//! `layers`, `nn.Linear` called `dense`), so `load_state_dict(strict=True)`
//! accepts our safetensors files as they are.
use super::spec::{LayerSpec, ModelSpec};

pub const EMBEDDING: &str = "embedding.weight";
pub const DENSE_WEIGHT: &str = "dense.weight";
pub const DENSE_BIAS: &str = "dense.bias";

/// The four tensors of one direction of one recurrent layer.
#[derive(Clone, Debug)]
pub struct DirectionNames {
    pub weight_ih: String,
    pub weight_hh: String,
    pub bias_ih: String,
    pub bias_hh: String,
}

pub fn direction_names(layer: usize, reverse: bool) -> DirectionNames {
    let suffix = if reverse { "_reverse" } else { "" };
    let name = |kind: &str| format!("layers.{layer}.{kind}_l0{suffix}");
    DirectionNames {
        weight_ih: name("weight_ih"),
        weight_hh: name("weight_hh"),
        bias_ih: name("bias_ih"),
        bias_hh: name("bias_hh"),
    }
}

/// The recurrent layer a parameter belongs to (`layers.{i}.…`), if any.
pub fn layer_index(name: &str) -> Option<usize> {
    name.strip_prefix("layers.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// Shapes of one direction's tensors, in `DirectionNames` order.
fn direction_shapes(layer: &LayerSpec, input: usize) -> [Vec<usize>; 4] {
    let rows = layer.cell.gates() * layer.units;
    [
        vec![rows, input],
        vec![rows, layer.units],
        vec![rows],
        vec![rows],
    ]
}

/// Every parameter of the model with its shape, in a fixed order.
pub fn parameter_shapes(spec: &ModelSpec) -> Vec<(String, Vec<usize>)> {
    let mut out = vec![(
        EMBEDDING.to_string(),
        vec![spec.vocab_size, spec.embedding_dim],
    )];
    let mut input = spec.embedding_dim;
    for (i, layer) in spec.layers.iter().enumerate() {
        for reverse in [false, true].into_iter().take(layer.directions()) {
            let names = direction_names(i, reverse);
            let [a, b, c, d] = direction_shapes(layer, input);
            out.push((names.weight_ih, a));
            out.push((names.weight_hh, b));
            out.push((names.bias_ih, c));
            out.push((names.bias_hh, d));
        }
        input = layer.output_width();
    }
    out.push((DENSE_WEIGHT.to_string(), vec![spec.vocab_size, input]));
    out.push((DENSE_BIAS.to_string(), vec![spec.vocab_size]));
    out
}

/// Parameters of one recurrent layer, PyTorch's convention (two biases).
pub fn layer_parameter_count(layer: &LayerSpec, input: usize) -> u64 {
    let per_direction: usize = direction_shapes(layer, input)
        .iter()
        .map(|s| s.iter().product::<usize>())
        .sum();
    (per_direction * layer.directions()) as u64
}

/// Parameters of one recurrent layer as Keras counts them: LSTM and
/// SimpleRNN have one bias per gate set; GRU (reset_after=True) has two.
pub fn keras_layer_parameter_count(layer: &LayerSpec, input: usize) -> u64 {
    let torch = layer_parameter_count(layer, input);
    match layer.cell {
        super::spec::Cell::Gru => torch,
        _ => torch - (layer.cell.gates() * layer.units * layer.directions()) as u64,
    }
}

pub fn parameter_count(spec: &ModelSpec) -> u64 {
    parameter_shapes(spec)
        .iter()
        .map(|(_, s)| s.iter().product::<usize>() as u64)
        .sum()
}
