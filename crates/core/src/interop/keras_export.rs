//! Keras 3 export: an lstmd model as a `.keras` archive that
//! `keras.saving.load_model` opens (config.json of the equivalent
//! Sequential, model.weights.h5 in Keras' layout, metadata.json), plus
//! lstmd.json (lstmd's own metadata, which Keras ignores) so that the
//! vocabulary and history survive a round trip back into lstmd. Every part
//! of an lstmd model has a Keras equivalent; nothing is dropped.
use std::io::Write;

use candle_core::Tensor;
use serde_json::{json, Value};

use super::hdf5::Tree;
use super::keras::{LSTMD_METADATA, WEIGHTS};
use super::keras_layers::{
    cell_name, cell_vars, gate_order, keras_class, weighted_layers, WeightedLayer,
};
use super::tensors::{reorder_blocks, to_array, transpose, LstmdModel};
use super::InteropError;
use crate::nn::naming::{direction_names, DENSE_BIAS, DENSE_WEIGHT, EMBEDDING};
use crate::nn::{Cell, LayerSpec, ModelSpec};

/// The Keras version whose format this writes (and the fixtures check).
const KERAS_VERSION: &str = "3.15.1";

/// The `.keras` archive bytes. Deterministic: same model, same bytes.
pub fn export(model: &LstmdModel) -> Result<Vec<u8>, InteropError> {
    let config = serde_json::to_vec_pretty(&config(&model.info.spec)).expect("json");
    let metadata = serde_json::to_vec(&json!({ "keras_version": KERAS_VERSION })).expect("json");
    let weights = weights_tree(model)?.to_bytes()?;
    let ours =
        serde_json::to_vec_pretty(&model.info).map_err(|e| InteropError::Model(e.to_string()))?;
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .last_modified_time(zip::DateTime::default());
    let zipped =
        |e: zip::result::ZipError| InteropError::Model(format!("writing the archive: {e}"));
    for (name, bytes) in [
        ("metadata.json", &metadata),
        ("config.json", &config),
        (WEIGHTS, &weights),
        (LSTMD_METADATA, &ours),
    ] {
        zip.start_file(name, options).map_err(zipped)?;
        zip.write_all(bytes)
            .map_err(|e| InteropError::Model(e.to_string()))?;
    }
    Ok(zip.finish().map_err(zipped)?.into_inner())
}

fn layer(class: &str, config: Value) -> Value {
    json!({
        "module": "keras.layers",
        "class_name": class,
        "config": config,
        "registered_name": null,
    })
}

fn dropout(name: String, rate: f32) -> Value {
    layer(
        "Dropout",
        json!({"name": name, "trainable": true, "dtype": "float32", "rate": rate,
               "seed": null, "noise_shape": null}),
    )
}

fn recurrent(l: &LayerSpec, name: &str, return_sequences: bool) -> Value {
    let mut c = json!({
        "name": name, "trainable": true, "dtype": "float32",
        "return_sequences": return_sequences, "return_state": false,
        "go_backwards": false, "stateful": false, "unroll": false,
        "units": l.units, "activation": "tanh", "use_bias": true,
        "dropout": 0.0, "recurrent_dropout": 0.0,
    });
    if l.cell != Cell::Rnn {
        c["recurrent_activation"] = json!("sigmoid");
    }
    if l.cell == Cell::Gru {
        c["reset_after"] = json!(true);
    }
    layer(keras_class(l.cell), c)
}

