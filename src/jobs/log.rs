//! A job's event log: appended by the job manager, read by any number of
//! watchers, each at its own pace. A slow watcher only lags; it never slows
//! the job nor loses an event.
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};

use super::record::JobEvent;

pub struct JobLog {
    events: Mutex<Vec<JobEvent>>,
    len: watch::Sender<usize>,
}

impl JobLog {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            events: Mutex::new(Vec::new()),
            len: watch::Sender::new(0),
        })
    }

    pub fn push(&self, event: JobEvent) {
        let len = {
            let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
            events.push(event);
            events.len()
        };
        self.len.send_replace(len);
    }

    pub fn next_seq(&self) -> u64 {
        self.events.lock().unwrap_or_else(|e| e.into_inner()).len() as u64 + 1
    }

    fn events_from(&self, start: usize) -> Vec<JobEvent> {
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        events.get(start..).map(<[_]>::to_vec).unwrap_or_default()
    }

    /// A stream of every event so far, then live ones, ending after the
    /// terminal event. The forwarding task ends as soon as the receiver is
    /// dropped (the client went away).
    pub fn watch(self: &Arc<Self>, buffer: usize) -> mpsc::Receiver<JobEvent> {
        let (tx, rx) = mpsc::channel(buffer);
        let log = Arc::clone(self);
        let mut len = self.len.subscribe();
        tokio::spawn(async move {
            let mut cursor = 0;
            loop {
                for event in log.events_from(cursor) {
                    cursor += 1;
                    let terminal = event.is_terminal();
                    tokio::select! {
                        sent = tx.send(event) => if sent.is_err() { return },
                        _ = tx.closed() => return,
                    }
                    if terminal {
                        return;
                    }
                }
                tokio::select! {
                    changed = len.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        });
        rx
    }
}
