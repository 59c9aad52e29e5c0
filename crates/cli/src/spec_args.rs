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
    /// Width of each token's embedding vector (required with --layer
    /// unless a --preset gives it).
    #[arg(long, help_heading = "Model")]
    pub embedding_dim: Option<u32>,
    /// Tokens of context.
    #[arg(long, help_heading = "Model")]
    pub window: Option<u32>,
    /// Dropout on the embeddings while training, 0 to <1 (default 0).
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
    /// Passes over the training windows (default 10).
    #[arg(long, help_heading = "Training")]
    pub epochs: Option<u32>,
    /// Windows per optimizer step (default 64).
    #[arg(long, help_heading = "Training")]
    pub batch_size: Option<u32>,
    /// The optimizer's step size (default 0.001).
    #[arg(long, help_heading = "Training")]
    pub learning_rate: Option<f32>,
    /// adam (default) or adamw.
    #[arg(long, help_heading = "Training")]
    pub optimizer: Option<String>,
    /// L2 weight decay (decoupled with adamw; default 0).
    #[arg(long, help_heading = "Training")]
    pub weight_decay: Option<f32>,
    /// Fraction of the windows held out for validation.
    #[arg(long, help_heading = "Training")]
    pub validation_split: Option<f32>,
    /// Seeds initial weights, shuffling and dropout: the same seed, config
    /// and data give the same weights.
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
    /// Which predictions of each window the loss scores: every (default:
    /// the model answers prompts of 1..=window tokens) or last.
    #[arg(long, value_name = "every|last", help_heading = "Training")]
    pub loss_positions: Option<String>,
    /// Stateful training: batch-size parallel streams, the state carried
    /// across batches (truncated BPTT), reset every epoch.
    #[arg(long, help_heading = "Training")]
    pub stateful: bool,
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
            loss_positions: self.loss_positions.clone().unwrap_or_default(),
            stateful: self.stateful.then_some(true),
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

/// Request fields and the flags of `train` and `tune` that set them.
const FIELD_FLAGS: &[(&str, &str)] = &[
    ("spec.preset", "--preset"),
    ("spec.vocab_size", "--vocab-size"),
    ("spec.embedding_dim", "--embedding-dim"),
    ("spec.window", "--window"),
    ("spec.embedding_dropout", "--embedding-dropout"),
    ("spec.layers", "--layer"),
    ("config.epochs", "--epochs"),
    ("config.batch_size", "--batch-size"),
    ("config.learning_rate", "--learning-rate"),
    ("config.optimizer", "--optimizer"),
    ("config.weight_decay", "--weight-decay"),
    ("config.validation_split", "--validation-split"),
    ("config.seed", "--seed"),
    ("config.clip_grad_norm", "--clip-grad-norm"),
    ("config.early_stopping.monitor", "--monitor"),
    ("config.early_stopping", "--early-stopping"),
    ("config.reduce_lr_on_plateau.monitor", "--monitor"),
    ("config.reduce_lr_on_plateau.factor", "--reduce-lr-factor"),
    ("config.reduce_lr_on_plateau", "--reduce-lr"),
    ("config.keep_best", "--keep-best"),
    ("config.monitor", "--monitor"),
    ("search_space.units", "--search-units"),
    ("search_space.num_layers", "--search-layers"),
    ("search_space.cells", "--search-cells"),
    ("search_space.bidirectional", "--search-bidirectional"),
    ("search_space.dropout", "--search-dropout"),
    ("search_space.learning_rate", "--search-learning-rate"),
    ("search_space.batch_size", "--search-batch-size"),
    ("search_space.embedding_dim", "--search-embedding-dim"),
    ("validation_dataset_id", "--validation-dataset"),
    ("dataset_id", "--dataset"),
    ("model_name", "--name"),
    ("max_trials", "--max-trials"),
    ("parallel_trials", "--parallel-trials"),
    ("max_epochs", "--max-epochs"),
    ("reduction_factor", "--reduction-factor"),
    ("strategy", "--strategy"),
    ("objective", "--objective"),
];

/// Names the flag beside the request field a server message names
/// (`spec.embedding_dim (--embedding-dim) must be set ...`), so the user
/// sees what they typed, or would type, to fix it.
pub fn with_flag_names(mut failure: Failure) -> Failure {
    failure.message = name_flags(&failure.message);
    failure
}

fn name_flags(message: &str) -> String {
    // The longest field that occurs, at a boundary; `spec.layers[2]` names
    // the third --layer.
    let boundary =
        |c: Option<char>| !c.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.');
    let mut best: Option<(usize, usize, String)> = None;
    for (field, flag) in FIELD_FLAGS {
        for (at, _) in message.match_indices(field) {
            let end = at + field.len();
            if !boundary(message[..at].chars().next_back()) {
                continue;
            }
            let rest = &message[end..];
            let (end, flag) = match rest.strip_prefix('[').and_then(|r| r.split_once(']')) {
                Some((index, _)) if index.parse::<usize>().is_ok() => {
                    let n = index.parse::<usize>().unwrap_or(0) + 1;
                    (end + index.len() + 2, format!("{flag} number {n}"))
                }
                _ => (end, flag.to_string()),
            };
            let after = message[end..].chars().next();
            if !(boundary(after) || after == Some('.')) {
                continue;
            }
            if best.as_ref().is_none_or(|b| field.len() > b.1) {
                best = Some((end, field.len(), flag));
            }
        }
    }
    match best {
        // The dotted tail after an indexed layer (`.units`) stays with it.
        Some((end, _, flag)) => {
            let tail_end = message[end..]
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.'))
                .map_or(message.len(), |i| end + i);
            format!("{} ({flag}){}", &message[..tail_end], &message[tail_end..])
        }
        None => message.to_string(),
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

    #[test]
    fn names_the_flags_of_fields() {
        assert_eq!(
            name_flags("INVALID_ARGUMENT: spec.embedding_dim must be set, got 0"),
            "INVALID_ARGUMENT: spec.embedding_dim (--embedding-dim) must be set, got 0"
        );
        assert_eq!(
            name_flags("INVALID_ARGUMENT: spec.layers[1].units must be 1..=4096, got 0"),
            "INVALID_ARGUMENT: spec.layers[1].units (--layer number 2) must be 1..=4096, got 0"
        );
        assert_eq!(
            name_flags("INVALID_ARGUMENT: config.early_stopping.monitor: unknown metric"),
            "INVALID_ARGUMENT: config.early_stopping.monitor (--monitor): unknown metric"
        );
        assert_eq!(
            name_flags("NOT_FOUND: no such job"),
            "NOT_FOUND: no such job"
        );
    }
}
