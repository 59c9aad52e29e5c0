//! What a session or a generation keeps between tokens, so that each answer
//! comes from the context the model was trained on: the last `window`
//! tokens for a window model (re-read from a zero state, as every training
//! window started), the carried recurrent state for a stateful model (or
//! when a client asks for the whole input).
use crate::backend::{Backend, Carried, EngineError};
use crate::nn::InferenceContext;

pub enum Reading {
    /// The recurrent state after every token so far (None before the first).
    Carried(Option<Carried>),
    /// The last `window` tokens so far.
    Window { window: usize, recent: Vec<u32> },
}

impl Reading {
    /// How to read a model trained for `context`. `whole_input` carries the
    /// state over everything instead; a bidirectional model cannot carry
    /// state, so it re-reads up to `longest` tokens then.
    pub fn new(
        context: InferenceContext,
        whole_input: bool,
        stateful: bool,
        longest: usize,
    ) -> Self {
        match context.window() {
            Some(window) if !whole_input => Reading::Window {
                window,
                recent: Vec::with_capacity(window + 1),
            },
            _ if stateful => Reading::Carried(None),
            _ => Reading::Window {
                window: longest,
                recent: Vec::new(),
            },
        }
    }

    /// Appends `ids` (1 or more); the next-token probabilities after them.
    /// A carried state costs one step per new token; a window costs up to
    /// `window` steps per call. On an error the reading is as it was.
    pub fn feed(&mut self, inference: &dyn Backend, ids: &[u32]) -> Result<Vec<f32>, EngineError> {
        match self {
            Reading::Carried(state) => {
                let (probs, next) = inference.step(ids, state.as_ref())?;
                *state = Some(next);
                Ok(probs)
            }
            Reading::Window { window, recent } => {
                let mut next = Vec::with_capacity(*window);
                let keep = window.saturating_sub(ids.len()).min(recent.len());
                next.extend_from_slice(&recent[recent.len() - keep..]);
                next.extend_from_slice(&ids[ids.len().saturating_sub(*window)..]);
                let probs = inference
                    .probabilities(std::slice::from_ref(&next))?
                    .remove(0);
                *recent = next;
                Ok(probs)
            }
        }
    }
}
