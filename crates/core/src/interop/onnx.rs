//! ONNX export: an lstmd model as one graph of ONNX's own LSTM / GRU / RNN
//! operators. Input `input_ids` int64 [batch, time]; output
//! `probabilities` float [batch, vocab] (softmax after the last token);
//! batch and time are dynamic. Like Predict, the graph keeps the last
//! `window` tokens of a longer input. Also the Triton model configuration
//! for the onnxruntime backend (`<model>/config.pbtxt`,
//! `<model>/<version>/model.onnx`).
use candle_core::Tensor;
use prost::Message;

use super::tensors::{le_bytes, reorder_blocks, LstmdModel};
use super::InteropError;
use crate::nn::naming::{direction_names, DENSE_BIAS, DENSE_WEIGHT, EMBEDDING};
use crate::nn::{Cell, LayerSpec};

/// The generated messages of `proto/onnx/onnx.proto` (generated code: its
/// doc comments are upstream's).
#[allow(clippy::all)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

pub const FILE: &str = "model.onnx";
pub const TRITON_CONFIG: &str = "config.pbtxt";
pub const INPUT: &str = "input_ids";
pub const OUTPUT: &str = "probabilities";
/// ONNX opset 17 (LSTM, GRU, RNN, Softmax over the last axis) and IR 8:
/// what onnxruntime 1.12 and later, and Triton's backend, load.
const OPSET: i64 = 17;
const IR_VERSION: i64 = 8;

/// For each ONNX gate block, the PyTorch block it comes from. LSTM: ONNX
/// (i, o, f, c) from PyTorch (i, f, g, o); GRU: ONNX (z, r, h) from
/// PyTorch (r, z, n).
fn onnx_order(cell: Cell) -> &'static [usize] {
    match cell {
        Cell::Lstm => &[0, 3, 1, 2],
        Cell::Gru => &[1, 0, 2],
        Cell::Rnn => &[0],
    }
}

/// The model.onnx bytes. Deterministic: same model, same bytes.
pub fn export(model: &LstmdModel, name: &str) -> Result<Vec<u8>, InteropError> {
    let spec = &model.info.spec;
    let g = nodes(model)?;
    let graph = pb::GraphProto {
        name: Some(name.into()),
        node: g.nodes,
        initializer: g.initializers,
        input: vec![value_info(
            INPUT,
            pb::tensor_proto::DataType::Int64,
            &[Dim::Batch, Dim::Time],
        )],
        output: vec![value_info(
            OUTPUT,
            pb::tensor_proto::DataType::Float,
            &[Dim::Batch, Dim::Fixed(spec.vocab_size as i64)],
        )],
        ..Default::default()
    };
    let mut metadata = vec![entry(
        "lstmd.spec",
        &serde_json::to_string(spec).expect("json"),
    )];
    if let Some(v) = &model.info.vocabulary {
        metadata.push(entry(
            "lstmd.vocabulary",
            &serde_json::to_string(v).expect("json"),
        ));
    }
    let onnx = pb::ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![pb::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(OPSET),
        }],
        producer_name: Some("lstmd".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        doc_string: Some(format!(
            "lstmd model {name}: token ids [batch, time] -> next-token probabilities \
             [batch, {}]; the last {} tokens are used",
            spec.vocab_size, spec.window
        )),
        graph: Some(graph),
        metadata_props: metadata,
        ..Default::default()
    };
    Ok(onnx.encode_to_vec())
}

/// The graph's nodes and initializers: window slice, embedding, the
/// recurrent layers, dense and softmax.
fn nodes(model: &LstmdModel) -> Result<Graph, InteropError> {
    let spec = &model.info.spec;
    let mut g = Graph::default();
    g.ints("window_start", &[-(spec.window as i64)]);
    g.ints("window_end", &[i64::MAX]);
    g.ints("time_axis", &[1]);
    g.floats("embedding", model.get(EMBEDDING)?)?;
    g.node(
        "Slice",
        &[INPUT, "window_start", "window_end", "time_axis"],
        &["context"],
        vec![],
    );
    g.node(
        "Gather",
        &["embedding", "context"],
        &["embedded"],
        vec![int("axis", 0)],
    );
    // ONNX's recurrent operators take time-major input [T, B, I].
    g.node(
        "Transpose",
        &["embedded"],
        &["x0"],
        vec![ints("perm", &[1, 0, 2])],
    );
    if spec.layers.len() > 1 {
        g.ints("sequence_shape", &[0, 0, -1]);
    }
    g.ints("last_shape", &[0, -1]);
    let last = spec.layers.len() - 1;
    for (i, l) in spec.layers.iter().enumerate() {
        recurrent(&mut g, model, i, l, i == last)?;
    }
    g.floats("dense_weight", model.get(DENSE_WEIGHT)?)?;
    g.floats("dense_bias", model.get(DENSE_BIAS)?)?;
    let features = format!("h{last}");
    g.node(
        "Gemm",
        &[&features, "dense_weight", "dense_bias"],
        &["logits"],
        vec![int("transB", 1)],
    );
    g.node("Softmax", &["logits"], &[OUTPUT], vec![int("axis", -1)]);
    Ok(g)
}

