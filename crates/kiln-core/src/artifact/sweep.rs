//! sweep.json: every trial of a training stage's hyperparameter sweep, and which was kept.

use serde::{Deserialize, Serialize};

/// sweep.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepResults {
    /// One entry per trial, in order.
    pub trials: Vec<Trial>,
}

impl super::Artifact for SweepResults {
    const KIND: &'static str = "kiln.sweep";
    const FILE: &'static str = "sweep.json";
}

/// One trial's settings and result (sweep.json).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    /// Index, also the folder `trials/<trial>`.
    pub trial: usize,
    /// Learning rate.
    pub lr: f64,
    /// Batch size.
    pub batch_size: usize,
    /// Hidden widths.
    pub hidden: Vec<usize>,
    /// Dropout.
    pub dropout: f32,
    /// Weight decay.
    pub weight_decay: f64,
    /// Validation metric of its kept epoch (accuracy, or R² for regression).
    pub best_valid_metric: f64,
    /// Its kept epoch.
    pub best_epoch: usize,
    /// Epochs it ran.
    pub epochs_run: usize,
    /// Whether it was chosen.
    pub chosen: bool,
}
