//! Which context a model answers from, which follows from how it was
//! trained: a window model learned from windows of `window` tokens that
//! start from a zero state, so it reads at most the last `window` tokens; a
//! stateful model learned with its state carried across windows, so it
//! reads everything and carries its state for ever.
use serde::{Deserialize, Serialize};

/// Which positions of each training window the loss scored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossPositions {
    /// Only the prediction after the whole window (the seed's Keras
    /// models): the model learned inputs of exactly `window` tokens.
    Last,
    /// The prediction after every prefix of the window (char-rnn): the
    /// model learned inputs of 1..=`window` tokens.
    Every,
}

impl LossPositions {
    /// What a config written before the field existed trained with.
    pub fn before_the_field() -> Self {
        LossPositions::Last
    }

    pub fn name(self) -> &'static str {
        match self {
            LossPositions::Last => "last",
            LossPositions::Every => "every",
        }
    }
}

/// The context a model expects at inference (metadata.json's `context`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum InferenceContext {
    /// The last `window` tokens, from a zero state.
    Window {
        window: usize,
        positions: LossPositions,
    },
    /// The whole input from a zero state, the state carried from then on:
    /// one step per new token.
    Stateful { window: usize },
}

impl InferenceContext {
    /// The context of a model with `spec_window` trained by `training`
    /// (the resolved training config as JSON; a model without one, or
    /// from before these fields, is a last-position window model).
    pub fn of_training(spec_window: usize, training: &serde_json::Value) -> Self {
        if training.get("stateful").and_then(|v| v.as_bool()) == Some(true) {
            return InferenceContext::Stateful {
                window: spec_window,
            };
        }
        let positions = training
            .get("loss_positions")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_else(LossPositions::before_the_field);
        InferenceContext::Window {
            window: spec_window,
            positions,
        }
    }

    /// The most tokens a fresh answer reads (None: all of them).
    pub fn window(&self) -> Option<usize> {
        match self {
            InferenceContext::Window { window, .. } => Some(*window),
            InferenceContext::Stateful { .. } => None,
        }
    }

    pub fn is_stateful(&self) -> bool {
        matches!(self, InferenceContext::Stateful { .. })
    }

    /// The tokens of `ids` an answer reads: the last `window` for a window
    /// model unless `whole_input`; all of them otherwise.
    pub fn select<'a>(&self, ids: &'a [u32], whole_input: bool) -> &'a [u32] {
        match self.window() {
            Some(w) if !whole_input => &ids[ids.len().saturating_sub(w)..],
            _ => ids,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_follows_the_training_config() {
        let old = InferenceContext::of_training(4, &serde_json::Value::Null);
        assert_eq!(
            old,
            InferenceContext::Window {
                window: 4,
                positions: LossPositions::Last
            }
        );
        let every =
            InferenceContext::of_training(4, &serde_json::json!({"loss_positions": "every"}));
        assert_eq!(every.window(), Some(4));
        let stateful = InferenceContext::of_training(4, &serde_json::json!({"stateful": true}));
        assert!(stateful.is_stateful());
        let ids = [1, 2, 3, 4, 5, 6];
        assert_eq!(every.select(&ids, false), &[3, 4, 5, 6]);
        assert_eq!(every.select(&ids[..2], false), &[1, 2]);
        assert_eq!(every.select(&ids, true), &ids);
        assert_eq!(stateful.select(&ids, false), &ids);
    }
}
