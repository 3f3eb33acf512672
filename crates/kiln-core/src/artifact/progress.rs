//! progress.json: the running stage's progress (epoch, metrics so far), written
//! atomically after every step so readers such as a UI poll it without any lock.

use serde::{Deserialize, Serialize};

/// progress.json, in a run folder while its stages run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunProgress {
    /// The stage running now (empty between stages).
    pub stage: String,
    /// The phase it is in, e.g. `epoch 3/10`.
    pub phase: String,
    /// Units done in the phase (batches) and their total (0 when unknown).
    pub done: u64,
    /// See `done`.
    pub total: u64,
    /// Every completed epoch of the running training stage, oldest first.
    pub epochs: Vec<EpochPoint>,
    /// Seconds since the Unix epoch of this update.
    pub updated: u64,
}

/// One completed epoch as progress reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochPoint {
    /// 1-based epoch.
    pub epoch: usize,
    /// Epochs configured.
    pub of: usize,
    /// Mean training loss.
    pub train_loss: f64,
    /// Validation loss.
    pub valid_loss: f64,
    /// The validation metric (accuracy or R²).
    pub valid_metric: f64,
}

impl super::Artifact for RunProgress {
    const KIND: &'static str = "kiln.progress";
    const FILE: &'static str = "progress.json";
}
