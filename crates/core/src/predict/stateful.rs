//! Stateful sessions on the predictor: open one on a model, feed it tokens
//! (its state carried between calls), close it.
use std::sync::Arc;

use super::context::Reading;
use super::sessions::Sessions;
use super::{LoadedModel, PredictError, Predictor, SequenceInput, TokenProbability};
use crate::error::check_range;
use crate::store::Selector;

impl Predictor {
    /// Opens a session on a unidirectional model; returns its id and model.
    pub async fn open_session(
        &self,
        name: &str,
        selector: &Selector,
        whole_input: bool,
    ) -> Result<(String, Arc<LoadedModel>), PredictError> {
        let model = self.model_by(name, selector).await?;
        let reading = session_reading(&model, whole_input);
        if !matches!(reading, Reading::Carried(_)) && whole_input {
            return Err(PredictError::NotStateful(format!(
                "{}@{}",
                model.name, model.version
            )));
        }
        let id = self
            .sessions
            .open(Arc::clone(&model), reading)
            .ok_or(PredictError::TooManySessions(self.sessions.max))?;
        Ok((id, model))
    }

    /// Feeds tokens to a session; returns the top-k after them and the
    /// number of tokens the session has seen.
    pub async fn feed_session(
        &self,
        id: &str,
        input: SequenceInput,
        top_k: Option<u32>,
    ) -> Result<(Vec<TokenProbability>, u64), PredictError> {
        let mut session = self
            .sessions
            .lock(id)
            .await
            .ok_or_else(|| PredictError::SessionNotFound(id.to_string()))?;
        let model = Arc::clone(&session.model);
        let k = check_range(
            "top_k",
            top_k.unwrap_or(5) as usize,
            1,
            model.info.spec.vocab_size,
        )?;
        let ids = self.encode(&model, "tokens", input)?;
        let n = ids.len();
        // The reading moves to the blocking thread and back; a failed call
        // leaves it as it was.
        let inference = Arc::clone(&model.inference);
        let mut reading = std::mem::replace(&mut session.reading, Reading::Carried(None));
        let (result, reading) = tokio::task::spawn_blocking(move || {
            let r = reading.feed(inference.as_ref(), &ids);
            (r, reading)
        })
        .await
        .expect("inference does not panic");
        session.reading = reading;
        let probs = result?;
        session.tokens_seen += n as u64;
        Sessions::touch(&mut session);
        Ok((Self::top(&model, &probs, k), session.tokens_seen))
    }

    pub fn close_session(&self, id: &str) -> Result<(), PredictError> {
        if self.sessions.close(id) {
            Ok(())
        } else {
            Err(PredictError::SessionNotFound(id.to_string()))
        }
    }
}

/// What a new session of `model` keeps between calls.
fn session_reading(model: &LoadedModel, whole_input: bool) -> Reading {
    Reading::new(
        model.info.context(),
        whole_input,
        model.inference.is_stateful(),
        0,
    )
}
