//! The Open Inference Protocol (KServe v2) on lstmd's port:
//! `inference.GRPCInferenceService`, what Triton's and KServe's clients
//! speak. One input, token ids INT64 or INT32 `[batch, time]`; outputs
//! `probabilities` FP32 `[batch, vocab]` and, when asked (the `top_k`
//! parameter, or by name), `top_k_ids` INT64 and `top_k_probabilities` FP32
//! `[batch, k]`, answered in `raw_output_contents` (what tritonclient's
//! `as_numpy` reads). A version is a number, a label, or empty for the
//! latest.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::blocking::blocking;
use super::status::OrStatus;
use crate::nn::metadata::ModelInfo;
use crate::oip as pb;
use crate::oip::grpc_inference_service_server::GrpcInferenceService;
use crate::oip::infer_parameter::ParameterChoice;
use crate::predict::sampling::top_k_of;
use crate::predict::Predictor;
use crate::store::{ModelRegistry, Selector};

pub const INPUT: &str = "input_ids";
pub const PROBABILITIES: &str = "probabilities";
pub const TOP_K_IDS: &str = "top_k_ids";
pub const TOP_K_PROBABILITIES: &str = "top_k_probabilities";
const OUTPUTS: [&str; 3] = [PROBABILITIES, TOP_K_IDS, TOP_K_PROBABILITIES];
/// The top-k size when a top-k output is asked for by name alone.
const DEFAULT_TOP_K: usize = 5;

pub struct InferenceApi {
    pub predictor: Arc<Predictor>,
    pub registry: Arc<ModelRegistry>,
    /// False until the server serves and again once it shuts down.
    pub ready: Arc<AtomicBool>,
}

/// An OIP version string as a selector.
pub fn selector(version: &str) -> Selector {
    match version.parse::<u32>() {
        _ if version.is_empty() => Selector::Latest,
        Ok(0) => Selector::Latest,
        Ok(v) => Selector::Version(v),
        Err(_) => Selector::Label(version.to_string()),
    }
}

fn invalid(message: String) -> Status {
    Status::invalid_argument(message)
}

