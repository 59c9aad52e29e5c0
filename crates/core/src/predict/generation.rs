//! Generate: tokens sampled one at a time after a prompt, streamed as
//! they come.
use rand::SeedableRng;
use tokio::sync::mpsc;

use super::context::Reading;
use super::sampling::sample;
use super::{GenerateParams, PredictError, Predictor, TokenProbability};
use crate::backend::EngineError;
use crate::data::vocabulary::check_ids;
use crate::error::{check_range, InvalidField};
use crate::store::Selector;

impl Predictor {
    /// Samples up to `max_tokens` tokens after the prompt, sent as they come.
    /// The stream ends early at a stop id, or when the receiver is dropped.
    pub async fn generate(
        &self,
        name: &str,
        selector: &Selector,
        params: GenerateParams,
    ) -> Result<mpsc::Receiver<Result<TokenProbability, PredictError>>, PredictError> {
        let model = self.model_by(name, selector).await?;
        let vocab = model.info.spec.vocab_size;
        check_range(
            "max_tokens",
            params.max_tokens,
            1,
            self.limits.max_generate_tokens,
        )?;
        check_range("top_k", params.top_k, 0, vocab)?;
        if !(params.temperature >= 0.0 && params.temperature.is_finite()) {
            return Err(InvalidField::new(
                "temperature",
                format!("must be >= 0 and finite, got {}", params.temperature),
            )
            .into());
        }
        check_ids("stop_ids", &params.stop_ids, vocab)?;
        let prompt = self.encode(&model, "prompt", params.prompt)?;
        let mut reading = Reading::new(
            model.info.context(),
            params.whole_input,
            model.inference.is_stateful(),
            self.limits.max_sequence_len,
        );
        let (tx, rx) = mpsc::channel(16);
        tokio::task::spawn_blocking(move || {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(params.seed);
            let inference = &model.inference;
            let mut run = || -> Result<(), EngineError> {
                // A window model re-reads the last `window` tokens before
                // each new one; a stateful one carries its state.
                let mut probs = reading.feed(inference.as_ref(), &prompt)?;
                for _ in 0..params.max_tokens {
                    let id = sample(&probs, params.temperature, params.top_k, &mut rng);
                    let token = Self::token(&model, id, probs[id as usize] as f64);
                    if tx.blocking_send(Ok(token)).is_err() || params.stop_ids.contains(&id) {
                        return Ok(());
                    }
                    probs = reading.feed(inference.as_ref(), &[id])?;
                }
                Ok(())
            };
            if let Err(e) = run() {
                let _ = tx.blocking_send(Err(PredictError::Engine(e)));
            }
        });
        Ok(rx)
    }
}
