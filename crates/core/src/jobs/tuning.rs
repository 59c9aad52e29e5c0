//! A tuning job's coordinator: a thread that runs the planned trials as
//! child training jobs through the job manager (so they share the worker
//! pool and its FIFO queue), at most `parallel_trials` at once, scores them,
//! stops weak ones early (hyperband), and registers the best trial's model.
//! All its state is in the tuning job's record, so a restart continues the
//! search where it was.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::Duration;

use super::checkpoints::checkpoint_folder;
use super::log::WatchItem;
use super::record::{
    EventKind, Finished, JobEvent, JobRecord, JobState, ModelRef, TrainingRequest, TrialRecord,
    TuningState,
};
use super::JobManager;
use crate::nn::metadata::ModelInfo;
use crate::nn::SpecLimits;
use crate::store::{now_millis, ModelRegistry, Store};
use crate::tune::{rungs, Objective, Rung, Strategy};

pub(super) struct Coordinator {
    pub id: String,
    pub base: TrainingRequest,
    pub tuning: TuningState,
    pub jobs: JobManager,
    pub runtime: tokio::runtime::Handle,
    pub registry: Arc<ModelRegistry>,
    pub store: Arc<dyn Store>,
    pub cancel: Arc<AtomicBool>,
    pub shutdown: Arc<AtomicBool>,
    pub workers: usize,
}

fn trial_model(base: &str, number: u32) -> String {
    format!("{base}.trial-{number}")
}

/// Trials with a score, best first (ties: lower number first).
pub fn leaderboard(trials: &[TrialRecord], objective: Objective) -> Vec<TrialRecord> {
    let mut scored: Vec<TrialRecord> = trials
        .iter()
        .filter(|t| t.score.is_some())
        .cloned()
        .collect();
    scored.sort_by(|a, b| {
        let (x, y) = (a.score.unwrap_or(f64::NAN), b.score.unwrap_or(f64::NAN));
        if objective.better(x, y) {
            std::cmp::Ordering::Less
        } else if objective.better(y, x) {
            std::cmp::Ordering::Greater
        } else {
            a.number.cmp(&b.number)
        }
    });
    scored
}

enum Ending {
    Done,
    Cancelled,
    Interrupted,
}

impl Coordinator {
    fn send(&self, kind: EventKind) {
        self.jobs.send_event(&self.id, kind);
    }

    fn report(&self, what: &str, trial: usize) {
        let t = &self.tuning.trials[trial];
        self.send(EventKind::Trial {
            what: what.to_string(),
            trial: t.clone(),
            leaderboard: leaderboard(&self.tuning.trials, self.tuning.request.objective),
        });
    }

    pub fn run(mut self) {
        let request = &self.tuning.request;
        let plan = match request.strategy {
            Strategy::Hyperband => rungs(
                self.tuning.trials.len(),
                request.max_epochs,
                request.reduction_factor,
            ),
            _ => vec![Rung {
                trials: self.tuning.trials.len(),
                epochs: self.base.config.epochs,
            }],
        };
        let ending = self.search(&plan);
        let finished = match ending {
            Ending::Interrupted => return,
            Ending::Cancelled => Finished {
                state: JobState::Cancelled,
                reason: "cancelled; running trials were cancelled".into(),
                model: None,
                best_epoch: None,
                weights_epoch: None,
                stopped_early: false,
            },
            Ending::Done => self.conclude(),
        };
        self.cleanup();
        self.send(EventKind::Finished(finished));
    }

    /// Runs every rung; the trials of a rung after the first are the best
    /// of those that completed the previous one.
    fn search(&mut self, plan: &[Rung]) -> Ending {
        let objective = self.tuning.request.objective;
        let mut eligible: Vec<usize> = (0..self.tuning.trials.len()).collect();
        for (r, rung) in plan.iter().enumerate() {
            if r > 0 {
                let board = leaderboard(&self.tuning.trials, objective);
                let keep: Vec<usize> = board
                    .iter()
                    .map(|t| t.number as usize - 1)
                    .filter(|i| eligible.contains(i))
                    .take(rung.trials)
                    .collect();
                for &i in &eligible {
                    let t = &mut self.tuning.trials[i];
                    if !keep.contains(&i) && !t.stopped_early && t.state == JobState::Succeeded {
                        t.stopped_early = true;
                        self.report("stopped early", i);
                    }
                }
                eligible = keep;
            }
            match self.run_rung(&eligible, rung.epochs) {
                Ending::Done => {}
                other => return other,
            }
        }
        Ending::Done
    }