fn tensor(
    name: &str,
    datatype: &str,
    shape: Vec<i64>,
) -> pb::model_metadata_response::TensorMetadata {
    pb::model_metadata_response::TensorMetadata {
        name: name.into(),
        datatype: datatype.into(),
        shape,
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for InferenceApi {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        let ready = self.ready.load(Ordering::Relaxed);
        Ok(Response::new(pb::ServerReadyResponse { ready }))
    }

    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let r = request.into_inner();
        let selector = selector(&r.version);
        let version = self.resolve(&r.name, &selector)?;
        let ready = self.predictor.is_ready(&r.name, version);
        if !ready {
            // Asking starts the load and the warm-up run; ready once done.
            let (predictor, name) = (Arc::clone(&self.predictor), r.name.clone());
            tokio::spawn(async move {
                if let Err(e) = predictor.model_by(&name, &Selector::Version(version)).await {
                    tracing::warn!(model = %name, version, error = %e, "model load failed");
                }
            });
        }
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "lstmd".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: Vec::new(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let r = request.into_inner();
        let version = self.resolve(&r.name, &selector(&r.version))?;
        let registry = Arc::clone(&self.registry);
        let name = r.name.clone();
        let (meta, versions) = blocking(move || {
            Ok::<_, crate::store::StoreError>((
                registry.get(&name, Some(version))?,
                registry.versions(&name)?,
            ))
        })
        .await?;
        let meta = meta.ok_or_else(|| self.not_found(&r.name, &selector(&r.version)))?;
        let info = ModelInfo::from_map(&meta.rest).map_err(|e| {
            Status::internal(format!(
                "model {}@{version} metadata is unreadable: {e}",
                r.name
            ))
        })?;
        let vocab = info.spec.vocab_size as i64;
        Ok(Response::new(pb::ModelMetadataResponse {
            name: r.name,
            versions: versions.iter().map(u32::to_string).collect(),
            platform: "lstmd".into(),
            inputs: vec![tensor(INPUT, "INT64", vec![-1, -1])],
            outputs: vec![
                tensor(PROBABILITIES, "FP32", vec![-1, vocab]),
                tensor(TOP_K_IDS, "INT64", vec![-1, -1]),
                tensor(TOP_K_PROBABILITIES, "FP32", vec![-1, -1]),
            ],
        }))
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let r = request.into_inner();
        let sequences = input_sequences(&r)?;
        let (wanted, k) = wanted_outputs(&r)?;
        let selector = selector(&r.model_version);
        let (model, probs) = self
            .predictor
            .distributions(&r.model_name, &selector, sequences)
            .await
            .or_status()?;
        let vocab = model.info.spec.vocab_size;
        let batch = probs.len() as i64;
        let k = k.map(|k| k.min(vocab));
        let mut outputs = Vec::new();
        let mut raw = Vec::new();
        for name in wanted {
            let (datatype, width, bytes) = match name {
                PROBABILITIES => (
                    "FP32",
                    vocab,
                    probs
                        .iter()
                        .flatten()
                        .flat_map(|p| p.to_le_bytes())
                        .collect::<Vec<u8>>(),
                ),
                TOP_K_IDS | TOP_K_PROBABILITIES => {
                    let k = k.unwrap_or(DEFAULT_TOP_K.min(vocab));
                    let tops = probs.iter().map(|p| top_k_of(p, k));
                    let bytes: Vec<u8> = if name == TOP_K_IDS {
                        tops.flatten()
                            .flat_map(|(id, _)| (id as i64).to_le_bytes())
                            .collect()
                    } else {
                        tops.flatten()
                            .flat_map(|(_, p)| (p as f32).to_le_bytes())
                            .collect()
                    };
                    (if name == TOP_K_IDS { "INT64" } else { "FP32" }, k, bytes)
                }
                _ => unreachable!("checked by wanted_outputs"),
            };
            outputs.push(pb::model_infer_response::InferOutputTensor {
                name: name.into(),
                datatype: datatype.into(),
                shape: vec![batch, width as i64],
                ..Default::default()
            });
            raw.push(bytes);
        }
        Ok(Response::new(pb::ModelInferResponse {
            model_name: model.name.clone(),
            model_version: model.version.to_string(),
            id: r.id,
            parameters: Default::default(),
            outputs,
            raw_output_contents: raw,
        }))
    }
}

impl InferenceApi {
    fn not_found(&self, name: &str, selector: &Selector) -> Status {
        let name: String = name.chars().take(64).collect();
        Status::not_found(match selector {
            Selector::Latest => format!("model {name:?} not found"),
            other => format!("model {name:?} {other} not found"),
        })
    }

    /// The existing version a request names.
    fn resolve(&self, name: &str, selector: &Selector) -> Result<u32, Status> {
        if crate::error::check_name("name", name).is_err() {
            return Err(self.not_found(name, selector));
        }
        self.registry
            .resolve(name, selector)
            .or_status()?
            .ok_or_else(|| self.not_found(name, selector))
    }
}

/// The request's one input as id sequences, each checked to fit a u32 (the
/// model checks them against its vocabulary).
fn input_sequences(r: &pb::ModelInferRequest) -> Result<Vec<Vec<u32>>, Status> {
    let [input] = r.inputs.as_slice() else {
        return Err(invalid(format!(
            "inputs must hold exactly 1 tensor ({INPUT}: token ids [batch, time]), got {}",
            r.inputs.len()
        )));
    };
    let (batch, time) = match input.shape.as_slice() {
        &[b, t] if b >= 1 && t >= 1 => (b as u64, t as u64),
        other => {
            return Err(invalid(format!(
                "inputs[0].shape must be [batch, time], both >= 1, got {other:?}"
            )))
        }
    };
    let n = batch
        .checked_mul(time)
        .filter(|&n| n <= u32::MAX as u64)
        .ok_or_else(|| invalid(format!("inputs[0].shape {:?} is too large", input.shape)))?
        as usize;
    let ids: Vec<i64> = match (input.datatype.as_str(), r.raw_input_contents.first()) {
        ("INT64" | "INT32", Some(_)) if r.raw_input_contents.len() != 1 => {
            return Err(invalid(format!(
                "raw_input_contents must hold 1 entry (one per input), got {}",
                r.raw_input_contents.len()
            )))
        }
        ("INT64", Some(raw)) => raw_elements::<8>(raw, n, "INT64")?
            .map(i64::from_le_bytes)
            .collect(),
        ("INT32", Some(raw)) => raw_elements::<4>(raw, n, "INT32")?
            .map(|b| i32::from_le_bytes(b) as i64)
            .collect(),
        ("INT64", None) => typed(input, n, |c| c.int64_contents.clone())?,
        ("INT32", None) => typed(input, n, |c| {
            c.int_contents.iter().map(|&v| v as i64).collect()
        })?,
        (other, _) => {
            return Err(invalid(format!(
                "inputs[0].datatype must be INT64 or INT32 (token ids), got {:?}",
                other.chars().take(16).collect::<String>()
            )))
        }
    };
    if let Some((i, v)) = ids
        .iter()
        .enumerate()
        .find(|(_, &v)| v < 0 || v > u32::MAX as i64)
    {
        return Err(invalid(format!(
            "inputs[0] element {i} must be a token id >= 0, got {v}"
        )));
    }
    Ok(ids
        .chunks_exact(time as usize)
        .map(|row| row.iter().map(|&v| v as u32).collect())
        .collect())
}

/// `n` elements of `W` bytes from a raw tensor whose length must match.
fn raw_elements<'a, const W: usize>(
    raw: &'a [u8],
    n: usize,
    datatype: &str,
) -> Result<impl Iterator<Item = [u8; W]> + 'a, Status> {
    if raw.len() != n * W {
        return Err(invalid(format!(
            "raw_input_contents[0] must hold {n} {datatype} elements ({} bytes) for inputs[0].shape, got {} bytes",
            n * W,
            raw.len()
        )));
    }
    Ok(raw
        .chunks_exact(W)
        .map(|c| c.try_into().expect("chunks of W bytes")))
}

