//! A job's event log: appended by the job manager, read by any number of
//! watchers, each at its own pace. A slow watcher only lags; it never slows
//! the job nor loses an event.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};

use super::record::JobEvent;

pub struct JobLog {
    events: Mutex<Vec<JobEvent>>,
    len: watch::Sender<usize>,
    /// Set when the server shuts down before the job ends.
    closed: AtomicBool,
}

/// What a watcher receives.
#[derive(Clone, Debug, PartialEq)]
pub enum WatchItem {
    Event(Box<JobEvent>),
    /// The server is shutting down; the job will resume on restart.
    ShuttingDown,
}

impl JobLog {
    pub fn new(events: Vec<JobEvent>) -> Arc<Self> {
        let n = events.len();
        Arc::new(Self {
            events: Mutex::new(events),
            len: watch::Sender::new(n),
            closed: AtomicBool::new(false),
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

    /// Ends every watch stream with `WatchItem::ShuttingDown`.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.len.send_modify(|_| {});
    }

    fn events_from(&self, start: usize) -> Vec<JobEvent> {
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        events.get(start..).map(<[_]>::to_vec).unwrap_or_default()
    }

    /// A stream of every event so far, then live ones, ending after the
    /// terminal event (or `ShuttingDown`). The forwarding task ends as soon
    /// as the receiver is dropped (the client went away).
    pub fn watch(self: &Arc<Self>, buffer: usize) -> mpsc::Receiver<WatchItem> {
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
                        sent = tx.send(WatchItem::Event(Box::new(event))) => if sent.is_err() { return },
                        _ = tx.closed() => return,
                    }
                    if terminal {
                        return;
                    }
                }
                if log.closed.load(Ordering::SeqCst) {
                    let _ = tx.send(WatchItem::ShuttingDown).await;
                    return;
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
