//! Stateful sessions on the predictor: open one on a model, feed it tokens
//! (its state carried between calls), close it.
use std::sync::Arc;

use super::context::Reading;
use super::portable::{self, PortableSession, Refused};
use super::sessions::Sessions;
use super::{LoadedModel, PredictError, Predictor, SequenceInput, TokenProbability};
use crate::error::{check_range, InvalidField};
use crate::store::Selector;

impl Predictor {
    /// Opens a session on a unidirectional model; returns its id and model.
    pub async fn open_session(
        &self,
        name: &str,
        selector: &Selector,
        whole_input: bool,
    ) -> Result<(String, Arc<LoadedModel>), PredictError> {
        let (model, reading) = self.session_start(name, selector, whole_input).await?;
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
        let (k, ids) = self.feed_input(&model, input, top_k)?;
        let n = ids.len();
        let reading = std::mem::replace(&mut session.reading, Reading::Carried(None));
        let (result, reading) = feed_reading(&model, reading, ids).await;
        session.reading = reading;
        let probs = result?;
        session.tokens_seen += n as u64;
        Sessions::touch(&mut session);
        Ok((Self::top(&model, &probs, k), session.tokens_seen))
    }

    /// Opens a portable session (portable.rs): nothing of it stays here;
    /// returns its id, its model, and the token that holds it.
    pub async fn open_portable_session(
        &self,
        name: &str,
        selector: &Selector,
        whole_input: bool,
    ) -> Result<(String, Arc<LoadedModel>, Vec<u8>), PredictError> {
        let (model, reading) = self.session_start(name, selector, whole_input).await?;
        let session = PortableSession {
            session: super::sessions::new_session_id(),
            model: model.name.clone(),
            version: model.version,
            tokens_seen: 0,
            reading,
        };
        let token = portable::seal(&self.session_key, &session)?;
        Ok((session.session, model, token))
    }

    /// Feeds tokens to the portable session `token` holds (`id`, when
    /// given, must be its id); returns the top-k after them, the tokens
    /// seen, and the session's next token.
    pub async fn feed_portable_session(
        &self,
        token: &[u8],
        id: &str,
        input: SequenceInput,
        top_k: Option<u32>,
    ) -> Result<(Vec<TokenProbability>, u64, Vec<u8>), PredictError> {
        let unsealed = portable::unseal(&self.session_key, token, self.limits.session_idle_timeout)
            .map_err(|refused| match refused {
                Refused::Invalid(field) => PredictError::Invalid(field),
                Refused::Expired(session) => PredictError::SessionNotFound(session),
            })?;
        if !id.is_empty() && id != unsealed.session() {
            return Err(PredictError::Invalid(InvalidField::new(
                "session_id",
                "names another session than `state` holds (send the state of this session)",
            )));
        }
        let (name, version) = unsealed.model();
        let model = match self.model_by(name, &Selector::Version(version)).await {
            Err(PredictError::NotFound(_)) => {
                return Err(PredictError::SessionNotFound(
                    unsealed.session().to_string(),
                ))
            }
            other => other?,
        };
        let mut session = unsealed.restore(&model.info.spec, model.inference.as_ref())?;
        let (k, ids) = self.feed_input(&model, input, top_k)?;
        session.tokens_seen += ids.len() as u64;
        let (result, reading) = feed_reading(&model, session.reading, ids).await;
        let probs = result?;
        session.reading = reading;
        let token = portable::seal(&self.session_key, &session)?;
        Ok((Self::top(&model, &probs, k), session.tokens_seen, token))
    }

    /// A FeedSession's k (5 by default) and token ids, checked for `model`.
    fn feed_input(
        &self,
        model: &LoadedModel,
        input: SequenceInput,
        top_k: Option<u32>,
    ) -> Result<(usize, Vec<u32>), PredictError> {
        let vocab = model.info.spec.vocab_size;
        let k = check_range("top_k", top_k.unwrap_or(5) as usize, 1, vocab)?;
        Ok((k, self.encode(model, "tokens", input)?))
    }

    /// A new session's model and what it keeps between calls; a model
    /// that cannot carry a state refuses `whole_input`.
    async fn session_start(
        &self,
        name: &str,
        selector: &Selector,
        whole_input: bool,
    ) -> Result<(Arc<LoadedModel>, Reading), PredictError> {
        let model = self.model_by(name, selector).await?;
        let reading = session_reading(&model, whole_input);
        if !matches!(reading, Reading::Carried(_)) && whole_input {
            return Err(PredictError::NotStateful(format!(
                "{}@{}",
                model.name, model.version
            )));
        }
        Ok((model, reading))
    }

    pub fn close_session(&self, id: &str) -> Result<(), PredictError> {
        if self.sessions.close(id) {
            Ok(())
        } else {
            Err(PredictError::SessionNotFound(id.to_string()))
        }
    }
}

/// Feeds `ids` to `reading` on a blocking thread; the reading comes back
/// either way, as it was after a failure.
async fn feed_reading(
    model: &LoadedModel,
    mut reading: Reading,
    ids: Vec<u32>,
) -> (Result<Vec<f32>, crate::backend::EngineError>, Reading) {
    let inference = Arc::clone(&model.inference);
    tokio::task::spawn_blocking(move || {
        let r = reading.feed(inference.as_ref(), &ids);
        (r, reading)
    })
    .await
    .expect("inference does not panic")
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
