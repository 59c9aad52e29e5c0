//! A search's trials as the CLI shows them: a line an event and, on a
//! terminal, the ranked table redrawn in place (`tune`, `jobs watch`,
//! `jobs get`).
use super::output::{self, Format};
use crate::proto as pb;

/// The trials so far, best first, as the server ranks them: each event
/// carries its trial and the ranking by number.
#[derive(Default)]
pub struct Leaderboard {
    trials: std::collections::BTreeMap<u32, pb::Trial>,
    ranking: Vec<u32>,
    /// Lines of the table on screen, to redraw it in place.
    drawn_lines: usize,
}

impl Leaderboard {
    /// Prints a line for the event and, on a terminal, redraws the table
    /// below it.
    pub fn on_event(&mut self, event: pb::TrialEvent, live: bool) {
        if live {
            self.clear();
        }
        if let Some(line) = event_line(&event) {
            println!("{line}");
        }
        if let Some(trial) = event.trial {
            self.trials.insert(trial.number, trial);
        }
        self.ranking = event.ranking;
        if live {
            self.draw();
        }
    }

    /// The final table, unless it is already on screen.
    pub fn finish(&mut self, live: bool) {
        if !live && !self.ranking.is_empty() {
            self.draw();
        }
        self.drawn_lines = 0;
    }

    fn clear(&mut self) {
        if self.drawn_lines > 0 {
            let _ = console::Term::stdout().clear_last_lines(self.drawn_lines);
            self.drawn_lines = 0;
        }
    }

    /// The ranked trials, best first.
    fn ranked(&self) -> Vec<pb::Trial> {
        self.ranking
            .iter()
            .filter_map(|n| self.trials.get(n).cloned())
            .collect()
    }

    fn draw(&mut self) {
        let ranked = self.ranked();
        if !ranked.is_empty() {
            self.drawn_lines = output::print_table(&trials_table(&ranked));
        }
    }
}

fn event_line(event: &pb::TrialEvent) -> Option<String> {
    let trial = event.trial.as_ref()?;
    if event.what == "reported" {
        return None;
    }
    let mut line = format!("trial {} {}", trial.number, event.what);
    if let Some(score) = trial.score {
        line.push_str(&format!(" - score {score:.4}"));
    }
    if trial.epochs > 0 {
        line.push_str(&format!(" - {} epochs", trial.epochs));
    }
    line.push_str(&format!(" - {}", hyperparameters(trial)));
    Some(line)
}

fn hyperparameters(trial: &pb::Trial) -> String {
    trial
        .hyperparameters
        .iter()
        .map(|h| format!("{}={}", h.name, h.value))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Trials as a ranked table.
pub fn trials_table(trials: &[pb::Trial]) -> comfy_table::Table {
    let mut table = output::table(
        &[
            "RANK",
            "TRIAL",
            "STATE",
            "SCORE",
            "EPOCHS",
            "HYPERPARAMETERS",
        ],
        &[0, 1, 3, 4],
    );
    for (rank, t) in trials.iter().enumerate() {
        table.add_row(vec![
            (rank + 1).to_string(),
            t.number.to_string(),
            output::job_state(t.state),
            t.score
                .map(|s| format!("{s:.4}"))
                .unwrap_or_else(|| "-".into()),
            t.epochs.to_string(),
            hyperparameters(t),
        ]);
    }
    table
}

/// Whether a format redraws tables in place.
pub fn live(format: Format) -> bool {
    format == Format::Text && output::is_terminal()
}
