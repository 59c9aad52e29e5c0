//! The PyTorch golden fixtures (`tests/fixtures/golden/`, written by
//! `tests/fixtures/gen_golden.py`) checked on any device: our logits, loss
//! and gradients against PyTorch's. The tests run it on the CPU (composed
//! and fused paths); `lstmd-check golden --device cuda` runs it on a GPU,
//! from a binary, where there is no Rust toolchain.
use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, Context};
use candle_core::{DType, Device, Tensor, Var};

use crate::nn::{Cell, LayerSpec, ModelSpec, Network};

/// One fixture's model, as `index.json` lists it.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct Case {
    pub name: String,
    pub cell: Cell,
    pub bidirectional: bool,
    pub layers: Vec<usize>,
    pub vocab: usize,
    pub embedding_dim: usize,
}

impl Case {
    pub fn spec(&self) -> ModelSpec {
        ModelSpec {
            vocab_size: self.vocab,
            embedding_dim: self.embedding_dim,
            window: 4,
            embedding_dropout: 0.0,
            layers: self
                .layers
                .iter()
                .map(|&units| LayerSpec {
                    cell: self.cell,
                    units,
                    bidirectional: self.bidirectional,
                    dropout: 0.0,
                })
                .collect(),
        }
    }
}

/// The cases of a fixture directory.
pub fn cases(dir: &Path) -> anyhow::Result<Vec<Case>> {
    let path = dir.join("index.json");
    let index = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&index).with_context(|| format!("{} is not valid", path.display()))
}

/// Which forward pass a check runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forward {
    /// candle tensor ops: any device and dtype.
    Composed,
    /// The fused kernels: f32 on the CPU only.
    Fused,
}

/// A case's weights (as trainable variables), inputs and PyTorch's answers,
/// on one device in one dtype.
pub struct Fixture {
    pub case: Case,
    pub spec: ModelSpec,
    pub params: Vec<(String, Var)>,
    pub ids: Tensor,
    pub targets: Tensor,
    /// Everything the fixture file holds (on the CPU): `expected.*`, `grad.*`.
    pub tensors: HashMap<String, Tensor>,
}

/// How far one case is from PyTorch: worst relative errors.
#[derive(Clone, Debug)]
pub struct Report {
    pub name: String,
    pub logits: f64,
    pub loss: f64,
    pub gradients: f64,
    /// The parameter with the worst gradient.
    pub worst_gradient: String,
}

impl Report {
    pub fn worst(&self) -> f64 {
        self.logits.max(self.loss).max(self.gradients)
    }
}

impl Fixture {
    pub fn load(dir: &Path, case: &Case, dtype: DType, device: &Device) -> anyhow::Result<Self> {
        let path = dir.join(format!("{}.safetensors", case.name));
        let tensors = candle_core::safetensors::load(&path, &Device::Cpu)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let get = |name: &str| {
            tensors
                .get(name)
                .ok_or_else(|| anyhow!("{} lacks {name}", path.display()))
        };
        let spec = case.spec();
        let params = crate::nn::naming::parameter_shapes(&spec)
            .into_iter()
            .map(|(name, _)| {
                let t = get(&name)?.to_dtype(dtype)?.to_device(device)?;
                Ok((name, Var::from_tensor(&t)?))
            })
            .collect::<anyhow::Result<_>>()?;
        let ids = get("input_ids")?.to_dtype(DType::U32)?.to_device(device)?;
        let targets = get("targets")?.to_dtype(DType::U32)?.to_device(device)?;
        Ok(Self {
            case: case.clone(),
            spec,
            params,
            ids,
            targets,
            tensors,
        })
    }

    /// The network over the fixture's variables (gradients reach them).
    pub fn network(&self) -> anyhow::Result<Network> {
        let map = self
            .params
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect();
        Ok(Network::from_tensors(&self.spec, &map)?)
    }

    fn expected(&self, name: &str) -> anyhow::Result<&Tensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| anyhow!("fixture {} lacks {name}", self.case.name))
    }

    /// Runs the forward pass, the loss and the backward pass, and measures
    /// each against PyTorch's.
    pub fn check(&self, forward: Forward) -> anyhow::Result<Report> {
        let name = &self.case.name;
        let net = self.network()?;
        // Every-position fixtures hold logits [B, T, vocab] and targets [B, T].
        let every = self.targets.rank() == 2;
        let logits = match (forward, every) {
            (Forward::Composed, false) => net.forward_composed(&self.ids, None)?,
            (Forward::Fused, false) => net.forward_fused(&self.ids, None)?,
            (f, true) => net.forward_every_on(&self.ids, None, f == Forward::Fused)?,
        };
        // Relative error with a floor on the magnitude, so values near zero
        // are judged against the logits' scale, not against 0: a tenth of
        // the largest logit (at least 1e-2). A logit near 0 is a sum of
        // terms near the largest magnitude; 1e-5 of 1e-2 would be below one
        // f32 ulp of those terms, so summing in another order (fused
        // kernels, other BLAS, a GPU) could fail it by rounding alone.
        let expected = self.expected("expected.logits")?;
        let scale = values(expected)?.iter().fold(0f64, |m, v| m.max(v.abs()));
        let logits_err = worst_relative(&logits, expected, (0.1 * scale).max(1e-2))?;

        let (flat, targets) = if every {
            let v = self.spec.vocab_size;
            (logits.reshape(((), v))?, self.targets.flatten_all()?)
        } else {
            (logits.clone(), self.targets.clone())
        };
        let loss = match forward {
            Forward::Composed => candle_nn::loss::cross_entropy(&flat, &targets)?,
            Forward::Fused => crate::nn::fused::cross_entropy(&flat, &targets)?,
        };
        let expected_loss = values(self.expected("expected.loss")?)?[0];
        let got_loss = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let loss_err =
            (got_loss - expected_loss).abs() / expected_loss.abs().max(f64::MIN_POSITIVE);

        let grads = loss.backward()?;
        let (mut gradients, mut worst_gradient) = (0f64, String::new());
        for (pname, var) in &self.params {
            let ours = grads
                .get(var.as_tensor())
                .ok_or_else(|| anyhow!("{name}: no gradient for {pname}"))?;
            let theirs = self.expected(&format!("grad.{pname}"))?;
            if ours.dims() != theirs.dims() {
                anyhow::bail!(
                    "{name}: gradient of {pname} has shape {:?}, PyTorch's {:?}",
                    ours.dims(),
                    theirs.dims()
                );
            }
            let err = worst_relative(ours, theirs, 1e-3)?;
            if err >= gradients {
                gradients = err;
                worst_gradient = pname.clone();
            }
        }
        Ok(Report {
            name: name.clone(),
            logits: logits_err,
            loss: loss_err,
            gradients,
            worst_gradient,
        })
    }
}

/// A tensor's elements as f64, copied to the host.
pub fn values(t: &Tensor) -> candle_core::Result<Vec<f64>> {
    t.to_dtype(DType::F64)?.flatten_all()?.to_vec1()
}

/// Largest |ours - theirs| / max(|theirs|, floor) over the tensor.
pub fn worst_relative(ours: &Tensor, theirs: &Tensor, floor: f64) -> candle_core::Result<f64> {
    Ok(values(ours)?
        .iter()
        .zip(values(theirs)?)
        .map(|(a, b)| (a - b).abs() / b.abs().max(floor))
        .fold(0.0, f64::max))
}
