//! How results are printed: tables and lines for people, the protobuf JSON
//! mapping for scripts.
use std::io::IsTerminal;

use comfy_table::{presets, CellAlignment, ContentArrangement, Table};

use super::Failure;
use crate::proto as pb;

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    #[default]
    Text,
    Json,
}

/// Makes a closed stdout (`lstmd jobs show ID | head -2`) end the process
/// quietly with status 0, as a reader that stopped early expects, instead
/// of `println!`'s panic. A panic hook catches every print in the CLI, with
/// no wrapper to forget at each one.
pub fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // `payload_as_str` needs Rust 1.91; the crate's floor is 1.90.
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info)
    }));
}

/// A temporary file in `dir` to write a result into and rename into place
/// once whole; created with mode 0666 less the umask, as any file a
/// command writes (tempfile's default 0600 would hide plots and exports
/// from the rest of the group).
pub fn temp_file_in(
    dir: &std::path::Path,
    suffix: &str,
) -> std::io::Result<tempfile::NamedTempFile> {
    let mut builder = tempfile::Builder::new();
    builder.suffix(suffix);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // The kernel applies the umask to the mode given to open(2).
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    builder.tempfile_in(dir)
}

/// Prints one JSON document on one line (a stream prints one per event).
pub fn print_json<T: serde::Serialize>(value: &T) -> Result<(), Failure> {
    let line = serde_json::to_string(value)
        .map_err(|e| Failure::local(format!("cannot render JSON: {e}")))?;
    println!("{line}");
    Ok(())
}

/// A borderless table with a header; the `numeric` columns are
/// right-aligned.
pub fn table(header: &[&str], numeric: &[usize]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.to_vec());
    for &i in numeric {
        if let Some(column) = table.column_mut(i) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
}

/// Prints a table without the leading space of each padded line; returns
/// the lines printed.
pub fn print_table(table: &Table) -> usize {
    let mut printed = 0;
    for line in table.lines() {
        println!("{}", line.strip_prefix(' ').unwrap_or(&line).trim_end());
        printed += 1;
    }
    printed
}

/// Whether bars and redrawn tables may be shown.
pub fn is_terminal() -> bool {
    std::io::stderr().is_terminal() && std::io::stdout().is_terminal()
}

/// A timestamp as `2026-11-26 20:15:03` (UTC).
pub fn time(ts: &Option<pbjson_types::Timestamp>) -> String {
    let Some(ts) = ts else {
        return "-".into();
    };
    // pbjson renders RFC 3339; keep the date and the whole seconds.
    let rendered = serde_json::to_value(ts)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    rendered.get(..19).unwrap_or(&rendered).replace('T', " ")
}

pub fn bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

pub fn seconds(s: f64) -> String {
    if !s.is_finite() || s < 0.0 {
        return "-".into();
    }
    if s < 60.0 {
        return format!("{s:.1}s");
    }
    // Whole seconds past a minute, as Keras prints `125s`, with the
    // minutes and hours spelled out: `2m05s`, `1h02m07s`.
    let whole = s.round() as u64;
    let (h, m, sec) = (whole / 3600, whole / 60 % 60, whole % 60);
    if h > 0 {
        format!("{h}h{m:02}m{sec:02}s")
    } else {
        format!("{m}m{sec:02}s")
    }
}

/// `JOB_STATE_SUCCEEDED` -> `succeeded`.
pub fn job_state(state: i32) -> String {
    pb::JobState::try_from(state)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("JOB_STATE_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| format!("state {state}"))
}

pub fn tokenizer(t: i32) -> String {
    pb::Tokenizer::try_from(t)
        .map(|t| {
            t.as_str_name()
                .trim_start_matches("TOKENIZER_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| format!("tokenizer {t}"))
}

pub fn cell(c: i32) -> String {
    pb::Cell::try_from(c)
        .map(|c| c.as_str_name().trim_start_matches("CELL_").to_string())
        .unwrap_or_else(|_| format!("cell {c}"))
}

/// `a 0.1234` for set values, nothing for unset ones.
pub fn metric(name: &str, value: Option<f64>) -> Option<String> {
    value.map(|v| format!("{name} {v:.4}"))
}

/// The metrics of one epoch, Keras' `verbose=1` style, with the epoch's
/// own time: `elapsed_seconds` counts from the job's start, so the
/// previous epoch's is subtracted (0 before the first).
pub fn epoch_line(m: &pb::EpochMetrics, epochs: u32, previous_elapsed: f64) -> String {
    let mut parts = vec![
        format!("Epoch {}/{}", m.epoch, epochs),
        seconds(m.elapsed_seconds - previous_elapsed),
    ];
    parts.extend(
        [
            metric("loss", Some(m.loss)),
            metric("accuracy", Some(m.accuracy)),
            metric("val_loss", m.val_loss),
            metric("val_accuracy", m.val_accuracy),
        ]
        .into_iter()
        .flatten(),
    );
    parts.push(format!("lr {:.3e}", m.learning_rate));
    parts.push(format!("{:.0} samples/s", m.samples_per_second));
    parts.join(" - ")
}

/// A history as a table, one row per epoch.
pub fn history_table(history: &[pb::EpochMetrics]) -> Table {
    let mut t = table(
        &[
            "EPOCH",
            "LOSS",
            "ACCURACY",
            "VAL_LOSS",
            "VAL_ACCURACY",
            "LR",
            "SAMPLES/S",
            "TIME",
        ],
        &[0, 1, 2, 3, 4, 5, 6, 7],
    );
    let opt = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
    let mut previous_elapsed = 0.0;
    for m in history {
        let epoch_seconds = m.elapsed_seconds - previous_elapsed;
        previous_elapsed = m.elapsed_seconds;
        t.add_row(vec![
            m.epoch.to_string(),
            format!("{:.4}", m.loss),
            format!("{:.4}", m.accuracy),
            opt(m.val_loss),
            opt(m.val_accuracy),
            format!("{:.3e}", m.learning_rate),
            format!("{:.0}", m.samples_per_second),
            seconds(epoch_seconds),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_names_and_times() {
        assert_eq!(job_state(pb::JobState::Succeeded as i32), "succeeded");
        assert_eq!(tokenizer(pb::Tokenizer::Char as i32), "char");
        assert_eq!(cell(pb::Cell::Gru as i32), "GRU");
        let ts = pbjson_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 5,
        };
        assert_eq!(time(&Some(ts)), "2023-11-14 22:13:20");
        assert_eq!(seconds(3.26), "3.3s");
        assert_eq!(seconds(125.4), "2m05s");
        assert_eq!(seconds(3727.0), "1h02m07s");
    }
}
