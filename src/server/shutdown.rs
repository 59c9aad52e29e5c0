//! Graceful shutdown, on the first of the caller's signal and `stop()`:
//! report NOT_SERVING, stop the jobs (they keep their checkpoints; watch
//! streams end with a clear message), then let tonic drain in-flight calls.
//! The whole sequence is bounded by the grace period.
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::jobs::JobManager;

/// What the sequence touches as it runs.
pub(super) struct Sequence {
    pub grace: Duration,
    /// Set when shutdown begins, for the calls that wait on their clients.
    pub stopping: watch::Sender<bool>,
    /// OIP's ServerReady.
    pub ready: Arc<AtomicBool>,
    pub reporter: HealthReporter,
    pub jobs: JobManager,
}

/// What the serving task waits on: when to stop accepting and drain, and
/// when to give up on calls still open.
pub(super) struct Drain {
    deadline: watch::Receiver<Option<Instant>>,
    drained: watch::Receiver<bool>,
    grace: Duration,
}

/// Runs `sequence` once `trigger` resolves.
pub(super) fn spawn(
    trigger: impl Future<Output = ()> + Send + 'static,
    sequence: Sequence,
) -> Drain {
    let (deadline_tx, deadline) = watch::channel(None);
    let (drained_tx, drained) = watch::channel(false);
    let grace = sequence.grace;
    tokio::spawn(async move {
        trigger.await;
        let _ = deadline_tx.send(Some(Instant::now() + grace));
        let _ = sequence.stopping.send(true);
        sequence.ready.store(false, Ordering::Relaxed);
        sequence
            .reporter
            .set_service_status("", ServingStatus::NotServing)
            .await;
        tracing::info!("shutting down: refusing new jobs, checkpointing running ones");
        if tokio::time::timeout(grace, sequence.jobs.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("training workers still busy after the grace period");
        }
        let _ = drained_tx.send(true);
    });
    Drain {
        deadline,
        drained,
        grace,
    }
}

impl Drain {
    /// Resolves when the jobs have stopped: tonic then drains the calls.
    pub fn drained(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut drained = self.drained.clone();
        async move {
            let _ = drained.wait_for(|d| *d).await;
        }
    }

    /// Runs `serve` until it ends or the grace period since shutdown began
    /// is over: open streams can hold a graceful shutdown forever (tonic
    /// #1820).
    pub async fn bounded(
        mut self,
        serve: impl Future<Output = Result<(), tonic::transport::Error>>,
    ) -> anyhow::Result<()> {
        let past_deadline = async {
            let Ok(deadline) = self.deadline.wait_for(Option::is_some).await.map(|d| *d) else {
                return std::future::pending().await;
            };
            tokio::time::sleep_until(deadline.expect("waited for some")).await;
        };
        tokio::select! {
            r = serve => r.context("gRPC server failed"),
            _ = past_deadline => {
                tracing::warn!(grace_seconds = self.grace.as_secs(), "calls still open after the grace period; exiting");
                Ok(())
            }
        }
    }
}