    /// Trains `trials` to `epochs`, `parallel_trials` at a time.
    fn run_rung(&mut self, trials: &[usize], epochs: u32) -> Ending {
        let parallel = self.tuning.request.parallel_trials.min(self.workers).max(1);
        let (tx, rx) = std_mpsc::channel::<(usize, WatchItem)>();
        let (mut pending, mut in_flight) = self.rung_work(trials, epochs, &tx);
        loop {
            while in_flight.len() < parallel {
                let Some(i) = pending.pop() else { break };
                match self.start_trial(i, epochs) {
                    Some(job) => {
                        self.watch(i, job.clone(), &tx);
                        in_flight.insert(i, job);
                    }
                    None => return Ending::Interrupted,
                }
            }
            if in_flight.is_empty() {
                return Ending::Done;
            }
            if self.cancel.load(Ordering::SeqCst) {
                self.cancel_rung(&mut in_flight, &rx);
                return Ending::Cancelled;
            }
            if self.shutdown.load(Ordering::SeqCst) {
                return Ending::Interrupted;
            }
            let Ok((i, item)) = rx.recv_timeout(Duration::from_millis(200)) else {
                continue;
            };
            match item {
                WatchItem::ShuttingDown => return Ending::Interrupted,
                WatchItem::Event(event) => self.trial_event(i, *event, epochs, &mut in_flight),
            }
        }
    }

    /// A rung's trials still to train (in start order, last first) and
    /// those already in flight: a trial whose job outlived a restart is
    /// watched, not rerun.
    fn rung_work(
        &mut self,
        trials: &[usize],
        epochs: u32,
        tx: &std_mpsc::Sender<(usize, WatchItem)>,
    ) -> (Vec<usize>, HashMap<usize, String>) {
        let mut pending: Vec<usize> = Vec::new();
        let mut in_flight: HashMap<usize, String> = HashMap::new();
        for &i in trials {
            let t = &self.tuning.trials[i];
            let done =
                t.epochs >= epochs || matches!(t.state, JobState::Failed | JobState::Cancelled);
            if done {
                continue;
            }
            if let Some(last) = t.job_ids.last() {
                if let Ok(job) = self.runtime.block_on(self.jobs.get(last)) {
                    if !job.state.is_terminal() && job.request.config.epochs == epochs {
                        self.watch(i, last.clone(), tx);
                        in_flight.insert(i, last.clone());
                        continue;
                    }
                }
            }
            pending.push(i);
        }
        pending.reverse();
        (pending, in_flight)
    }

