//! Search spaces: what a tuning job varies, validated, enumerated (grid) or
//! sampled (random), and applied to a base spec and config.
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::InvalidField;
use crate::nn::{Cell, ModelSpec, SpecLimits};
use crate::train::TrainConfig;

/// One hyperparameter's candidates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Param {
    Choices(Vec<f64>),
    Range { min: f64, max: f64 },
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Integer,
    LogUniform,
    Uniform,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SearchSpace {
    pub units: Option<Param>,
    pub num_layers: Option<Param>,
    pub cells: Vec<Cell>,
    pub bidirectional: Vec<bool>,
    pub dropout: Option<Param>,
    pub learning_rate: Option<Param>,
    pub batch_size: Option<Param>,
    pub embedding_dim: Option<Param>,
}

/// One point of a search space; None keeps the base value.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Hyperparameters {
    pub units: Option<usize>,
    pub num_layers: Option<usize>,
    pub cell: Option<Cell>,
    pub bidirectional: Option<bool>,
    pub dropout: Option<f32>,
    pub learning_rate: Option<f64>,
    pub batch_size: Option<usize>,
    pub embedding_dim: Option<usize>,
}

impl Hyperparameters {
    /// (name, value) pairs of the values set, for display.
    pub fn pairs(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut push = |name: &str, v: Option<String>| {
            if let Some(v) = v {
                out.push((name.to_string(), v));
            }
        };
        push("units", self.units.map(|v| v.to_string()));
        push("num_layers", self.num_layers.map(|v| v.to_string()));
        push("cell", self.cell.map(|c| c.class_name().to_string()));
        push("bidirectional", self.bidirectional.map(|v| v.to_string()));
        push("dropout", self.dropout.map(|v| v.to_string()));
        push(
            "learning_rate",
            self.learning_rate.map(|v| format!("{v:e}")),
        );
        push("batch_size", self.batch_size.map(|v| v.to_string()));
        push("embedding_dim", self.embedding_dim.map(|v| v.to_string()));
        out
    }

    /// The base spec and config with these values applied, validated.
    pub fn apply(
        &self,
        spec: &ModelSpec,
        config: &TrainConfig,
        limits: &SpecLimits,
        max_batch_size: usize,
    ) -> Result<(ModelSpec, TrainConfig), InvalidField> {
        let mut spec = spec.clone();
        let mut config = config.clone();
        if let Some(n) = self.num_layers {
            let first = spec.layers[0].clone();
            spec.layers = vec![first; n];
        }
        for layer in &mut spec.layers {
            if let Some(u) = self.units {
                layer.units = u;
            }
            if let Some(c) = self.cell {
                layer.cell = c;
            }
            if let Some(b) = self.bidirectional {
                layer.bidirectional = b;
            }
            if let Some(d) = self.dropout {
                layer.dropout = d;
            }
        }
        if let Some(e) = self.embedding_dim {
            spec.embedding_dim = e;
        }
        if let Some(lr) = self.learning_rate {
            config.learning_rate = lr;
        }
        if let Some(b) = self.batch_size {
            if b > max_batch_size {
                return Err(InvalidField::new(
                    "search_space.batch_size",
                    format!("must be at most {max_batch_size}, got {b}"),
                ));
            }
            config.batch_size = b;
        }
        let trial = |e: InvalidField| {
            InvalidField::new(
                format!("search_space (trial {:?}): {}", self.pairs(), e.field),
                e.rule,
            )
        };
        spec.validate(limits).map_err(trial)?;
        config.check_with_spec(&spec).map_err(trial)?;
        Ok((spec, config))
    }
}

fn check(
    field: &str,
    param: &Option<Param>,
    kind: Kind,
    lo: f64,
    hi: f64,
) -> Result<(), InvalidField> {
    let in_bounds =
        |v: f64| v.is_finite() && v >= lo && v <= hi && (kind != Kind::Integer || v.fract() == 0.0);
    let rule = match kind {
        Kind::Integer => format!("integers in {lo}..={hi}"),
        // Exclusive bound: a log-uniform range must stay above zero (its
        // smallest allowed value, f64::MIN_POSITIVE, would print 300 digits).
        Kind::LogUniform => format!("numbers in (0, {hi}]"),
        Kind::Uniform => format!("numbers in [{lo}, {hi}]"),
    };
    match param {
        None => Ok(()),
        Some(Param::Choices(c)) => {
            if c.is_empty() {
                return Err(InvalidField::new(
                    format!("{field}.choices"),
                    "must not be empty",
                ));
            }
            match c.iter().find(|v| !in_bounds(**v)) {
                Some(v) => Err(InvalidField::new(
                    format!("{field}.choices"),
                    format!("must be {rule}, got {v}"),
                )),
                None => Ok(()),
            }
        }
        Some(Param::Range { min, max }) => {
            if !in_bounds(*min) || !in_bounds(*max) {
                return Err(InvalidField::new(
                    format!("{field}.min"),
                    format!("and max must be {rule}, got {min}..{max}"),
                ));
            }
            if min > max {
                return Err(InvalidField::new(
                    format!("{field}.min"),
                    format!("must be <= max, got min {min} > max {max}"),
                ));
            }
            Ok(())
        }
    }
}

