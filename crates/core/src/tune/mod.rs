//! Hyperparameter search logic: search spaces, the trials a strategy plans,
//! successive-halving rungs, scores. The job manager runs the trials.
pub mod space;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

pub use space::{Hyperparameters, Param, SearchSpace};

use crate::error::InvalidField;
use crate::nn::metadata::EpochMetrics;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    Grid,
    Random,
    Hyperband,
}

impl Strategy {
    pub fn parse(s: &str) -> Result<Self, InvalidField> {
        match s {
            "grid" => Ok(Strategy::Grid),
            "" | "random" => Ok(Strategy::Random),
            "hyperband" => Ok(Strategy::Hyperband),
            other => Err(InvalidField::new(
                "strategy",
                format!("must be grid, random or hyperband, got {other:?}"),
            )),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    ValLoss,
    ValAccuracy,
}

impl Objective {
    pub fn parse(s: &str) -> Result<Self, InvalidField> {
        match s {
            "" | "val_loss" => Ok(Objective::ValLoss),
            "val_accuracy" => Ok(Objective::ValAccuracy),
            other => Err(InvalidField::new(
                "objective",
                format!("must be val_loss or val_accuracy, got {other:?}"),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Objective::ValLoss => "val_loss",
            Objective::ValAccuracy => "val_accuracy",
        }
    }

    /// The best value over a trial's epochs.
    pub fn score(self, history: &[EpochMetrics]) -> Option<f64> {
        let values = history.iter().filter_map(|m| match self {
            Objective::ValLoss => m.val_loss,
            Objective::ValAccuracy => m.val_accuracy,
        });
        match self {
            Objective::ValLoss => values.filter(|v| v.is_finite()).reduce(f64::min),
            Objective::ValAccuracy => values.filter(|v| v.is_finite()).reduce(f64::max),
        }
    }

    /// Whether score `a` beats `b`.
    pub fn better(self, a: f64, b: f64) -> bool {
        match self {
            Objective::ValLoss => a < b,
            Objective::ValAccuracy => a > b,
        }
    }
}

/// The trials a search runs, in order; deterministic from the seed, so a
/// restarted search plans the same trials.
pub fn plan(
    space: &SearchSpace,
    strategy: Strategy,
    max_trials: usize,
    seed: u64,
) -> Result<Vec<Hyperparameters>, InvalidField> {
    Ok(match strategy {
        Strategy::Grid => {
            let mut all = space.grid()?;
            all.truncate(max_trials);
            all
        }
        Strategy::Random | Strategy::Hyperband => {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..max_trials).map(|_| space.sample(&mut rng)).collect()
        }
    })
}

/// One rung of successive halving: how many trials train and to how many
/// epochs in total.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rung {
    pub trials: usize,
    pub epochs: u32,
}

/// Successive halving for `n` trials up to `max_epochs` with reduction
/// factor `eta`: the last rung trains ceil(n / eta^s) trials to max_epochs,
/// each rung before it eta times more trials to 1/eta of the epochs.
pub fn rungs(n: usize, max_epochs: u32, eta: u32) -> Vec<Rung> {
    let eta_f = eta as f64;
    // As many rungs as both the trials and the epochs allow.
    let mut s = 0;
    while eta.pow(s + 1) as usize <= n && eta.pow(s + 1) <= max_epochs {
        s += 1;
    }
    (0..=s)
        .map(|i| Rung {
            trials: ((n as f64) / eta_f.powi(i as i32)).ceil().max(1.0) as usize,
            epochs: ((max_epochs as f64) / eta_f.powi((s - i) as i32))
                .round()
                .max(1.0) as u32,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successive_halving_rungs() {
        assert_eq!(
            rungs(9, 9, 3),
            vec![
                Rung {
                    trials: 9,
                    epochs: 1
                },
                Rung {
                    trials: 3,
                    epochs: 3
                },
                Rung {
                    trials: 1,
                    epochs: 9
                }
            ]
        );
        assert_eq!(
            rungs(4, 6, 2),
            vec![
                Rung {
                    trials: 4,
                    epochs: 2
                },
                Rung {
                    trials: 2,
                    epochs: 3
                },
                Rung {
                    trials: 1,
                    epochs: 6
                }
            ]
        );
        assert_eq!(
            rungs(1, 5, 3),
            vec![Rung {
                trials: 1,
                epochs: 5
            }]
        );
    }

    #[test]
    fn grid_and_random_plans() {
        let space = SearchSpace {
            units: Some(Param::Choices(vec![64.0, 128.0])),
            dropout: Some(Param::Choices(vec![0.3, 0.5])),
            ..Default::default()
        };
        let grid = plan(&space, Strategy::Grid, 10, 0).unwrap();
        assert_eq!(grid.len(), 4);
        assert_eq!((grid[1].units, grid[1].dropout), (Some(64), Some(0.5)));
        let ranged = SearchSpace {
            learning_rate: Some(Param::Range {
                min: 1e-4,
                max: 1e-1,
            }),
            ..space
        };
        assert_eq!(
            plan(&ranged, Strategy::Grid, 10, 0).unwrap_err().field,
            "search_space.learning_rate"
        );
        let a = plan(&ranged, Strategy::Random, 5, 7).unwrap();
        assert_eq!(a, plan(&ranged, Strategy::Random, 5, 7).unwrap());
        assert_ne!(a, plan(&ranged, Strategy::Random, 5, 8).unwrap());
        assert!(a
            .iter()
            .all(|h| (1e-4..=1e-1).contains(&h.learning_rate.unwrap())));
    }
}
