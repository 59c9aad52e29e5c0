//! Synchronous calls into async clients. The store traits are synchronous
//! (the trainer and the job actor run on plain threads), while the
//! PostgreSQL and S3 clients are async: each cluster backend owns a small
//! runtime of its own and waits for its futures there. That works from any
//! thread, a tokio worker's included, where `block_on` would panic.
use std::future::Future;
use std::time::Duration;

use super::StoreError;

pub(crate) struct Bridge {
    // An Option so that Drop can shut it down without blocking: dropping a
    // runtime inside another one's worker panics.
    runtime: Option<tokio::runtime::Runtime>,
    what: &'static str,
    timeout: Duration,
}

impl Bridge {
    /// `what` names the service in errors ("PostgreSQL", "object storage");
    /// a call that takes longer than `timeout` fails as unavailable.
    pub fn new(what: &'static str, timeout: Duration) -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("lstmd-{}", what.to_lowercase().replace(' ', "-")))
            .enable_all()
            .build()?;
        Ok(Self {
            runtime: Some(runtime),
            what,
            timeout,
        })
    }

    /// Runs `future` to completion on the bridge's runtime, bounded by the
    /// timeout.
    pub fn run<T, F>(&self, future: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let timeout = self.timeout;
        let what = self.what;
        self.handle().spawn(async move {
            let outcome = match tokio::time::timeout(timeout, future).await {
                Ok(outcome) => outcome,
                Err(_) => Err(StoreError::Unavailable(format!(
                    "{what} did not answer within {} s",
                    timeout.as_secs()
                ))),
            };
            let _ = tx.send(outcome);
        });
        rx.recv().unwrap_or_else(|_| {
            Err(StoreError::Unavailable(format!(
                "the {what} client stopped"
            )))
        })
    }

    /// For tasks that live as long as the backend (a held lock).
    pub fn handle(&self) -> &tokio::runtime::Handle {
        self.runtime.as_ref().expect("runtime until drop").handle()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