/// One recurrent layer: x{i} [T, B, I] -> x{i+1} [T, B, D*H] (every step)
/// or, for the last layer, h{i} [B, D*H] (forward state after the last
/// token, reverse state after the first, as lstmd and Keras concatenate).
fn recurrent(
    g: &mut Graph,
    model: &LstmdModel,
    i: usize,
    l: &LayerSpec,
    last: bool,
) -> Result<(), InteropError> {
    let order = onnx_order(l.cell);
    let mut w = Vec::new();
    let mut r = Vec::new();
    let mut b = Vec::new();
    for reverse in [false, true].into_iter().take(l.directions()) {
        let n = direction_names(i, reverse);
        let onnx = |name: &str| reorder_blocks(model.get(name)?, 0, order);
        w.push(onnx(&n.weight_ih)?);
        r.push(onnx(&n.weight_hh)?);
        b.push(Tensor::cat(&[onnx(&n.bias_ih)?, onnx(&n.bias_hh)?], 0)?);
    }
    let (wn, rn, bn) = (format!("W{i}"), format!("R{i}"), format!("B{i}"));
    g.floats(&wn, &Tensor::stack(&w, 0)?)?;
    g.floats(&rn, &Tensor::stack(&r, 0)?)?;
    g.floats(&bn, &Tensor::stack(&b, 0)?)?;
    let (y, y_h) = (format!("y{i}"), format!("y_h{i}"));
    let op = match l.cell {
        Cell::Lstm => "LSTM",
        Cell::Gru => "GRU",
        Cell::Rnn => "RNN",
    };
    let mut attrs = vec![
        int("hidden_size", l.units as i64),
        string(
            "direction",
            if l.bidirectional {
                "bidirectional"
            } else {
                "forward"
            },
        ),
    ];
    if l.cell == Cell::Gru {
        // PyTorch's GRU: the reset gate multiplies (W_hn h + b_hn).
        attrs.push(int("linear_before_reset", 1));
    }
    let x = format!("x{i}");
    if last {
        g.node(op, &[&x, &wn, &rn, &bn], &["", &y_h], attrs);
        // [D, B, H] -> [B, D, H] -> [B, D*H]
        let t = format!("{y_h}_t");
        g.node("Transpose", &[&y_h], &[&t], vec![ints("perm", &[1, 0, 2])]);
        g.node("Reshape", &[&t, "last_shape"], &[&format!("h{i}")], vec![]);
    } else {
        g.node(op, &[&x, &wn, &rn, &bn], &[&y], attrs);
        // [T, D, B, H] -> [T, B, D, H] -> [T, B, D*H]
        let t = format!("{y}_t");
        g.node("Transpose", &[&y], &[&t], vec![ints("perm", &[0, 2, 1, 3])]);
        g.node(
            "Reshape",
            &[&t, "sequence_shape"],
            &[&format!("x{}", i + 1)],
            vec![],
        );
    }
    Ok(())
}

#[derive(Default)]
struct Graph {
    nodes: Vec<pb::NodeProto>,
    initializers: Vec<pb::TensorProto>,
}

impl Graph {
    fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        outputs: &[&str],
        attribute: Vec<pb::AttributeProto>,
    ) {
        let name = format!("{op}_{}", self.nodes.len());
        self.nodes.push(pb::NodeProto {
            name: Some(name),
            op_type: Some(op.into()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            attribute,
            ..Default::default()
        });
    }

    fn floats(&mut self, name: &str, t: &Tensor) -> Result<(), InteropError> {
        self.initializers.push(pb::TensorProto {
            name: Some(name.into()),
            dims: t.dims().iter().map(|&d| d as i64).collect(),
            data_type: Some(pb::tensor_proto::DataType::Float as i32),
            raw_data: Some(le_bytes(t)?),
            ..Default::default()
        });
        Ok(())
    }

    fn ints(&mut self, name: &str, values: &[i64]) {
        self.initializers.push(pb::TensorProto {
            name: Some(name.into()),
            dims: vec![values.len() as i64],
            data_type: Some(pb::tensor_proto::DataType::Int64 as i32),
            int64_data: values.to_vec(),
            ..Default::default()
        });
    }
}

fn attr(name: &str, kind: pb::attribute_proto::AttributeType) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        r#type: Some(kind as i32),
        ..Default::default()
    }
}

fn int(name: &str, i: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        i: Some(i),
        ..attr(name, pb::attribute_proto::AttributeType::Int)
    }
}

fn ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        ints: v.to_vec(),
        ..attr(name, pb::attribute_proto::AttributeType::Ints)
    }
}

fn string(name: &str, s: &str) -> pb::AttributeProto {
    pb::AttributeProto {
        s: Some(s.as_bytes().to_vec()),
        ..attr(name, pb::attribute_proto::AttributeType::String)
    }
}

fn entry(key: &str, value: &str) -> pb::StringStringEntryProto {
    pb::StringStringEntryProto {
        key: Some(key.into()),
        value: Some(value.into()),
    }
}

enum Dim {
    Batch,
    Time,
    Fixed(i64),
}

fn value_info(name: &str, elem: pb::tensor_proto::DataType, dims: &[Dim]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::dimension::Value;
    let dim = dims
        .iter()
        .map(|d| pb::tensor_shape_proto::Dimension {
            value: Some(match d {
                Dim::Batch => Value::DimParam("batch".into()),
                Dim::Time => Value::DimParam("time".into()),
                Dim::Fixed(n) => Value::DimValue(*n),
            }),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: Some(elem as i32),
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Triton's model configuration for the onnxruntime backend, for the
/// layout `<name>/config.pbtxt` + `<name>/<version>/model.onnx`.
pub fn triton_config(name: &str, vocab_size: usize) -> String {
    format!(
        "name: \"{name}\"\n\
         backend: \"onnxruntime\"\n\
         max_batch_size: 0\n\
         input [\n  {{\n    name: \"{INPUT}\"\n    data_type: TYPE_INT64\n    dims: [ -1, -1 ]\n  }}\n]\n\
         output [\n  {{\n    name: \"{OUTPUT}\"\n    data_type: TYPE_FP32\n    dims: [ -1, {vocab_size} ]\n  }}\n]\n"
    )
}
