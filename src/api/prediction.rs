//! PredictionService.
use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::{wrappers::ReceiverStream, Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::status::{IntoStatus, OrStatus};
use crate::predict::{GenerateParams, Predictor, SequenceInput, TokenProbability};
use crate::proto as pb;
use crate::proto::prediction_service_server::PredictionService;
use crate::store::Selector;

pub struct PredictionApi {
    pub predictor: Arc<Predictor>,
    pub session_idle_timeout_seconds: u32,
}

type Tokens = Pin<Box<dyn Stream<Item = Result<pb::GenerateResponse, Status>> + Send>>;

#[tonic::async_trait]
impl PredictionService for PredictionApi {
    async fn predict(
        &self,
        request: Request<pb::PredictRequest>,
    ) -> Result<Response<pb::PredictResponse>, Status> {
        let r = request.into_inner();
        let sequences = r
            .sequences
            .into_iter()
            .enumerate()
            .map(|(i, s)| sequence_input(&format!("sequences[{i}]"), Some(s)))
            .collect::<Result<Vec<_>, _>>()?;
        let (name, selector) = model_ref(&r.model, r.version)?;
        let out = self
            .predictor
            .predict_by(name, &selector, sequences, r.top_k, r.whole_input)
            .await
            .or_status()?;
        Ok(Response::new(pb::PredictResponse {
            predictions: out
                .top
                .into_iter()
                .map(|top| pb::Prediction {
                    top: top.into_iter().map(token_to_proto).collect(),
                })
                .collect(),
            model: out.name,
            version: out.version,
        }))
    }

    type GenerateStream = Tokens;

    async fn generate(
        &self,
        request: Request<pb::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let r = request.into_inner();
        let params = GenerateParams {
            prompt: sequence_input("prompt", r.prompt)?,
            max_tokens: r.max_tokens as usize,
            temperature: r.temperature.unwrap_or(1.0),
            top_k: r.top_k as usize,
            seed: r.seed,
            stop_ids: r.stop_ids,
            whole_input: r.whole_input,
        };
        let (name, selector) = model_ref(&r.model, r.version)?;
        let rx = self
            .predictor
            .generate(name, &selector, params)
            .await
            .or_status()?;
        let mut index = 0;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).map(
            move |t| {
                let out = t.map(|t| pb::GenerateResponse {
                    token: Some(token_to_proto(t)),
                    index,
                });
                index += 1;
                out.map_err(IntoStatus::into_status)
            },
        ))))
    }

    async fn open_session(
        &self,
        request: Request<pb::OpenSessionRequest>,
    ) -> Result<Response<pb::SessionInfo>, Status> {
        let r = request.into_inner();
        let (name, selector) = model_ref(&r.model, r.version)?;
        let (id, model, state) = if r.portable {
            self.predictor
                .open_portable_session(name, &selector, r.whole_input)
                .await
                .or_status()?
        } else {
            let (id, model) = self
                .predictor
                .open_session(name, &selector, r.whole_input)
                .await
                .or_status()?;
            (id, model, Vec::new())
        };
        Ok(Response::new(pb::SessionInfo {
            session_id: id,
            model: model.name.clone(),
            version: model.version,
            idle_timeout_seconds: self.session_idle_timeout_seconds,
            state,
        }))
    }

    async fn feed_session(
        &self,
        request: Request<pb::FeedSessionRequest>,
    ) -> Result<Response<pb::FeedSessionResponse>, Status> {
        let r = request.into_inner();
        let input = sequence_input("tokens", r.tokens)?;
        let (top, tokens_seen, state) = if r.state.is_empty() {
            let (top, seen) = self
                .predictor
                .feed_session(&r.session_id, input, r.top_k)
                .await
                .or_status()?;
            (top, seen, Vec::new())
        } else {
            self.predictor
                .feed_portable_session(&r.state, &r.session_id, input, r.top_k)
                .await
                .or_status()?
        };
        Ok(Response::new(pb::FeedSessionResponse {
            prediction: Some(pb::Prediction {
                top: top.into_iter().map(token_to_proto).collect(),
            }),
            tokens_seen,
            state,
        }))
    }

    async fn close_session(
        &self,
        request: Request<pb::CloseSessionRequest>,
    ) -> Result<Response<pb::CloseSessionResponse>, Status> {
        self.predictor
            .close_session(&request.into_inner().session_id)
            .or_status()?;
        Ok(Response::new(pb::CloseSessionResponse {}))
    }
}

/// A request's model and version: `NAME@LABEL` names a label's version
/// (then `version` must be 0), a plain name the latest (0) or `version`.
fn model_ref(model: &str, version: u32) -> Result<(&str, Selector), Status> {
    match model.split_once('@') {
        None => Ok((model, Selector::of(version, ""))),
        Some(_) if version != 0 => Err(Status::invalid_argument(
            "version must be 0 when model names a label (NAME@LABEL): the label names the version",
        )),
        Some((name, label)) => Ok((name, Selector::Label(label.to_string()))),
    }
}

fn token_to_proto(t: TokenProbability) -> pb::TokenProbability {
    pb::TokenProbability {
        id: t.id,
        probability: t.probability,
        text: t.text.unwrap_or_default(),
    }
}

/// Exactly one of ids and text must be set.
fn sequence_input(field: &str, s: Option<pb::Sequence>) -> Result<SequenceInput, Status> {
    let s = s.unwrap_or_default();
    match (s.ids.is_empty(), s.text.is_empty()) {
        (false, true) => Ok(SequenceInput::Ids(s.ids)),
        (true, false) => Ok(SequenceInput::Text(s.text)),
        (true, true) => Err(Status::invalid_argument(format!(
            "{field} must hold 1 or more tokens as ids or text, got none"
        ))),
        (false, false) => Err(Status::invalid_argument(format!(
            "{field} must set ids or text, not both"
        ))),
    }
}