    /// Cancels the trials in flight and waits for them: running trials
    /// stop within a batch.
    fn cancel_rung(
        &mut self,
        in_flight: &mut HashMap<usize, String>,
        rx: &std_mpsc::Receiver<(usize, WatchItem)>,
    ) {
        for job in in_flight.values() {
            let _ = self.runtime.block_on(self.jobs.cancel(job));
        }
        while !in_flight.is_empty() {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok((i, WatchItem::Event(e))) if e.is_terminal() => {
                    in_flight.remove(&i);
                    if let EventKind::Finished(f) = e.kind {
                        self.tuning.trials[i].state = f.state;
                        self.report("ended", i);
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }

    /// What a trial's job event changes in the search.
    fn trial_event(
        &mut self,
        i: usize,
        event: JobEvent,
        epochs: u32,
        in_flight: &mut HashMap<usize, String>,
    ) {
        match event.kind {
            EventKind::Epoch { metrics, .. } => {
                let t = &mut self.tuning.trials[i];
                t.history.retain(|m| m.epoch != metrics.epoch);
                t.history.push(metrics);
                t.history.sort_by_key(|m| m.epoch);
                t.epochs = t.history.len() as u32;
                t.score = self.tuning.request.objective.score(&t.history);
                self.report("reported", i);
            }
            EventKind::Finished(f) => {
                in_flight.remove(&i);
                let t = &mut self.tuning.trials[i];
                t.state = f.state;
                if f.state == JobState::Succeeded && f.stopped_early {
                    // The base config's early stopping ended it.
                    t.epochs = t.epochs.max(epochs);
                }
                self.report("ended", i);
            }
            _ => {}
        }
    }

    fn start_trial(&mut self, i: usize, epochs: u32) -> Option<String> {
        let t = &self.tuning.trials[i];
        let (spec, mut config) = t
            .hyperparameters
            .apply(
                &self.base.spec,
                &self.base.config,
                &SpecLimits::default(),
                usize::MAX,
            )
            .expect("planned trials were validated at submission");
        config.epochs = epochs;
        let request = TrainingRequest {
            parent: Some(self.id.clone()),
            resume_from: (t.epochs > 0).then(|| t.job_ids.last().cloned()).flatten(),
            keep_checkpoint: true,
            model_name: trial_model(&self.base.model_name, t.number),
            dataset_id: self.base.dataset_id.clone(),
            validation_dataset_id: self.base.validation_dataset_id.clone(),
            spec,
            config,
        };
        let job = match self.runtime.block_on(self.jobs.submit(request)) {
            Ok(job) => job,
            Err(e) => {
                tracing::warn!(tuning = %self.id, error = %e, "cannot start a trial");
                return None;
            }
        };
        let t = &mut self.tuning.trials[i];
        t.job_ids.push(job.id.clone());
        t.state = JobState::Running;
        self.report("started", i);
        Some(job.id)
    }

    fn watch(&self, trial: usize, job: String, tx: &std_mpsc::Sender<(usize, WatchItem)>) {
        let jobs = self.jobs.clone();
        let tx = tx.clone();
        self.runtime.spawn(async move {
            let Ok(mut rx) = jobs.watch(&job).await else {
                return;
            };
            while let Some(item) = rx.recv().await {
                if tx.send((trial, item)).is_err() {
                    return;
                }
            }
        });
    }

    /// Registers the best trial's weights as the tuning job's model.
    fn conclude(&mut self) -> Finished {
        let request = &self.tuning.request;
        let failed = |reason: String| Finished {
            state: JobState::Failed,
            reason,
            model: None,
            best_epoch: None,
            weights_epoch: None,
            stopped_early: false,
        };
        let board = leaderboard(&self.tuning.trials, request.objective);
        let Some(best) = board.first() else {
            return failed("no trial produced a score".into());
        };
        let name = trial_model(&self.base.model_name, best.number);
        let copied = (|| -> Result<ModelRef, String> {
            let meta = self
                .registry
                .get(&name, None)
                .map_err(|e| e.to_string())?
                .ok_or("the best trial's model is gone")?;
            let weights = self
                .registry
                .weights(&meta.name, meta.version)
                .map_err(|e| e.to_string())?
                .ok_or("the best trial's weights are gone")?;
            let mut info = ModelInfo::from_map(&meta.rest)?;
            info.created_at_ms = now_millis();
            info.job_id = self.id.clone();
            info.tuning = Some(serde_json::json!({
                "job_id": self.id,
                "strategy": request.strategy,
                "objective": request.objective.name(),
                "trial": best.number,
                "score": best.score,
                "hyperparameters": best.hyperparameters,
                "trials": self.tuning.trials.len(),
            }));
            let registered = self
                .registry
                .register(&self.base.model_name, info.to_map(), &weights)
                .map_err(|e| e.to_string())?;
            Ok(ModelRef {
                name: registered.name,
                version: registered.version,
            })
        })();
        match copied {
            Ok(model) => {
                let epochs: u32 = self.tuning.trials.iter().map(|t| t.epochs).sum();
                let params: Vec<String> = best
                    .hyperparameters
                    .pairs()
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                Finished {
                    state: JobState::Succeeded,
                    reason: format!(
                        "best trial {} ({}): {} {:.6} after {} epochs; {} trials, {epochs} epochs trained in all",
                        best.number,
                        params.join(", "),
                        request.objective.name(),
                        best.score.unwrap_or(f64::NAN),
                        best.epochs,
                        self.tuning.trials.len()
                    ),
                    model: Some(model),
                    best_epoch: None,
                    weights_epoch: None,
                    stopped_early: false,
                }
            }
            Err(e) => failed(format!("registering the best trial's model failed: {e}")),
        }
    }

    /// Trial checkpoints always go; trial models unless asked to keep them.
    fn cleanup(&self) {
        for t in &self.tuning.trials {
            for job in &t.job_ids {
                let _ = self.store.delete_blobs(&checkpoint_folder(job));
            }
            if !self.tuning.request.keep_trial_models {
                let _ = self
                    .registry
                    .delete(&trial_model(&self.base.model_name, t.number), None);
            }
        }
    }
}

/// The trials of a new tuning job: planned, none run.
pub fn fresh_trials(record: &JobRecord) -> Vec<TrialRecord> {
    let plan = record
        .tuning
        .as_ref()
        .map(|t| t.request.plan.clone())
        .unwrap_or_default();
    plan.into_iter()
        .enumerate()
        .map(|(i, h)| TrialRecord {
            number: i as u32 + 1,
            hyperparameters: h,
            state: JobState::Queued,
            job_ids: Vec::new(),
            history: Vec::new(),
            score: None,
            epochs: 0,
            stopped_early: false,
        })
        .collect()
}
