//! Sessions: the server keeps what each session's next answer reads (the
//! recurrent state, h and c per layer, of a stateful model, so a call costs
//! only its new tokens; the last `window` tokens of a window model). Each
//! session has its own lock; ids are random, so no client reaches another's
//! state.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::context::Reading;
use super::LoadedModel;

pub struct Session {
    pub model: Arc<LoadedModel>,
    pub reading: Reading,
    pub tokens_seen: u64,
    last_used: Instant,
}

/// A session and the model it runs on (readable without the session's lock,
/// so deleting a model ends even a session that is busy right now).
type Entry = (ModelKey, Arc<tokio::sync::Mutex<Session>>);
type ModelKey = (String, u32);

pub struct Sessions {
    map: Mutex<HashMap<String, Entry>>,
    pub max: usize,
    pub idle_timeout: Duration,
}

impl Sessions {
    pub fn new(max: usize, idle_timeout: Duration) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            max,
            idle_timeout,
        }
    }

    /// Drops sessions idle past the timeout.
    pub fn sweep(&self) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, (_, s)| match s.try_lock() {
            Ok(s) => s.last_used.elapsed() < self.idle_timeout,
            Err(_) => true, // in use right now
        });
        metrics::gauge!("lstmd_sessions_open").set(map.len() as f64);
    }

    /// A new session on `model`, or None when the maximum is reached.
    pub fn open(&self, model: Arc<LoadedModel>, reading: Reading) -> Option<String> {
        self.sweep();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= self.max {
            return None;
        }
        let id = new_session_id();
        let key = (model.name.clone(), model.version);
        map.insert(
            id.clone(),
            (
                key,
                Arc::new(tokio::sync::Mutex::new(Session {
                    model,
                    reading,
                    tokens_seen: 0,
                    last_used: Instant::now(),
                })),
            ),
        );
        metrics::gauge!("lstmd_sessions_open").set(map.len() as f64);
        Some(id)
    }

    /// The session, locked for one call; None when unknown, closed or
    /// expired (an expired one is removed).
    pub async fn lock(&self, id: &str) -> Option<tokio::sync::OwnedMutexGuard<Session>> {
        let session = self
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .map(|(_, s)| Arc::clone(s))?;
        let guard = session.lock_owned().await;
        // Closed while this call waited for the lock (its model was deleted).
        let open = self
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(id);
        if !open {
            return None;
        }
        if guard.last_used.elapsed() >= self.idle_timeout {
            self.map
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(id);
            return None;
        }
        Some(guard)
    }

    pub fn touch(session: &mut Session) {
        session.last_used = Instant::now();
    }

    pub fn close(&self, id: &str) -> bool {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)
            .is_some()
    }

    /// Ends every session on a deleted model (every version when `version`
    /// is None): their next call is NOT_FOUND.
    pub fn close_model(&self, name: &str, version: Option<u32>) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, ((n, v), _)| !(n == name && version.is_none_or(|d| d == *v)));
        metrics::gauge!("lstmd_sessions_open").set(map.len() as f64);
    }

    pub fn open_count(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// A new session's id.
pub fn new_session_id() -> String {
    format!("sess-{}", uuid::Uuid::new_v4().simple())
}
