//! Follows a job's event stream: a live bar per epoch with the running
//! loss and accuracy, a line per finished epoch, a leaderboard for tuning
//! jobs; Ctrl-C asks whether to cancel the job or detach from it.
use std::io::{BufRead, IsTerminal, Write};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::client::Client;
use super::leaderboard::{self, Leaderboard};
use super::output::{self, Format};
use super::Failure;
use crate::proto as pb;
use crate::proto::job_event::Kind;

/// What Ctrl-C does while a job is followed.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnInterrupt {
    /// Ask on the terminal; detach when stdin is not one.
    #[default]
    Ask,
    /// Cancel the job and wait for it to end.
    Cancel,
    /// Stop following; the job keeps running.
    Detach,
}

/// How following ended.
pub enum Followed {
    Finished(pb::Finished),
    Detached,
}

pub async fn follow(
    client: &mut Client,
    job_id: &str,
    format: Format,
    on_interrupt: OnInterrupt,
) -> Result<Followed, Failure> {
    let mut stream = client
        .jobs
        .watch_job(pb::WatchJobRequest { id: job_id.into() })
        .await?
        .into_inner();
    let mut view = View::new(format);
    let mut cancelled = false;
    // One listener for the whole stream, so a Ctrl-C that arrives while an
    // event is being drawn is not lost.
    let mut interrupts = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| Failure::local(format!("cannot listen for Ctrl-C: {e}")))?;
    loop {
        let event = tokio::select! {
            message = stream.message() => message?,
            _ = interrupts.recv(), if !cancelled => {
                let choice = match on_interrupt {
                    OnInterrupt::Ask => view.bar.suspend(ask),
                    other => other,
                };
                match choice {
                    OnInterrupt::Cancel => {
                        view.notice(&format!("cancelling job {job_id}..."));
                        client.jobs.cancel_job(pb::CancelJobRequest { id: job_id.into() }).await?;
                        cancelled = true;
                        continue;
                    }
                    OnInterrupt::Detach => {
                        view.bar.finish_and_clear();
                        view.notice(&format!(
                            "detached; job {job_id} keeps running (follow it with `lstmd jobs watch {job_id}`)"
                        ));
                        return Ok(Followed::Detached);
                    }
                    // Keep watching.
                    OnInterrupt::Ask => continue,
                }
            }
        };
        let Some(event) = event else {
            return Err(Failure::unreachable(
                "the server closed the event stream before the job ended",
            ));
        };
        if let Some(finished) = view.show(event)? {
            return Ok(Followed::Finished(finished));
        }
    }
}

/// Asks on the terminal what Ctrl-C should do.
fn ask() -> OnInterrupt {
    if !std::io::stdin().is_terminal() {
        return OnInterrupt::Detach;
    }
    // The job keeps training while the question waits: say so, and that
    // the answer needs Enter.
    eprint!(
        "\nThe job keeps running while you choose. Cancel it (c), detach and leave it \
         running (d), or keep watching (w)? Type a letter and press Enter [c/d/w]: "
    );
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    match line.trim().to_ascii_lowercase().as_str() {
        "c" | "cancel" => OnInterrupt::Cancel,
        "w" | "watch" => OnInterrupt::Ask,
        _ => OnInterrupt::Detach,
    }
}

/// Renders events as they come.
struct View {
    format: Format,
    bar: ProgressBar,
    leaderboard: Leaderboard,
    /// The last epoch's `elapsed_seconds` (cumulative), to print each
    /// epoch's own time.
    last_elapsed: f64,
}

