//! `lstmd plot`: a model's learning curves (loss and accuracy, train and
//! validation, per epoch) with the best epoch marked, as PNG or SVG.
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use super::client::ClientArgs;
use super::output::{self, Format};
use super::Failure;
use crate::proto as pb;

#[derive(clap::Args)]
pub struct PlotArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The model's name.
    #[arg(long)]
    pub model: String,
    /// A version (default: the latest).
    #[arg(long)]
    pub version: Option<u32>,
    /// The image to write: `.png` or `.svg`.
    #[arg(long = "out", short = 'o', value_name = "FILE")]
    pub out: PathBuf,
    /// Image width in pixels.
    #[arg(long, default_value_t = 1200)]
    pub width: u32,
    /// Image height in pixels.
    #[arg(long, default_value_t = 480)]
    pub height: u32,
}

/// Series colours (the matplotlib defaults, which people read at a glance).
pub const TRAIN_COLOR: RGBColor = RGBColor(31, 119, 180);
pub const VALIDATION_COLOR: RGBColor = RGBColor(255, 127, 14);
pub const BEST_COLOR: RGBColor = RGBColor(214, 39, 40);

const FONT: &str = "sans-serif";
static FONT_BYTES: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");

/// What a plot shows.
pub struct Curves {
    pub title: String,
    pub history: Vec<pb::EpochMetrics>,
    pub best_epoch: Option<u32>,
}

pub async fn run(args: PlotArgs) -> Result<(), Failure> {
    if !(64..=8192).contains(&args.width) || !(64..=8192).contains(&args.height) {
        return Err(Failure::local(
            "--width and --height must be 64..=8192 pixels",
        ));
    }
    let format = args.client.output;
    let mut client = args.client.connect().await?;
    let model = super::models::get(&mut client, &args.model, args.version).await?;
    if model.history.is_empty() {
        return Err(Failure::local(format!(
            "model {} v{} has no training history to plot",
            model.name, model.version
        )));
    }
    let best_epoch = match job_best_epoch(&mut client, &model.job_id).await {
        Some(epoch) => Some(epoch),
        None => best_by_monitor(&model),
    };
    let curves = Curves {
        title: format!("{} v{}", model.name, model.version),
        history: model.history,
        best_epoch,
    };
    write(&curves, &args.out, (args.width, args.height))?;
    if format == Format::Json {
        return output::print_json(&serde_json::json!({
            "file": args.out.display().to_string(),
            "epochs": curves.history.len(),
            "bestEpoch": best_epoch,
        }));
    }
    println!(
        "wrote {} ({} epochs{})",
        args.out.display(),
        curves.history.len(),
        best_epoch
            .map(|e| format!(", best epoch {e}"))
            .unwrap_or_default()
    );
    Ok(())
}

/// The best epoch the training job reported, if the job is still known.
async fn job_best_epoch(client: &mut super::client::Client, job_id: &str) -> Option<u32> {
    if job_id.is_empty() {
        return None;
    }
    let job = client
        .jobs
        .get_job(pb::GetJobRequest { id: job_id.into() })
        .await
        .ok()?
        .into_inner();
    match job.latest_progress?.kind? {
        pb::job_event::Kind::Finished(f) if f.best_epoch > 0 => Some(f.best_epoch),
        _ => None,
    }
}

/// Without the job: the best epoch by the metric the config's early
/// stopping watched (val_loss when there was validation, else loss), in
/// its mode.
fn best_by_monitor(model: &pb::Model) -> Option<u32> {
    let has_val = model.history.iter().any(|m| m.val_loss.is_some());
    let monitor = model
        .config
        .as_ref()
        .and_then(|c| c.early_stopping.as_ref())
        .and_then(|e| e.monitor.as_ref());
    let default = if has_val { "val_loss" } else { "loss" };
    let metric = monitor
        .map(|m| m.metric.as_str())
        .filter(|m| MONITOR_METRICS.contains(m))
        .unwrap_or(default);
    // The server's rule for mode "auto" (or none): losses go down, the rest up.
    let minimise = match monitor.map(|m| m.mode.as_str()) {
        Some("min") => true,
        Some("max") => false,
        _ => metric.ends_with("loss"),
    };
    let value = |m: &pb::EpochMetrics| metric_value(m, metric);
    // Lower is better after the sign flip for metrics that go up.
    let sign = if minimise { 1.0 } else { -1.0 };
    model
        .history
        .iter()
        .filter_map(|m| {
            value(m)
                .filter(|v| v.is_finite())
                .map(|v| (m.epoch, sign * v))
        })
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(epoch, _)| epoch)
}

