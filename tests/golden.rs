//! Our layers (composed and fused paths) against PyTorch: logits to 1e-5 relative and
//! gradients to 1e-4 relative, for every cell, uni- and bidirectional, 1 and
//! 3 layers; plus a finite-difference check and the presets' parameter
//! counts. Fixtures come from tests/fixtures/gen_golden.py.
use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use lstmd::check::golden::{cases, values, Fixture, Forward};
use lstmd::nn::spec::preset;
use lstmd::nn::summary::summarize;
use lstmd::nn::Network;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn golden() -> PathBuf {
    fixtures().join("golden")
}

#[test]
fn logits_and_gradients_match_pytorch() {
    let cases = cases(&golden()).unwrap();
    assert_eq!(cases.len(), 12, "3 cells x uni/bi x 1/3 layers");
    for forward in [Forward::Composed, Forward::Fused] {
        for case in &cases {
            let r = Fixture::load(&golden(), case, DType::F32, &Device::Cpu)
                .unwrap()
                .check(forward)
                .unwrap();
            let name = &case.name;
            assert!(
                r.logits <= 1e-5,
                "{name} ({forward:?}): logits differ by {:e} relative",
                r.logits
            );
            assert!(
                r.loss <= 1e-5,
                "{name} ({forward:?}): loss differs by {:e} relative",
                r.loss
            );
            assert!(
                r.gradients <= 1e-4,
                "{name} ({forward:?}): grad of {} differs by {:e} relative",
                r.worst_gradient,
                r.gradients
            );
            eprintln!(
                "{name} ({forward:?}): logits {:.1e}, gradients {:.1e} worst relative error",
                r.logits, r.gradients
            );
        }
    }
}

/// Every-position loss (logits after each prefix) against PyTorch, both
/// paths; bidirectional models run each prefix on its own.
#[test]
fn every_position_logits_and_gradients_match_pytorch() {
    let dir = golden().join("every_position");
    let cases = cases(&dir).unwrap();
    assert_eq!(cases.len(), 12, "3 cells x uni/bi x 1/3 layers");
    for forward in [Forward::Composed, Forward::Fused] {
        for case in &cases {
            let r = Fixture::load(&dir, case, DType::F32, &Device::Cpu)
                .unwrap()
                .check(forward)
                .unwrap();
            let name = &case.name;
            assert!(
                r.logits <= 1e-5,
                "{name} ({forward:?}): logits {:e}",
                r.logits
            );
            assert!(r.loss <= 1e-5, "{name} ({forward:?}): loss {:e}", r.loss);
            assert!(
                r.gradients <= 1e-4,
                "{name} ({forward:?}): grad of {} differs by {:e} relative",
                r.worst_gradient,
                r.gradients
            );
        }
    }
}

/// The `lstmd-check` binary runs the same check (on the CPU here; on a GPU
/// host, `--device cuda`) and says so.
#[test]
fn check_binary_runs_the_fixtures() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lstmd-check"))
        .args(["golden", "--device", "cpu", "--fixtures"])
        .arg(golden())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("golden on cpu: 24 of 24 within 1e-4 relative"),
        "{stdout}"
    );
}

#[test]
fn gradients_match_finite_differences() {
    // In f64, central differences agree with autograd to ~1e-8; a wrong
    // backward formula shows up as O(1) relative error.
    for name in ["lstm_bi_3", "gru_bi_3", "rnn_uni_3"] {
        let case = cases(&golden())
            .unwrap()
            .into_iter()
            .find(|c| c.name == name)
            .unwrap();
        let l = Fixture::load(&golden(), &case, DType::F64, &Device::Cpu).unwrap();
        let net = l.network().unwrap();
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
            let base = values(var.as_tensor()).unwrap();
            let analytic = values(grads.get(var.as_tensor()).unwrap()).unwrap();
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
