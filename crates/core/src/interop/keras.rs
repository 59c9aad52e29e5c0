//! Keras 3 import: a `.keras` archive (config.json + model.weights.h5), or
//! a bare `.weights.h5` with an lstmd spec, into an lstmd model. Supported:
//! Sequential [InputLayer] Embedding -> LSTM / GRU (reset_after=True) /
//! SimpleRNN, optionally Bidirectional(merge_mode="concat") -> Dense
//! softmax, with Dropout after the Embedding or a recurrent layer.
//! Anything else is refused naming the layer and the reason.
use std::collections::{BTreeMap, HashMap};
use std::io::Read;

use candle_core::Tensor;
use serde_json::Value;

use super::hdf5::{self, Array};
use super::keras_layers::{
    cell_of, cell_vars, gate_order, weighted_layers, PathNamer, WeightedLayer,
};
use super::tensors::{self, from_array, reorder_blocks, transpose, LstmdModel};
use super::InteropError;
use crate::nn::metadata::{ModelInfo, FORMAT};
use crate::nn::naming::{direction_names, DENSE_BIAS, DENSE_WEIGHT, EMBEDDING};
use crate::nn::{Cell, LayerSpec, ModelSpec};

pub const ARCHIVE: &str = "model.keras";
pub const WEIGHTS: &str = "model.weights.h5";
/// lstmd's metadata.json, which lstmd's own Keras export adds to the
/// archive (Keras ignores it) so a round trip keeps the vocabulary.
pub const LSTMD_METADATA: &str = "lstmd.json";

/// Imports a `.keras` archive. `max_bytes` bounds every file unpacked.
pub fn import_archive(archive: &[u8], max_bytes: u64) -> Result<LstmdModel, InteropError> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(archive))
        .map_err(|e| InteropError::unreadable(ARCHIVE, format!("not a zip archive: {e}")))?;
    let config = unpack(&mut zip, "config.json", max_bytes)?
        .ok_or_else(|| InteropError::unreadable(ARCHIVE, "lacks config.json"))?;
    let weights = unpack(&mut zip, WEIGHTS, max_bytes)?
        .ok_or_else(|| InteropError::unreadable(ARCHIVE, format!("lacks {WEIGHTS}")))?;
    let ours = unpack(&mut zip, LSTMD_METADATA, max_bytes)?;
    let config: Value =
        serde_json::from_slice(&config).map_err(|e| InteropError::unreadable("config.json", e))?;
    let (spec, layers) = plan(&config)?;
    let datasets = hdf5::read_datasets(WEIGHTS, weights)?;
    let tensors = convert(&spec, &layers, datasets)?;
    let mut info = fresh_info(spec);
    // Our own export: keep what Keras has no place for, if it still fits.
    if let Some(previous) = ours.and_then(|b| serde_json::from_slice::<ModelInfo>(&b).ok()) {
        if previous.spec == info.spec {
            info = ModelInfo {
                created_at_ms: 0,
                ..previous
            };
        }
    }
    Ok(LstmdModel { info, tensors })
}

/// Imports a Keras `.weights.h5` saved from the Sequential that `spec`
/// describes (layers in order; Dropout layers carry no weights).
pub fn import_weights(weights: Vec<u8>, spec: &ModelSpec) -> Result<LstmdModel, InteropError> {
    let datasets = hdf5::read_datasets(WEIGHTS, weights)?;
    let tensors = convert(spec, &weighted_layers(spec), datasets)?;
    Ok(LstmdModel {
        info: fresh_info(spec.clone()),
        tensors,
    })
}

fn fresh_info(spec: ModelSpec) -> ModelInfo {
    ModelInfo {
        format: FORMAT.into(),
        created_at_ms: 0,
        spec,
        vocabulary: None,
        training: Value::Null,
        history: Vec::new(),
        dataset_id: String::new(),
        job_id: String::new(),
        tuning: None,
    }
}

