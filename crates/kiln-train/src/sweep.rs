//! Hyperparameter search: `sweep = { lr = [1e-3, 3e-3], hidden = [[128, 64], [256, 128]],
//! strategy = "grid" }` (or `strategy = "random", trials = N`) trains every trial into
//! `trials/<k>/`, picks the best by the validation metric (ties: the earlier trial),
//! writes sweep.json and passes the best model on as the stage's own.

use crate::data::Data;
use crate::{Config, ModelConfig, Output, Result, TrainError};
use kiln_core::Progress;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The values to try; an empty list keeps the stage's own value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Sweep {
    /// Learning rates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lr: Vec<f64>,
    /// Batch sizes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub batch_size: Vec<usize>,
    /// Hidden layer widths, e.g. `[[128, 64], [256, 128]]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hidden: Vec<Vec<usize>>,
    /// Dropout probabilities.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dropout: Vec<f32>,
    /// Weight decays.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weight_decay: Vec<f64>,
    /// `grid` (default: every combination) or `random` (`trials` combinations drawn
    /// without replacement, seeded).
    #[serde(default)]
    pub strategy: Strategy,
    /// `random`: how many trials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trials: Option<usize>,
}

/// How a sweep picks its trials.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Every combination.
    #[default]
    Grid,
    /// `trials` combinations drawn without replacement, seeded.
    Random,
}

impl Default for Sweep {
    fn default() -> Self {
        Sweep {
            lr: Vec::new(),
            batch_size: Vec::new(),
            hidden: Vec::new(),
            dropout: Vec::new(),
            weight_decay: Vec::new(),
            strategy: Strategy::Grid,
            trials: None,
        }
    }
}

/// Most trials a sweep may have.
pub const MAX_TRIALS: usize = 256;

pub use kiln_core::artifact::sweep::{SweepResults, Trial};

impl Sweep {
    /// The trial configs, in order: the grid's cartesian product (lr varies slowest), or a
    /// seeded sample of it for `random`; `base`'s network sized to `train_rows` when it
    /// has no `model`.
    pub fn configs(&self, base: &Config, train_rows: usize) -> Vec<Config> {
        let base_model = base.model_for(train_rows);
        fn or<T: Clone>(v: &[T], d: T) -> Vec<T> {
            if v.is_empty() { vec![d] } else { v.to_vec() }
        }
        let mut all = Vec::new();
        for lr in or(&self.lr, base.optimizer.lr) {
            for bs in or(&self.batch_size, base.batch_size) {
                for h in or(&self.hidden, base_model.hidden.clone()) {
                    for d in or(&self.dropout, base_model.dropout) {
                        for wd in or(&self.weight_decay, base.optimizer.weight_decay) {
                            let mut c = base.clone();
                            c.sweep = None;
                            c.optimizer.lr = lr;
                            c.batch_size = bs;
                            c.model = Some(ModelConfig {
                                hidden: h.clone(),
                                dropout: d,
                                ..base_model.clone()
                            });
                            c.optimizer.weight_decay = wd;
                            all.push(c);
                        }
                    }
                }
            }
        }
        if self.strategy == Strategy::Random {
            let mut rng = ChaCha8Rng::seed_from_u64(base.seed ^ 0x005e_4ee9);
            all.shuffle(&mut rng);
            all.truncate(self.trials.unwrap_or(all.len()));
        }
        all
    }

    /// Problems, as (key path, message) pairs.
    pub fn problems(&self, base: &Config) -> Vec<(String, String)> {
        let mut p = Vec::new();
        let mut bad = |k: &str, m: String| p.push((format!("sweep.{k}"), m));
        match (self.strategy, self.trials) {
            (Strategy::Random, None | Some(0)) => bad(
                "trials",
                "strategy = \"random\" needs `trials` (at least 1)".into(),
            ),
            (Strategy::Grid, Some(_)) => bad(
                "trials",
                "`trials` applies to strategy = \"random\"; a grid runs every combination".into(),
            ),
            _ => {}
        }
        if self.lr.iter().any(|&v| !(v > 0.0 && v.is_finite())) {
            bad("lr", "every learning rate must be positive".into());
        }
        if self.batch_size.contains(&0) {
            bad("batch_size", "every batch size must be at least 1".into());
        }
        if self.hidden.iter().any(|h| h.contains(&0)) {
            bad("hidden", "hidden widths must be at least 1".into());
        }
        if self.dropout.iter().any(|d| !(0.0..1.0).contains(d)) {
            bad("dropout", "every dropout must be in [0, 1)".into());
        }
        if self.weight_decay.iter().any(|&w| w < 0.0) {
            bad("weight_decay", "weight decays must not be negative".into());
        }
        let n = [
            self.lr.len(),
            self.batch_size.len(),
            self.hidden.len(),
            self.dropout.len(),
            self.weight_decay.len(),
        ]
        .iter()
        .map(|&l| l.max(1))
        .product::<usize>();
        if n > MAX_TRIALS {
            bad(
                "lr",
                format!(
                    "the grid has {n} combinations; at most {MAX_TRIALS} (use strategy = \"random\" with `trials`)"
                ),
            );
        }
        if n == 1 && self.strategy == Strategy::Grid {
            bad(
                "lr",
                "the sweep has one combination; give at least one list with two values".into(),
            );
        }
        let _ = base;
        p
    }
}