fn typed(
    input: &pb::model_infer_request::InferInputTensor,
    n: usize,
    pick: impl Fn(&pb::InferTensorContents) -> Vec<i64>,
) -> Result<Vec<i64>, Status> {
    let values = input.contents.as_ref().map(pick).unwrap_or_default();
    if values.len() != n {
        return Err(invalid(format!(
            "inputs[0].contents must hold {n} elements for inputs[0].shape, got {}",
            values.len()
        )));
    }
    Ok(values)
}

/// The outputs to answer, in order, and the `top_k` parameter if given.
fn wanted_outputs(r: &pb::ModelInferRequest) -> Result<(Vec<&'static str>, Option<usize>), Status> {
    let k = match r
        .parameters
        .get("top_k")
        .and_then(|p| p.parameter_choice.as_ref())
    {
        None => None,
        Some(ParameterChoice::Int64Param(k)) if *k >= 1 => Some(*k as usize),
        Some(other) => {
            return Err(invalid(format!(
                "parameters.top_k must be an int64 >= 1, got {other:?}"
            )))
        }
    };
    if r.outputs.is_empty() {
        let mut all = vec![PROBABILITIES];
        if k.is_some() {
            all.extend([TOP_K_IDS, TOP_K_PROBABILITIES]);
        }
        return Ok((all, k));
    }
    let mut wanted = Vec::new();
    for (i, o) in r.outputs.iter().enumerate() {
        let Some(name) = OUTPUTS.iter().find(|n| **n == o.name) else {
            return Err(invalid(format!(
                "outputs[{i}].name must be one of {OUTPUTS:?}, got {:?}",
                o.name.chars().take(64).collect::<String>()
            )));
        };
        wanted.push(*name);
    }
    Ok((wanted, k))
}