/// One file of the archive, None if absent; refused past `max_bytes`.
fn unpack<R: std::io::Read + std::io::Seek>(
    zip: &mut zip::ZipArchive<R>,
    name: &str,
    max_bytes: u64,
) -> Result<Option<Vec<u8>>, InteropError> {
    let mut file = match zip.by_name(name) {
        Ok(f) => f,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(e) => return Err(InteropError::unreadable(ARCHIVE, format!("{name}: {e}"))),
    };
    let mut bytes = Vec::new();
    file.by_ref()
        .take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| InteropError::unreadable(ARCHIVE, format!("{name}: {e}")))?;
    if bytes.len() as u64 > max_bytes {
        return Err(InteropError::unreadable(
            ARCHIVE,
            format!("{name} unpacks to more than {max_bytes} bytes"),
        ));
    }
    Ok(Some(bytes))
}

/// One entry of config.json's layer list.
struct KerasLayer<'a> {
    class: &'a str,
    name: String,
    config: &'a Value,
}

impl<'a> KerasLayer<'a> {
    fn parse(v: &'a Value) -> Self {
        let class = v["class_name"].as_str().unwrap_or("?");
        let config = &v["config"];
        let name = config["name"].as_str().unwrap_or(class).to_string();
        Self {
            class,
            name,
            config,
        }
    }

    fn unsupported(&self, reason: impl Into<String>) -> InteropError {
        InteropError::Unsupported {
            layer: self.name.clone(),
            class: self.class.into(),
            reason: reason.into(),
        }
    }

    fn bool_or(&self, key: &str, default: bool) -> bool {
        self.config[key].as_bool().unwrap_or(default)
    }

    fn f32_or(&self, key: &str, default: f32) -> f32 {
        self.config[key]
            .as_f64()
            .map(|v| v as f32)
            .unwrap_or(default)
    }

    fn count(&self, key: &str) -> Result<usize, InteropError> {
        match self.config[key].as_u64() {
            Some(n) if n >= 1 => Ok(n as usize),
            _ => Err(self.unsupported(format!("{key} must be a positive integer"))),
        }
    }

    /// `key` must be the string `want` (absent counts as `default`).
    fn expect_str(
        &self,
        key: &str,
        want: &str,
        default: &str,
        why: &str,
    ) -> Result<(), InteropError> {
        let got = self.config[key].as_str().unwrap_or(default);
        if got == want {
            Ok(())
        } else {
            Err(self.unsupported(format!("{key}={got:?}: {why}")))
        }
    }
}

/// The sequence length the model was built for.
fn window(config: &Value, layers: &[Value]) -> Option<usize> {
    let from_input = layers.iter().find_map(|l| {
        (l["class_name"] == "InputLayer").then(|| {
            let c = &l["config"];
            c["batch_shape"][1]
                .as_u64()
                .or(c["batch_input_shape"][1].as_u64())
        })?
    });
    from_input
        .or(config["build_config"]["input_shape"][1].as_u64())
        .map(|w| w as usize)
}

/// Reads config.json into an lstmd spec and the weighted layers' paths.
fn plan(config: &Value) -> Result<(ModelSpec, Vec<WeightedLayer>), InteropError> {
    let class = config["class_name"].as_str().unwrap_or("?");
    if class != "Sequential" {
        return Err(InteropError::Config(format!(
            "the model is a {class}; lstmd imports Sequential models"
        )));
    }
    let layers = config["config"]["layers"]
        .as_array()
        .ok_or_else(|| InteropError::Config("config.layers must be a list".into()))?;
    let window = window(config, layers).ok_or_else(|| {
        InteropError::Config(
            "the model has no fixed input length: build it on keras.Input(shape=(window,))".into(),
        )
    })?;
    let mut p = Planner::default();
    for v in layers {
        let layer = KerasLayer::parse(v);
        if layer.class != "InputLayer" {
            p.add(&layer)?;
        }
    }
    p.finish(window)
}

