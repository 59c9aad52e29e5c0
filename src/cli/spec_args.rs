//! Flags that build a model spec and a training config, shared by `train`
//! and `tune`. Unset flags stay unset, so the server's preset and defaults
//! decide; the server validates every value and names the field.
use crate::proto as pb;

use super::Failure;

#[derive(clap::Args, Clone, Debug, Default)]
pub struct SpecArgs {
    /// A preset: dropout, tuning, bidirectional or deep; flags override it.
    #[arg(long, help_heading = "Model")]
    pub preset: Option<String>,
    /// Token ids the model knows (default: the dataset's vocabulary).
    #[arg(long, help_heading = "Model")]
    pub vocab_size: Option<u32>,
    #[arg(long, help_heading = "Model")]
    pub embedding_dim: Option<u32>,
    /// Tokens of context.
    #[arg(long, help_heading = "Model")]
    pub window: Option<u32>,
    #[arg(long, help_heading = "Model")]
    pub embedding_dropout: Option<f32>,
    /// A recurrent layer, repeatable, first to last:
    /// CELL:UNITS[:bi][:dropout=P], e.g. `lstm:64:dropout=0.5` or `gru:32:bi`.
    /// Given layers replace the preset's.
    #[arg(long = "layer", value_name = "LAYER", value_parser = parse_layer, help_heading = "Model")]
    pub layers: Vec<pb::RecurrentLayer>,
}

impl SpecArgs {
    pub fn to_proto(&self) -> pb::ModelSpec {
        pb::ModelSpec {
            preset: self.preset.clone().unwrap_or_default(),
            vocab_size: self.vocab_size,
            embedding_dim: self.embedding_dim,
            window: self.window,
            embedding_dropout: self.embedding_dropout,
            layers: self.layers.clone(),
        }
    }
}

/// `lstm`, `gru` or `rnn`.
pub fn parse_cell(s: &str) -> Result<pb::Cell, String> {
    match s.to_ascii_lowercase().as_str() {
        "lstm" => Ok(pb::Cell::Lstm),
        "gru" => Ok(pb::Cell::Gru),
        "rnn" => Ok(pb::Cell::Rnn),
        other => Err(format!("the cell must be lstm, gru or rnn, got {other:?}")),
    }
}

/// `lstm:64`, `gru:32:bi`, `rnn:16:bi:dropout=0.2`.
pub fn parse_layer(s: &str) -> Result<pb::RecurrentLayer, String> {
    let mut parts = s.split(':');
    let cell = parse_cell(parts.next().unwrap_or(""))?;
    let units = parts
        .next()
        .and_then(|u| u.parse::<u32>().ok())
        .ok_or_else(|| format!("expected CELL:UNITS[:bi][:dropout=P], got {s:?}"))?;
    let mut layer = pb::RecurrentLayer {
        cell: cell as i32,
        units,
        ..Default::default()
    };
    for part in parts {
        if part == "bi" {
            layer.bidirectional = true;
        } else if let Some(p) = part.strip_prefix("dropout=") {
            layer.dropout = p
                .parse()
                .map_err(|_| format!("dropout must be a number, got {p:?}"))?;
        } else {
            return Err(format!(
                "unknown layer option {part:?}: expected `bi` or `dropout=P`"
            ));
        }
    }
    Ok(layer)
}