/// config.json: the Sequential equivalent of `spec`, layer names equal to
/// the weights file's group names.
pub fn config(spec: &ModelSpec) -> Value {
    let shape = json!([null, spec.window]);
    let mut layers = vec![layer(
        "InputLayer",
        json!({"batch_shape": shape, "dtype": "int32", "sparse": false, "ragged": false,
               "name": "input_layer"}),
    )];
    let last = spec.layers.len() - 1;
    for w in weighted_layers(spec) {
        match w {
            WeightedLayer::Embedding { path } => {
                layers.push(layer(
                    "Embedding",
                    json!({"name": short(&path), "trainable": true, "dtype": "float32",
                           "input_dim": spec.vocab_size, "output_dim": spec.embedding_dim,
                           "mask_zero": false}),
                ));
            }
            WeightedLayer::Dropout { path, rate } => layers.push(dropout(short(&path), rate)),
            WeightedLayer::Recurrent { path, index, .. } => {
                let l = &spec.layers[index];
                let name = short(&path);
                layers.push(if l.bidirectional {
                    let inner = recurrent(l, &format!("forward_{name}"), index < last);
                    layer(
                        "Bidirectional",
                        json!({"name": name, "trainable": true, "dtype": "float32",
                               "merge_mode": "concat", "layer": inner}),
                    )
                } else {
                    recurrent(l, &name, index < last)
                });
            }
            WeightedLayer::Dense { path, .. } => layers.push(layer(
                "Dense",
                json!({"name": short(&path), "trainable": true, "dtype": "float32",
                       "units": spec.vocab_size, "activation": "softmax", "use_bias": true}),
            )),
        }
    }
    json!({
        "module": "keras",
        "class_name": "Sequential",
        "config": {"name": "sequential", "trainable": true, "dtype": "float32", "layers": layers},
        "registered_name": null,
        "build_config": {"input_shape": shape},
    })
}

/// "layers/lstm_1" -> "lstm_1".
fn short(path: &str) -> String {
    path.trim_start_matches("layers/").to_string()
}

/// model.weights.h5 as Keras 3 lays it out: `layers/<name>/vars/<i>`,
/// recurrent layers under `cell/vars` (`forward_layer/` and
/// `backward_layer/` for Bidirectional), each vars group named.
fn weights_tree(model: &LstmdModel) -> Result<Tree, InteropError> {
    let spec = &model.info.spec;
    let mut tree = Tree::default();
    tree.group("vars").attr("name", "sequential");
    for w in weighted_layers(spec) {
        match w {
            WeightedLayer::Embedding { path } => {
                let vars = tree.group(&format!("{path}/vars"));
                vars.attr("name", &short(&path));
                vars.dataset("0", to_array(model.get(EMBEDDING)?)?);
            }
            WeightedLayer::Dropout { path, .. } => {
                tree.group(&format!("{path}/vars"))
                    .attr("name", &short(&path));
            }
            WeightedLayer::Recurrent { path, index, .. } => {
                let l = &spec.layers[index];
                let name = short(&path);
                tree.group(&format!("{path}/vars")).attr("name", &name);
                let cell_name = cell_name(l.cell);
                for reverse in [false, true].into_iter().take(l.directions()) {
                    let vars = cell_vars(&path, l.bidirectional, reverse);
                    if l.bidirectional {
                        let side = if reverse { "backward" } else { "forward" };
                        let layer_vars = vars.replace("/cell/vars", "/vars");
                        tree.group(&layer_vars)
                            .attr("name", &format!("{side}_{name}"));
                    }
                    let [k, r, b] = keras_cell(model, index, reverse, l)?;
                    tree.group(&vars)
                        .attr("name", &cell_name)
                        .dataset("0", to_array(&k)?)
                        .dataset("1", to_array(&r)?)
                        .dataset("2", to_array(&b)?);
                }
            }
            WeightedLayer::Dense { path, .. } => {
                tree.group(&format!("{path}/vars"))
                    .attr("name", &short(&path))
                    .dataset("0", to_array(&transpose(model.get(DENSE_WEIGHT)?)?)?)
                    .dataset("1", to_array(model.get(DENSE_BIAS)?)?);
            }
        }
    }
    Ok(tree)
}

/// One direction in Keras' layout: kernel (in, G*u), recurrent kernel
/// (u, G*u), bias: for GRU (2, G*u) = [bias_ih; bias_hh], otherwise their
/// sum (Keras keeps one).
fn keras_cell(
    model: &LstmdModel,
    index: usize,
    reverse: bool,
    l: &LayerSpec,
) -> Result<[Tensor; 3], InteropError> {
    let names = direction_names(index, reverse);
    let order = gate_order(l.cell);
    let keras = |name: &str| reorder_blocks(model.get(name)?, 0, order);
    let kernel = transpose(&keras(&names.weight_ih)?)?;
    let recurrent = transpose(&keras(&names.weight_hh)?)?;
    let (bi, bh) = (keras(&names.bias_ih)?, keras(&names.bias_hh)?);
    let bias = match l.cell {
        Cell::Gru => Tensor::stack(&[bi, bh], 0)?,
        _ => (bi + bh)?,
    };
    Ok([kernel, recurrent, bias])
}