#[derive(Default)]
struct Planner {
    namer: PathNamer,
    embedding: Option<(usize, usize)>,
    embedding_dropout: f32,
    layers: Vec<LayerSpec>,
    return_sequences: Vec<(String, bool)>,
    dense: bool,
    weighted: Vec<WeightedLayer>,
}

impl Planner {
    fn add(&mut self, layer: &KerasLayer) -> Result<(), InteropError> {
        let path = self.namer.next(layer.class);
        if self.dense {
            return Err(layer.unsupported("the Dense softmax must be the last layer"));
        }
        match layer.class {
            "Embedding" => self.embedding(layer, path),
            "Dropout" => self.dropout(layer),
            "Dense" => self.dense(layer, path),
            "LSTM" | "GRU" | "SimpleRNN" | "Bidirectional" => self.recurrent(layer, path),
            _ => Err(layer.unsupported(
                "lstmd models are Embedding -> LSTM / GRU / SimpleRNN (optionally \
                 Bidirectional) -> Dense softmax, with Dropout in between",
            )),
        }
    }

    fn embedding(&mut self, layer: &KerasLayer, path: String) -> Result<(), InteropError> {
        if self.embedding.is_some() || !self.layers.is_empty() {
            return Err(layer.unsupported("the Embedding must be the first layer"));
        }
        if layer.bool_or("mask_zero", false) {
            return Err(layer.unsupported("mask_zero=True: lstmd does not mask padding"));
        }
        self.embedding = Some((layer.count("input_dim")?, layer.count("output_dim")?));
        self.weighted.push(WeightedLayer::Embedding { path });
        Ok(())
    }

    fn dropout(&mut self, layer: &KerasLayer) -> Result<(), InteropError> {
        if !layer.config["noise_shape"].is_null() {
            return Err(layer.unsupported("noise_shape: lstmd drops elements independently"));
        }
        let rate = layer.f32_or("rate", 0.0);
        let slot = match self.layers.last_mut() {
            Some(l) => &mut l.dropout,
            None if self.embedding.is_some() => &mut self.embedding_dropout,
            None => {
                return Err(
                    layer.unsupported("Dropout must follow the Embedding or a recurrent layer")
                )
            }
        };
        if *slot != 0.0 {
            return Err(layer.unsupported("two Dropout layers in a row: merge them into one"));
        }
        *slot = rate;
        Ok(())
    }

    fn dense(&mut self, layer: &KerasLayer, path: String) -> Result<(), InteropError> {
        let vocab = self.embedding.map(|e| e.0).unwrap_or(0);
        let units = layer.count("units")?;
        if units != vocab {
            return Err(layer.unsupported(format!(
                "units={units}: the Dense layer must predict the Embedding's {vocab} tokens"
            )));
        }
        layer.expect_str(
            "activation",
            "softmax",
            "linear",
            "lstmd's Dense layer is a softmax",
        )?;
        self.dense = true;
        self.weighted.push(WeightedLayer::Dense {
            path,
            use_bias: layer.bool_or("use_bias", true),
        });
        Ok(())
    }

