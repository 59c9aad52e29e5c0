//! PredictionService.
use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::predict::{Predictor, SequenceInput};
use crate::proto as pb;
use crate::proto::prediction_service_server::PredictionService;

pub struct PredictionApi {
    pub predictor: Arc<Predictor>,
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
            .map(|(i, s)| match (s.ids.is_empty(), s.text.is_empty()) {
                (false, true) => Ok(SequenceInput::Ids(s.ids)),
                (true, false) => Ok(SequenceInput::Text(s.text)),
                (true, true) => Err(Status::invalid_argument(format!(
                    "sequences[{i}] must hold 1 or more tokens as ids or text, got none"
                ))),
                (false, false) => Err(Status::invalid_argument(format!(
                    "sequences[{i}] must set ids or text, not both"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let version = (r.version != 0).then_some(r.version);
        let out = self
            .predictor
            .predict(&r.model, version, sequences, r.top_k)
            .await?;
        Ok(Response::new(pb::PredictResponse {
            predictions: out
                .top
                .into_iter()
                .map(|top| pb::Prediction {
                    top: top
                        .into_iter()
                        .map(|t| pb::TokenProbability {
                            id: t.id,
                            probability: t.probability,
                            text: t.text.unwrap_or_default(),
                        })
                        .collect(),
                })
                .collect(),
            model: out.name,
            version: out.version,
        }))
    }

    type GenerateStream = Tokens;

    async fn generate(
        &self,
        _request: Request<pb::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        Err(Status::unimplemented("Generate is not implemented yet"))
    }
}
