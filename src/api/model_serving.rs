//! ModelService's serving controls: version labels (SetModelLabel), a
//! model's batching (SetModelBatching), and the serving view GetModel adds
//! to a model (its labels, batching and statistics).
use std::sync::Arc;
use std::time::Duration;

use tonic::Status;

use super::blocking::blocking;
use super::status::{IntoStatus, OrStatus};
use crate::error::{check_name, InvalidField};
use crate::predict::Predictor;
use crate::proto as pb;
use crate::store::{ModelRegistry, ModelSettings, Selector};

/// Largest per-model batch and delay a client may set.
pub const MAX_BATCH: u32 = 4096;
pub const MAX_DELAY_US: u64 = 1_000_000;

/// A label is a name that cannot be mistaken for a version number.
fn check_label(label: &str) -> Result<(), Status> {
    check_name("label", label).or_status()?;
    if label.bytes().all(|b| b.is_ascii_digit()) {
        return Err(InvalidField::new(
            "label",
            format!("must not be all digits (it would read as a version), got {label:?}"),
        )
        .into_status());
    }
    Ok(())
}

fn no_model(name: &str) -> Status {
    Status::not_found(format!("name {name:?} names no model"))
}

pub async fn set_label(
    registry: &Arc<ModelRegistry>,
    predictor: &Arc<Predictor>,
    r: pb::SetModelLabelRequest,
) -> Result<pb::SetModelLabelResponse, Status> {
    check_name("name", &r.name).map_err(|_| no_model(&r.name))?;
    check_label(&r.label)?;
    let target = (r.version != 0).then_some(r.version);
    if let Some(v) = target {
        // Warm first: traffic by label never meets a cold model.
        predictor
            .model_by(&r.name, &Selector::Version(v))
            .await
            .map_err(IntoStatus::into_status)?;
    } else if registry
        .resolve(&r.name, &Selector::Latest)
        .or_status()?
        .is_none()
    {
        return Err(no_model(&r.name));
    }
    let (reg, name, label) = (Arc::clone(registry), r.name.clone(), r.label.clone());
    let moved = blocking(move || reg.set_label(&name, &label, target)).await?;
    let previous = moved.map_err(|missing| {
        Status::not_found(format!(
            "name {:?} version {} names no model",
            r.name, missing.0
        ))
    })?;
    tracing::info!(model = %r.name, label = %r.label, version = r.version, ?previous, "label set");
    Ok(pb::SetModelLabelResponse {
        previous_version: previous.unwrap_or(0),
        labels: registry.labels(&r.name).or_status()?.into_iter().collect(),
    })
}

pub async fn set_batching(
    registry: &Arc<ModelRegistry>,
    predictor: &Arc<Predictor>,
    r: pb::SetModelBatchingRequest,
) -> Result<pb::BatchingSettings, Status> {
    check_name("name", &r.name).map_err(|_| no_model(&r.name))?;
    if let Some(b) = r.max_batch.filter(|b| !(1..=MAX_BATCH).contains(b)) {
        return Err(
            InvalidField::new("max_batch", format!("must be 1..={MAX_BATCH}, got {b}"))
                .into_status(),
        );
    }
    if let Some(d) = r.max_delay_us.filter(|d| *d > MAX_DELAY_US) {
        return Err(InvalidField::new(
            "max_delay_us",
            format!("must be 0..={MAX_DELAY_US}, got {d}"),
        )
        .into_status());
    }
    if registry
        .resolve(&r.name, &Selector::Latest)
        .or_status()?
        .is_none()
    {
        return Err(no_model(&r.name));
    }
    let settings = ModelSettings {
        max_batch: r.max_batch,
        max_delay_us: r.max_delay_us,
    };
    let (reg, name) = (Arc::clone(registry), r.name.clone());
    blocking(move || reg.set_settings(&name, settings)).await?;
    predictor.apply_settings(&r.name, settings);
    Ok(batching_to_proto(predictor, settings))
}

fn batching_to_proto(predictor: &Predictor, settings: ModelSettings) -> pb::BatchingSettings {
    let (max_batch, max_delay) = predictor.batching_of(settings);
    pb::BatchingSettings {
        max_batch: max_batch as u32,
        max_delay_us: max_delay.as_micros() as u64,
        max_batch_set: settings.max_batch.is_some(),
        max_delay_set: settings.max_delay_us.is_some(),
    }
}

/// Adds the serving view of `model` (a version GetModel found).
pub fn add_serving_view(
    registry: &ModelRegistry,
    predictor: &Predictor,
    model: &mut pb::Model,
) -> Result<(), Status> {
    model.labels = registry
        .labels(&model.name)
        .or_status()?
        .into_iter()
        .filter(|(_, v)| *v == model.version)
        .map(|(l, _)| l)
        .collect();
    model.batching = Some(batching_to_proto(
        predictor,
        registry.settings(&model.name).or_status()?,
    ));
    let s = predictor.statistics(&model.name, model.version);
    model.statistics = Some(pb::ModelStatistics {
        requests: s.requests,
        errors: s.errors,
        sequences: s.sequences,
        mean_latency_us: Duration::as_micros(&s.mean_latency) as u64,
        forward_passes: s.forward_passes,
        batch_sizes: s
            .batch_sizes
            .into_iter()
            .map(|(b, c)| (b as u32, c))
            .collect(),
        ready: predictor.is_ready(&model.name, model.version),
    });
    Ok(())
}