    fn recurrent(&mut self, layer: &KerasLayer, path: String) -> Result<(), InteropError> {
        if self.embedding.is_none() {
            return Err(layer.unsupported("the Embedding must come first"));
        }
        let bidirectional = layer.class == "Bidirectional";
        let inner_value;
        let inner = if bidirectional {
            layer.expect_str(
                "merge_mode",
                "concat",
                "concat",
                "lstmd concatenates the directions",
            )?;
            inner_value = KerasLayer::parse(&layer.config["layer"]);
            if let Some(b) = layer.config.get("backward_layer").filter(|b| !b.is_null()) {
                let back = KerasLayer::parse(b);
                if back.class != inner_value.class
                    || back.config["units"] != inner_value.config["units"]
                {
                    return Err(layer.unsupported("the backward layer must match the forward one"));
                }
            }
            &inner_value
        } else {
            layer
        };
        let cell = cell_of(inner.class).ok_or_else(|| {
            layer.unsupported(format!(
                "wraps a {}; only LSTM, GRU and SimpleRNN",
                inner.class
            ))
        })?;
        check_cell(inner, cell)?;
        self.layers.push(LayerSpec {
            cell,
            units: inner.count("units")?,
            bidirectional,
            dropout: 0.0,
        });
        self.return_sequences
            .push((layer.name.clone(), inner.bool_or("return_sequences", false)));
        self.weighted.push(WeightedLayer::Recurrent {
            path,
            index: self.layers.len() - 1,
            use_bias: inner.bool_or("use_bias", true),
        });
        Ok(())
    }

    fn finish(self, window: usize) -> Result<(ModelSpec, Vec<WeightedLayer>), InteropError> {
        let (vocab_size, embedding_dim) = self
            .embedding
            .ok_or_else(|| InteropError::Config("the model has no Embedding layer".into()))?;
        if self.layers.is_empty() {
            return Err(InteropError::Config(
                "the model has no recurrent layer".into(),
            ));
        }
        if !self.dense {
            return Err(InteropError::Config(
                "the model does not end in a Dense softmax".into(),
            ));
        }
        let last = self.return_sequences.len() - 1;
        for (i, (name, rs)) in self.return_sequences.iter().enumerate() {
            if *rs != (i < last) {
                return Err(InteropError::Config(format!(
                    "layer {name:?} has return_sequences={}: every recurrent layer but the \
                     last must return sequences, the last must not",
                    if *rs { "True" } else { "False" }
                )));
            }
        }
        let spec = ModelSpec {
            vocab_size,
            embedding_dim,
            window,
            embedding_dropout: self.embedding_dropout,
            layers: self.layers,
        };
        Ok((spec, self.weighted))
    }
}

/// The settings of a recurrent layer lstmd's cells reproduce.
fn check_cell(layer: &KerasLayer, cell: Cell) -> Result<(), InteropError> {
    layer.expect_str("activation", "tanh", "tanh", "lstmd's cells use tanh")?;
    if cell != Cell::Rnn {
        layer.expect_str(
            "recurrent_activation",
            "sigmoid",
            "sigmoid",
            "lstmd's gates use sigmoid",
        )?;
    }
    for (flag, why) in [
        ("stateful", "lstmd's sessions carry state instead"),
        ("return_state", "lstmd passes only the outputs on"),
        ("go_backwards", "use Bidirectional for a reverse direction"),
    ] {
        if layer.bool_or(flag, false) {
            return Err(layer.unsupported(format!("{flag}=True: {why}")));
        }
    }
    for key in ["dropout", "recurrent_dropout"] {
        if layer.f32_or(key, 0.0) != 0.0 {
            return Err(layer.unsupported(format!(
                "{key}={}: lstmd has no dropout inside the cell; use a Dropout layer",
                layer.f32_or(key, 0.0)
            )));
        }
    }
    if cell == Cell::Gru && !layer.bool_or("reset_after", true) {
        return Err(layer.unsupported(
            "reset_after=False applies the reset gate before the recurrent matmul; \
             lstmd's GRU (PyTorch's) applies it after: use reset_after=True (Keras' default)",
        ));
    }
    Ok(())
}