fn draw(param: &Param, kind: Kind, rng: &mut ChaCha8Rng) -> f64 {
    match param {
        Param::Choices(c) => c[rng.random_range(0..c.len())],
        Param::Range { min, max } => match kind {
            Kind::Integer => rng.random_range(*min as i64..=*max as i64) as f64,
            Kind::LogUniform => significant(
                (min.ln() + rng.random::<f64>() * (max.ln() - min.ln())).exp(),
                (*min, *max),
            ),
            Kind::Uniform => significant(min + rng.random::<f64>() * (max - min), (*min, *max)),
        },
    }
}

/// A draw from a continuous range kept to 3 significant digits (within the
/// range): the value trained with is the one printed and stored, `5.37e-3`,
/// not `5.3687088881477175e-3`.
fn significant(v: f64, (min, max): (f64, f64)) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    let rounded: f64 = format!("{v:.2e}").parse().unwrap_or(v);
    rounded.clamp(min, max)
}

impl SearchSpace {
    pub fn validate(&self, limits: &SpecLimits, max_batch_size: usize) -> Result<(), InvalidField> {
        check(
            "search_space.units",
            &self.units,
            Kind::Integer,
            1.0,
            limits.max_units as f64,
        )?;
        check(
            "search_space.num_layers",
            &self.num_layers,
            Kind::Integer,
            1.0,
            limits.max_layers as f64,
        )?;
        check(
            "search_space.dropout",
            &self.dropout,
            Kind::Uniform,
            0.0,
            0.999_999,
        )?;
        check(
            "search_space.learning_rate",
            &self.learning_rate,
            Kind::LogUniform,
            f64::MIN_POSITIVE,
            1e6,
        )?;
        check(
            "search_space.batch_size",
            &self.batch_size,
            Kind::Integer,
            1.0,
            max_batch_size as f64,
        )?;
        check(
            "search_space.embedding_dim",
            &self.embedding_dim,
            Kind::Integer,
            1.0,
            limits.max_embedding_dim as f64,
        )?;
        Ok(())
    }

    /// Every combination of choices, in order (the last parameter varies
    /// fastest). Ranges cannot be enumerated.
    pub fn grid(&self) -> Result<Vec<Hyperparameters>, InvalidField> {
        let numeric = |field: &str, p: &Option<Param>| -> Result<Vec<Option<f64>>, InvalidField> {
            match p {
                None => Ok(vec![None]),
                Some(Param::Choices(c)) => Ok(c.iter().map(|v| Some(*v)).collect()),
                Some(Param::Range { .. }) => Err(InvalidField::new(
                    field,
                    "must list choices for a grid search, not a range",
                )),
            }
        };
        let units = numeric("search_space.units", &self.units)?;
        let layers = numeric("search_space.num_layers", &self.num_layers)?;
        let cells: Vec<Option<Cell>> = if self.cells.is_empty() {
            vec![None]
        } else {
            self.cells.iter().map(|c| Some(*c)).collect()
        };
        let bidi: Vec<Option<bool>> = if self.bidirectional.is_empty() {
            vec![None]
        } else {
            self.bidirectional.iter().map(|b| Some(*b)).collect()
        };
        let dropout = numeric("search_space.dropout", &self.dropout)?;
        let lr = numeric("search_space.learning_rate", &self.learning_rate)?;
        let batch = numeric("search_space.batch_size", &self.batch_size)?;
        let emb = numeric("search_space.embedding_dim", &self.embedding_dim)?;
        let mut out = Vec::new();
        for u in &units {
            for l in &layers {
                for c in &cells {
                    for b in &bidi {
                        for d in &dropout {
                            for r in &lr {
                                for bs in &batch {
                                    for e in &emb {
                                        out.push(Hyperparameters {
                                            units: u.map(|v| v as usize),
                                            num_layers: l.map(|v| v as usize),
                                            cell: *c,
                                            bidirectional: *b,
                                            dropout: d.map(|v| v as f32),
                                            learning_rate: *r,
                                            batch_size: bs.map(|v| v as usize),
                                            embedding_dim: e.map(|v| v as usize),
                                        });
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// One random point, from `rng`.
    pub fn sample(&self, rng: &mut ChaCha8Rng) -> Hyperparameters {
        let int = |p: &Option<Param>, rng: &mut ChaCha8Rng| {
            p.as_ref().map(|p| draw(p, Kind::Integer, rng) as usize)
        };
        Hyperparameters {
            units: int(&self.units, rng),
            num_layers: int(&self.num_layers, rng),
            cell: (!self.cells.is_empty())
                .then(|| self.cells[rng.random_range(0..self.cells.len())]),
            bidirectional: (!self.bidirectional.is_empty())
                .then(|| self.bidirectional[rng.random_range(0..self.bidirectional.len())]),
            dropout: self
                .dropout
                .as_ref()
                .map(|p| draw(p, Kind::Uniform, rng) as f32),
            learning_rate: self
                .learning_rate
                .as_ref()
                .map(|p| draw(p, Kind::LogUniform, rng)),
            batch_size: int(&self.batch_size, rng),
            embedding_dim: int(&self.embedding_dim, rng),
        }
    }
}