impl View {
    fn new(format: Format) -> Self {
        // Drawn from the first batch on (see `show`).
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
        bar.set_style(
            ProgressStyle::with_template("{prefix} {bar:30.cyan/blue} {pos:>6}/{len:6} {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        View {
            format,
            bar,
            leaderboard: Leaderboard::default(),
            last_elapsed: 0.0,
        }
    }

    /// A line for people, above the bar.
    fn note(&self, line: &str) {
        if self.format == Format::Text {
            self.bar.suspend(|| println!("{line}"));
        }
    }

    /// A message about the client itself, on stderr in every format.
    fn notice(&self, line: &str) {
        self.bar.suspend(|| eprintln!("{line}"));
    }

    /// Shows one event; returns the Finished event that ends the stream.
    fn show(&mut self, event: pb::JobEvent) -> Result<Option<pb::Finished>, Failure> {
        if self.format == Format::Json {
            output::print_json(&event)?;
            return Ok(match event.kind {
                Some(Kind::Finished(f)) => Some(f),
                _ => None,
            });
        }
        match event.kind {
            Some(Kind::State(s)) => {
                self.note(&state_line(&event.job_id, &s));
            }
            Some(Kind::Batch(b)) => {
                // Bars only on a terminal and only for people.
                if self.bar.is_hidden() && self.format == Format::Text && output::is_terminal() {
                    self.bar.set_draw_target(ProgressDrawTarget::stderr());
                }
                self.bar
                    .set_prefix(format!("Epoch {}/{}", b.epoch, b.epochs));
                self.bar.set_length(u64::from(b.batches));
                self.bar.set_position(u64::from(b.batch));
                self.bar.set_message(format!(
                    "loss {:.4} - accuracy {:.4} - {:.0} samples/s - ETA {}",
                    b.loss,
                    b.accuracy,
                    b.samples_per_second,
                    output::seconds(b.eta_seconds)
                ));
            }
            Some(Kind::Epoch(e)) => {
                if let Some(m) = &e.metrics {
                    // The bar ends full, under the epoch's line, then starts
                    // over for the next epoch.
                    if let Some(len) = self.bar.length() {
                        self.bar.set_position(len);
                    }
                    let mut line = output::epoch_line(m, e.epochs, self.last_elapsed);
                    self.last_elapsed = m.elapsed_seconds;
                    if e.eta_seconds > 0.0 {
                        line.push_str(&format!(" - ETA {}", output::seconds(e.eta_seconds)));
                    }
                    self.note(&line);
                    if m.epoch < e.epochs {
                        self.bar.set_position(0);
                        self.bar
                            .set_prefix(format!("Epoch {}/{}", m.epoch + 1, e.epochs));
                        self.bar.set_message("");
                    }
                }
            }
            Some(Kind::Trial(t)) => {
                let live = leaderboard::live(self.format);
                self.bar.suspend(|| self.leaderboard.on_event(t, live));
            }
            Some(Kind::Finished(f)) => {
                self.bar.finish_and_clear();
                self.leaderboard.finish(leaderboard::live(self.format));
                self.note(&finished_line(&event.job_id, &f));
                return Ok(Some(f));
            }
            None => {}
        }
        Ok(None)
    }
}

/// `job ID: queued (0 jobs ahead)`: the message without the state it
/// repeats.
fn state_line(job_id: &str, s: &pb::StateChanged) -> String {
    let state = output::job_state(s.state);
    let mut line = format!("job {job_id}: {state}");
    let message = s.message.strip_prefix(&state).unwrap_or(&s.message);
    let message = message.trim_start_matches([';', ':', ' ']);
    if !message.is_empty() {
        line.push_str(&format!(" ({message})"));
    }
    line
}

fn finished_line(job_id: &str, f: &pb::Finished) -> String {
    let mut line = format!("job {job_id}: {}", output::job_state(f.state));
    if let Some(m) = &f.model {
        line.push_str(&format!(" - model {} v{}", m.name, m.version));
    }
    if f.best_epoch > 0 {
        line.push_str(&format!(" - best epoch {}", f.best_epoch));
    }
    if f.weights_epoch > 0 && f.weights_epoch != f.best_epoch {
        line.push_str(&format!(" - weights from epoch {}", f.weights_epoch));
    }
    if f.stopped_early {
        line.push_str(" - stopped early");
    }
    if !f.reason.is_empty() {
        line.push_str(&format!(" - {}", f.reason));
    }
    line
}

/// Follows a job to its end (or detaches), then turns how it ended into the
/// exit status: a job that failed or was cancelled is a failure.
pub async fn follow_to_end(
    client: &mut Client,
    job_id: &str,
    format: Format,
    on_interrupt: OnInterrupt,
) -> Result<(), Failure> {
    match follow(client, job_id, format, on_interrupt).await? {
        Followed::Detached => Ok(()),
        Followed::Finished(f) if f.state == pb::JobState::Succeeded as i32 => Ok(()),
        Followed::Finished(f) => Err(Failure::job(format!(
            "job {job_id} {}{}",
            output::job_state(f.state),
            if f.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", f.reason)
            }
        ))),
    }
}