/// Takes the Keras weights out of `datasets` into PyTorch-named tensors;
/// refuses missing, misshapen and left-over weights.
fn convert(
    spec: &ModelSpec,
    layers: &[WeightedLayer],
    mut datasets: BTreeMap<String, Array>,
) -> Result<HashMap<String, Tensor>, InteropError> {
    let mut take = |path: String, shape: &[usize]| -> Result<Tensor, InteropError> {
        let a = datasets
            .remove(&path)
            .ok_or_else(|| InteropError::weight(&path, "is missing"))?;
        if a.shape != shape {
            return Err(InteropError::weight(
                &path,
                format!("has shape {:?}, the config needs {shape:?}", a.shape),
            ));
        }
        from_array(&a)
    };
    let mut out = HashMap::new();
    let mut input = spec.embedding_dim;
    for layer in layers {
        match layer {
            WeightedLayer::Embedding { path } => {
                let e = take(
                    format!("{path}/vars/0"),
                    &[spec.vocab_size, spec.embedding_dim],
                )?;
                out.insert(EMBEDDING.to_string(), e);
            }
            WeightedLayer::Recurrent {
                path,
                index,
                use_bias,
            } => {
                let l = &spec.layers[*index];
                for reverse in [false, true].into_iter().take(l.directions()) {
                    let vars = cell_vars(path, l.bidirectional, reverse);
                    let names = direction_names(*index, reverse);
                    let (wi, wh, bi, bh) = convert_cell(&mut take, &vars, l, input, *use_bias)?;
                    out.insert(names.weight_ih, wi);
                    out.insert(names.weight_hh, wh);
                    out.insert(names.bias_ih, bi);
                    out.insert(names.bias_hh, bh);
                }
                input = l.output_width();
            }
            WeightedLayer::Dropout { .. } => {}
            WeightedLayer::Dense { path, use_bias } => {
                let w = take(format!("{path}/vars/0"), &[input, spec.vocab_size])?;
                out.insert(DENSE_WEIGHT.to_string(), transpose(&w)?);
                let b = match use_bias {
                    true => take(format!("{path}/vars/1"), &[spec.vocab_size])?,
                    false => tensors::zeros(spec.vocab_size)?,
                };
                out.insert(DENSE_BIAS.to_string(), b);
            }
        }
    }
    if let Some(extra) = datasets.keys().find(|p| p.starts_with("layers/")) {
        return Err(InteropError::weight(
            extra,
            "belongs to no layer the model describes",
        ));
    }
    Ok(out)
}

type Take<'a> = dyn FnMut(String, &[usize]) -> Result<Tensor, InteropError> + 'a;

/// One direction: Keras kernel (in, G*u), recurrent kernel (u, G*u) and
/// bias (G*u; GRU (2, G*u)) -> PyTorch weight_ih, weight_hh, bias_ih,
/// bias_hh with the gate blocks in PyTorch's order. Keras' single LSTM /
/// SimpleRNN bias goes to bias_ih, zeros to bias_hh.
fn convert_cell(
    take: &mut Take,
    vars: &str,
    l: &LayerSpec,
    input: usize,
    use_bias: bool,
) -> Result<(Tensor, Tensor, Tensor, Tensor), InteropError> {
    let rows = l.cell.gates() * l.units;
    let order = gate_order(l.cell);
    let kernel = take(format!("{vars}/0"), &[input, rows])?;
    let recurrent = take(format!("{vars}/1"), &[l.units, rows])?;
    let weight_ih = reorder_blocks(&transpose(&kernel)?, 0, order)?;
    let weight_hh = reorder_blocks(&transpose(&recurrent)?, 0, order)?;
    let (bias_ih, bias_hh) = match (use_bias, l.cell) {
        (false, _) => (tensors::zeros(rows)?, tensors::zeros(rows)?),
        (true, Cell::Gru) => {
            let b = take(format!("{vars}/2"), &[2, rows])?;
            (
                reorder_blocks(&b.get(0)?, 0, order)?,
                reorder_blocks(&b.get(1)?, 0, order)?,
            )
        }
        (true, _) => {
            let b = take(format!("{vars}/2"), &[rows])?;
            (reorder_blocks(&b, 0, order)?, tensors::zeros(rows)?)
        }
    };
    Ok((weight_ih, weight_hh, bias_ih, bias_hh))
}