#[derive(clap::Args, Clone, Debug, Default)]
pub struct ConfigArgs {
    #[arg(long, help_heading = "Training")]
    pub epochs: Option<u32>,
    #[arg(long, help_heading = "Training")]
    pub batch_size: Option<u32>,
    #[arg(long, help_heading = "Training")]
    pub learning_rate: Option<f32>,
    /// adam (default) or adamw.
    #[arg(long, help_heading = "Training")]
    pub optimizer: Option<String>,
    #[arg(long, help_heading = "Training")]
    pub weight_decay: Option<f32>,
    /// Fraction of the windows held out for validation.
    #[arg(long, help_heading = "Training")]
    pub validation_split: Option<f32>,
    #[arg(long, help_heading = "Training")]
    pub seed: Option<u64>,
    /// Keep the windows in order.
    #[arg(long, help_heading = "Training")]
    pub no_shuffle: bool,
    /// Scale gradients to at most this global L2 norm.
    #[arg(long, help_heading = "Training")]
    pub clip_grad_norm: Option<f32>,
    /// Stop after this many epochs without improvement of --monitor.
    #[arg(long, value_name = "PATIENCE", help_heading = "Training")]
    pub early_stopping: Option<u32>,
    /// With --early-stopping: put back the best epoch's weights.
    #[arg(long, requires = "early_stopping", help_heading = "Training")]
    pub restore_best_weights: bool,
    /// Cut the learning rate after this many epochs without improvement.
    #[arg(long, value_name = "PATIENCE", help_heading = "Training")]
    pub reduce_lr: Option<u32>,
    /// With --reduce-lr: the factor (default 0.1).
    #[arg(long, requires = "reduce_lr", help_heading = "Training")]
    pub reduce_lr_factor: Option<f64>,
    /// What callbacks watch: loss, accuracy, val_loss (default with
    /// validation data), val_accuracy, ...
    #[arg(long, help_heading = "Training")]
    pub monitor: Option<String>,
    /// Register the best epoch's weights instead of the last one's.
    #[arg(long, help_heading = "Training")]
    pub keep_best: bool,
}

impl ConfigArgs {
    pub fn to_proto(&self) -> pb::TrainingConfig {
        let monitor = || pb::Monitor {
            metric: self.monitor.clone().unwrap_or_default(),
            ..Default::default()
        };
        pb::TrainingConfig {
            epochs: self.epochs,
            batch_size: self.batch_size,
            learning_rate: self.learning_rate,
            optimizer: self.optimizer.clone().unwrap_or_default(),
            weight_decay: self.weight_decay,
            validation_split: self.validation_split,
            seed: self.seed,
            shuffle: self.no_shuffle.then_some(false),
            clip_grad_norm: self.clip_grad_norm,
            early_stopping: self.early_stopping.map(|patience| pb::EarlyStopping {
                monitor: Some(monitor()),
                patience,
                restore_best_weights: self.restore_best_weights,
            }),
            reduce_lr_on_plateau: self.reduce_lr.map(|patience| pb::ReduceLrOnPlateau {
                monitor: Some(monitor()),
                factor: self.reduce_lr_factor,
                patience,
                ..Default::default()
            }),
            keep_best: self.keep_best.then_some(true),
            ..Default::default()
        }
    }
}

/// Where the training data comes from and what the model is called.
#[derive(clap::Args, Clone, Debug)]
pub struct JobTarget {
    /// The training dataset, by id or name.
    #[arg(long)]
    pub dataset: String,
    /// The model to create or add a version to (default: the dataset's
    /// name as given).
    #[arg(long)]
    pub name: Option<String>,
    /// A separate validation dataset, by id or name.
    #[arg(long)]
    pub validation_dataset: Option<String>,
}

impl JobTarget {
    pub fn model_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.dataset.clone())
    }

    /// The dataset ids: (training, validation or empty).
    pub async fn resolve(
        &self,
        client: &mut super::client::Client,
    ) -> Result<(String, String), Failure> {
        let train = super::dataset_id(client, &self.dataset).await?;
        let validation = match &self.validation_dataset {
            Some(v) => super::dataset_id(client, v).await?,
            None => String::new(),
        };
        Ok((train, validation))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_layers() {
        let l = parse_layer("gru:32:bi:dropout=0.25").unwrap();
        assert_eq!(l.cell, pb::Cell::Gru as i32);
        assert_eq!((l.units, l.bidirectional, l.dropout), (32, true, 0.25));
        assert!(parse_layer("lstm").unwrap_err().contains("CELL:UNITS"));
        assert!(parse_layer("cnn:3")
            .unwrap_err()
            .contains("lstm, gru or rnn"));
        assert!(parse_layer("rnn:3:wide").unwrap_err().contains("wide"));
    }
}