/// Written into a trial's folder when it completed: its config.
const TRIAL_FILE: &str = "trial.json";

/// The output of a trial that completed earlier with the same config, if any.
fn finished(dir: &Path, c: &Config) -> Option<Output> {
    let saved: Config = kiln_core::read_json(&dir.join(TRIAL_FILE)).ok()?;
    if &saved != c {
        return None;
    }
    let model = kiln_core::NativeModel::load(dir).ok()?;
    let history: crate::History = kiln_core::artifact::load(dir).ok()?;
    let best = history.best()?.valid_metric;
    tracing::info!(dir = %dir.display(), "trial already complete");
    Some(Output {
        model,
        history,
        best_valid_metric: best,
        samples_per_sec: 0.0,
        resumed_from_epoch: None,
        schema: None,
    })
}

/// Runs every trial and keeps the best (see the module docs).
pub(crate) fn run_sweep(
    sweep: &Sweep,
    config: &Config,
    train: &Data<'_>,
    valid: &Data<'_>,
    n_classes: usize,
    out_dir: &Path,
    progress: &dyn Progress,
) -> Result<Output> {
    let configs = sweep.configs(config, train.n_rows());
    let mut trials = Vec::new();
    let mut outputs = Vec::new();
    for (k, c) in configs.iter().enumerate() {
        let _span = tracing::info_span!("trial", k).entered();
        tracing::info!(
            trial = k,
            lr = c.optimizer.lr,
            batch_size = c.batch_size,
            hidden = ?c.model_for(train.n_rows()).hidden,
            "sweep trial"
        );
        let dir = out_dir.join(format!("trials/{k}"));
        let o = match finished(&dir, c) {
            // a rerun after an interruption keeps the trials that completed
            Some(o) => o,
            None => {
                let o = crate::run_with(c, train, valid, n_classes, &dir, progress, None)?;
                kiln_core::write_json(&dir.join(TRIAL_FILE), c)?;
                o
            }
        };
        trials.push(Trial {
            trial: k,
            lr: c.optimizer.lr,
            batch_size: c.batch_size,
            hidden: c.model_for(train.n_rows()).hidden,
            dropout: c.model_for(train.n_rows()).dropout,
            weight_decay: c.optimizer.weight_decay,
            best_valid_metric: o.best_valid_metric,
            best_epoch: o.history.best_epoch,
            epochs_run: o.history.epochs.len(),
            chosen: false,
        });
        outputs.push(o);
    }
    let best = trials
        .iter()
        .enumerate()
        .fold(None::<usize>, |b, (i, t)| match b {
            Some(j) if trials[j].best_valid_metric >= t.best_valid_metric => Some(j),
            _ => Some(i),
        })
        .ok_or_else(|| TrainError::Config("the sweep has no trials".into()))?;
    trials[best].chosen = true;
    let from = out_dir.join(format!("trials/{best}"));
    for f in [
        "spec.json",
        "weights.safetensors",
        "history.json",
        "history.csv",
    ] {
        let bytes =
            std::fs::read(from.join(f)).map_err(|e| kiln_core::CoreError::io(from.join(f), e))?;
        kiln_core::atomic_write(&out_dir.join(f), &bytes)?;
    }
    kiln_core::artifact::save(out_dir, &SweepResults { trials })?;
    tracing::info!(best, "sweep done");
    Ok(outputs.swap_remove(best))
}
