//! Stateful sessions: the server keeps each session's recurrent state (h,
//! and c for LSTMs, per layer), so a call costs only its new tokens. Each
//! session has its own lock; ids are random, so no client reaches another's
//! state.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::infer::Carried;
use super::LoadedModel;

pub struct Session {
    pub model: Arc<LoadedModel>,
    /// None before the first token.
    pub states: Option<Carried>,
    pub tokens_seen: u64,
    last_used: Instant,
}

pub struct Sessions {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Session>>>>,
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
        map.retain(|_, s| match s.try_lock() {
            Ok(s) => s.last_used.elapsed() < self.idle_timeout,
            Err(_) => true, // in use right now
        });
        metrics::gauge!("lstmd_sessions_open").set(map.len() as f64);
    }

    /// A new session on `model`, or None when the maximum is reached.
    pub fn open(&self, model: Arc<LoadedModel>) -> Option<String> {
        self.sweep();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= self.max {
            return None;
        }
        let id = format!("sess-{}", uuid::Uuid::new_v4().simple());
        map.insert(
            id.clone(),
            Arc::new(tokio::sync::Mutex::new(Session {
                model,
                states: None,
                tokens_seen: 0,
                last_used: Instant::now(),
            })),
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
            .cloned()?;
        let guard = session.lock_owned().await;
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

    pub fn open_count(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}
