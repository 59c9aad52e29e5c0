//! Our layers (composed and fused paths) against PyTorch: logits to 1e-5 relative and
//! gradients to 1e-4 relative, for every cell, uni- and bidirectional, 1 and
//! 3 layers; plus a finite-difference check and the presets' parameter
//! counts. Fixtures come from tests/fixtures/gen_golden.py.
use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, Var};
use lstmd::nn::summary::summarize;
use lstmd::nn::{spec::preset, Cell, LayerSpec, ModelSpec, Network};

#[derive(serde::Deserialize)]
struct Case {
    name: String,
    cell: Cell,
    bidirectional: bool,
    layers: Vec<usize>,
    vocab: usize,
    embedding_dim: usize,
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn cases() -> Vec<Case> {
    let index = std::fs::read(fixtures().join("golden/index.json")).unwrap();
    serde_json::from_slice(&index).unwrap()
}

fn spec_of(case: &Case) -> ModelSpec {
    ModelSpec {
        vocab_size: case.vocab,
        embedding_dim: case.embedding_dim,
        window: 4,
        embedding_dropout: 0.0,
        layers: case
            .layers
            .iter()
            .map(|&units| LayerSpec {
                cell: case.cell,
                units,
                bidirectional: case.bidirectional,
                dropout: 0.0,
            })
            .collect(),
    }
}

struct Loaded {
    spec: ModelSpec,
    params: Vec<(String, Var)>,
    ids: Tensor,
    targets: Tensor,
    tensors: HashMap<String, Tensor>,
}

fn load(case: &Case, dtype: DType) -> Loaded {
    let path = fixtures().join(format!("golden/{}.safetensors", case.name));
    let tensors = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    let spec = spec_of(case);
    let params = lstmd::nn::naming::parameter_shapes(&spec)
        .into_iter()
        .map(|(name, _)| {
            let t = tensors[&name].to_dtype(dtype).unwrap();
            (name, Var::from_tensor(&t).unwrap())
        })
        .collect();
    Loaded {
        spec,
        params,
        ids: tensors["input_ids"].to_dtype(DType::U32).unwrap(),
        targets: tensors["targets"].to_dtype(DType::U32).unwrap(),
        tensors,
    }
}

fn network(l: &Loaded) -> Network {
    let map = l
        .params
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    Network::from_tensors(&l.spec, &map).unwrap()
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Largest |ours - theirs| / max(|theirs|, floor) over the tensor.
fn worst_relative(ours: &Tensor, theirs: &Tensor, floor: f64) -> f64 {
    values(ours)
        .iter()
        .zip(values(theirs))
        .map(|(a, b)| (a - b).abs() / b.abs().max(floor))
        .fold(0.0, f64::max)
}

/// Which forward pass a check runs.
#[derive(Clone, Copy, Debug)]
enum Path {
    Composed,
    Fused,
}

#[test]
fn logits_and_gradients_match_pytorch() {
    for path in [Path::Composed, Path::Fused] {
        check_against_pytorch(path);
    }
}

fn check_against_pytorch(path: Path) {
    let cases = cases();
    assert_eq!(cases.len(), 12, "3 cells x uni/bi x 1/3 layers");
    for case in &cases {
        let l = load(case, DType::F32);
        let net = network(&l);
        let logits = match path {
            Path::Composed => net.forward_composed(&l.ids, None).unwrap(),
            Path::Fused => net.forward_fused(&l.ids, None).unwrap(),
        };
        // Relative error, with a floor on the magnitude so values near zero
        // are judged against the logits' scale, not against 0: a tenth of
        // the largest logit (at least 1e-2). A logit near 0 is a sum of
        // terms near the largest magnitude; 1e-5 of 1e-2 would be below
        // one f32 ulp of those terms, so summing in another order (fused
        // kernels, other BLAS) could fail it by rounding alone.
        let expected = &l.tensors["expected.logits"];
        let scale = values(expected).iter().fold(0f64, |m, v| m.max(v.abs()));
        let err = worst_relative(&logits, expected, (0.1 * scale).max(1e-2));
        assert!(
            err <= 1e-5,
            "{} ({path:?}): logits differ by {err:e} relative",
            case.name
        );

        let loss = match path {
            Path::Composed => candle_nn::loss::cross_entropy(&logits, &l.targets).unwrap(),
            Path::Fused => lstmd::nn::fused::cross_entropy(&logits, &l.targets).unwrap(),
        };
        let expected_loss = values(&l.tensors["expected.loss"])[0];
        let got_loss = loss
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(
            (got_loss - expected_loss).abs() <= 1e-5 * expected_loss.abs(),
            "{} ({path:?}): loss {got_loss} vs {expected_loss}",
            case.name
        );
        let grads = loss.backward().unwrap();
        let mut worst_grad = 0f64;
        for (name, var) in &l.params {
            let ours = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{}: no grad for {name}", case.name));
            let theirs = &l.tensors[&format!("grad.{name}")];
            assert_eq!(ours.dims(), theirs.dims(), "{}: {name}", case.name);
            let err = worst_relative(ours, theirs, 1e-3);
            assert!(
                err <= 1e-4,
                "{} ({path:?}): grad of {name} differs by {err:e} relative",
                case.name
            );
            worst_grad = worst_grad.max(err);
        }
        eprintln!(
            "{} ({path:?}): logits {err:.1e}, gradients {worst_grad:.1e} worst relative error",
            case.name
        );
    }
}

#[test]
fn gradients_match_finite_differences() {
    // In f64, central differences agree with autograd to ~1e-8; a wrong
    // backward formula shows up as O(1) relative error.
    for name in ["lstm_bi_3", "gru_bi_3", "rnn_uni_3"] {
        let case = cases().into_iter().find(|c| c.name == name).unwrap();
        let l = load(&case, DType::F64);
        let net = network(&l);
        let loss_of = |net: &Network| -> f64 {
            let logits = net.forward(&l.ids, None).unwrap();
            candle_nn::loss::cross_entropy(&logits, &l.targets)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let logits = net.forward(&l.ids, None).unwrap();
        let grads = candle_nn::loss::cross_entropy(&logits, &l.targets)
            .unwrap()
            .backward()
            .unwrap();
        let eps = 1e-6;
        for (pname, var) in &l.params {
            let base = values(var.as_tensor());
            let analytic = values(grads.get(var.as_tensor()).unwrap());
            // A handful of coordinates per tensor keeps the test quick.
            let step = (base.len() / 5).max(1);
            for i in (0..base.len()).step_by(step) {
                let probe = |delta: f64| {
                    let mut v = base.clone();
                    v[i] += delta;
                    var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                        .unwrap();
                    loss_of(&net)
                };
                let numeric = (probe(eps) - probe(-eps)) / (2.0 * eps);
                var.set(&Tensor::from_vec(base.clone(), var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                let diff = (numeric - analytic[i]).abs();
                assert!(
                    diff <= 1e-6 + 1e-5 * analytic[i].abs(),
                    "{name}: d loss / d {pname}[{i}]: numeric {numeric}, autograd {}",
                    analytic[i]
                );
            }
        }
    }
}

#[test]
fn preset_parameter_counts_match_pytorch() {
    let counts: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixtures().join("preset_param_counts.json")).unwrap(),
    )
    .unwrap();
    for name in lstmd::nn::spec::PRESETS {
        let expected = &counts[name];
        let summary = summarize(&preset(name).unwrap());
        let rows: HashMap<&str, u64> = summary
            .layers
            .iter()
            .map(|r| (r.name.as_str(), r.parameters))
            .collect();
        assert_eq!(
            rows["embedding"],
            expected["embedding"].as_u64().unwrap(),
            "{name}"
        );
        for (i, n) in expected["layers"].as_array().unwrap().iter().enumerate() {
            assert_eq!(
                rows[format!("layers.{i}").as_str()],
                n.as_u64().unwrap(),
                "{name} layer {i}"
            );
        }
        assert_eq!(rows["dense"], expected["dense"].as_u64().unwrap(), "{name}");
        assert_eq!(
            summary.total_parameters,
            expected["total"].as_u64().unwrap(),
            "{name}"
        );
    }
}
