//! The domain layer opened on the data dir: store, registry, datasets, the
//! job manager and the predictor, each handed to the services that need it.
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::Context;

use crate::config::ServeArgs;
use crate::data::Datasets;
use crate::jobs::{JobManager, JobsConfig};
use crate::predict::portable::SessionKey;
use crate::predict::Predictor;
use crate::store::{backends, ModelRegistry, OpenStore};

pub(super) struct Domain {
    pub registry: Arc<ModelRegistry>,
    pub datasets: Arc<Datasets>,
    pub jobs: JobManager,
    pub predictor: Arc<Predictor>,
    /// Gone once every part has let go of the data dir.
    pub data_dir_open: Weak<()>,
}

impl Domain {
    pub fn open(args: &ServeArgs, device: candle_core::Device) -> anyhow::Result<Self> {
        let OpenStore {
            store,
            closed: data_dir_open,
        } = backends::open(&args.stores.urls(&args.data_dir)).with_context(|| {
            match &args.stores.records {
                None => format!("cannot open data dir {}", args.data_dir.display()),
                Some(_) => "cannot open the cluster stores (--records, --blobs)".to_string(),
            }
        })?;
        let registry = Arc::new(ModelRegistry::new(Arc::clone(&store)));
        // Versions and labels in memory before the first request needs them.
        registry
            .load_catalog()
            .context("cannot read the model registry")?;
        let datasets = Arc::new(Datasets::new(Arc::clone(&store), args.limits.data()));
        // The data dir holds exactly what the records name: files a crash left
        // without their record go before anything writes.
        registry.remove_orphans()?;
        datasets.remove_orphans()?;
        let jobs = JobManager::start(
            JobsConfig {
                workers: args.workers(),
                max_queued: args.max_queued_jobs,
                device: device.clone(),
            },
            store,
            Arc::clone(&datasets),
            Arc::clone(&registry),
        )?;
        let predictor = Predictor::new(
            Arc::clone(&registry),
            device,
            args.limits.predict(),
            session_key(args)?,
        );
        sweep_sessions_every_second(&predictor);
        Ok(Domain {
            registry,
            datasets,
            jobs,
            predictor,
            data_dir_open,
        })
    }
}

/// The key of `--session-key-file` (surrounding whitespace ignored), or a
/// random one of this process.
fn session_key(args: &ServeArgs) -> anyhow::Result<SessionKey> {
    let Some(path) = &args.session_key_file else {
        return Ok(SessionKey::random());
    };
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read --session-key-file {}", path.display()))?;
    let key = String::from_utf8_lossy(&bytes).trim().as_bytes().to_vec();
    SessionKey::new(key).map_err(|e| anyhow::anyhow!("--session-key-file {}: {e}", path.display()))
}

/// Idle sessions go even when nobody touches them; the task ends with the
/// predictor.
fn sweep_sessions_every_second(predictor: &Arc<Predictor>) {
    let sweeper = Arc::downgrade(predictor);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            match sweeper.upgrade() {
                Some(p) => p.sweep_sessions(),
                None => return,
            }
        }
    });
}