/// Draws the curves into `path`, as the extension says.
pub fn write(curves: &Curves, path: &Path, size: (u32, u32)) -> Result<(), Failure> {
    register_font();
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let failed = |e: Box<dyn std::error::Error>| {
        Failure::local(format!("cannot draw {}: {e}", path.display()))
    };
    // Drawn into a temporary file beside the target, renamed when whole.
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = output::temp_file_in(dir, &format!(".{}", extension.clone().unwrap_or_default()))
        .map_err(|e| Failure::local(format!("{}: {e}", dir.display())))?;
    match extension.as_deref() {
        Some("png") => {
            let root = BitMapBackend::new(tmp.path(), size).into_drawing_area();
            draw(curves, &root).map_err(failed)?;
        }
        Some("svg") => {
            let root = SVGBackend::new(tmp.path(), size).into_drawing_area();
            draw(curves, &root).map_err(failed)?;
        }
        _ => {
            return Err(Failure::local(format!(
                "--out {}: the file name must end in .png or .svg",
                path.display()
            )))
        }
    }
    tmp.persist(path)
        .map_err(|e| Failure::local(format!("{}: {}", path.display(), e.error)))?;
    Ok(())
}

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The font is compiled in; a parse failure would be a build mistake.
        plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES)
            .unwrap_or_else(|_| panic!("the embedded font is a valid TrueType file"));
    });
}

/// Loss on the left, accuracy on the right.
fn draw<DB: DrawingBackend>(
    curves: &Curves,
    root: &DrawingArea<DB, Shift>,
) -> Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let root = root.titled(&curves.title, (FONT, 22))?;
    let (width, _) = root.dim_in_pixel();
    let (left, right) = root.split_horizontally(width / 2);
    let h = &curves.history;
    panel(
        &left,
        "loss",
        [
            ("loss", h.iter().map(|m| (m.epoch, Some(m.loss))).collect()),
            (
                "val_loss",
                h.iter().map(|m| (m.epoch, m.val_loss)).collect(),
            ),
        ],
        curves.best_epoch,
        // Loss falls: the upper right corner is empty by the last epochs.
        SeriesLabelPosition::UpperRight,
    )?;
    panel(
        &right,
        "accuracy",
        [
            (
                "accuracy",
                h.iter().map(|m| (m.epoch, Some(m.accuracy))).collect(),
            ),
            (
                "val_accuracy",
                h.iter().map(|m| (m.epoch, m.val_accuracy)).collect(),
            ),
        ],
        curves.best_epoch,
        // Accuracy rises: the lower right corner is the empty one.
        SeriesLabelPosition::LowerRight,
    )?;
    root.present()?;
    Ok(())
}

type Series<'a> = (&'a str, Vec<(u32, Option<f64>)>);

/// One chart: the train series, the validation series when there is one,
/// and the best epoch as a vertical dashed line.
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    metric: &str,
    [train, validation]: [Series; 2],
    best_epoch: Option<u32>,
    legend: SeriesLabelPosition,
) -> Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    let points = |s: &Series| -> Vec<(f64, f64)> {
        s.1.iter()
            .filter_map(|&(e, v)| v.filter(|v| v.is_finite()).map(|v| (f64::from(e), v)))
            .collect()
    };
    let train_points = points(&train);
    let val_points = points(&validation);
    let all = train_points.iter().chain(&val_points);
    let (mut lo, mut hi) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
        (lo.min(p.1), hi.max(p.1))
    });
    if !lo.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(1e-3);
    let last_epoch = train.1.last().map(|p| p.0).unwrap_or(1).max(1);
    let mut chart = ChartBuilder::on(area)
        .caption(metric, (FONT, 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.5..f64::from(last_epoch) + 0.5, (lo - pad)..(hi + pad))?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(metric)
        .x_labels(last_epoch.min(12) as usize)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .label_style((FONT, 13))
        .draw()?;
    for (name, pts, color) in [
        (train.0, train_points, TRAIN_COLOR),
        (validation.0, val_points, VALIDATION_COLOR),
    ] {
        if pts.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    if let Some(best) = best_epoch {
        let x = f64::from(best);
        chart
            .draw_series(DashedLineSeries::new(
                [(x, lo - pad), (x, hi + pad)],
                6,
                4,
                BEST_COLOR.stroke_width(2),
            ))?
            .label(format!("best epoch {best}"))
            .legend(|(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], BEST_COLOR.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(legend)
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// The metrics early stopping can monitor, by their names in the config.
const MONITOR_METRICS: [&str; 6] = [
    "loss",
    "accuracy",
    "top5_accuracy",
    "val_loss",
    "val_accuracy",
    "val_top5_accuracy",
];

/// An epoch's value of a monitor metric, by its name in the config; `None`
/// for a value the epoch did not record.
fn metric_value(m: &pb::EpochMetrics, metric: &str) -> Option<f64> {
    match metric {
        "loss" => Some(m.loss),
        "accuracy" => Some(m.accuracy),
        "top5_accuracy" => Some(m.top5_accuracy),
        "val_loss" => m.val_loss,
        "val_accuracy" => m.val_accuracy,
        "val_top5_accuracy" => m.val_top5_accuracy,
        _ => None,
    }
}
