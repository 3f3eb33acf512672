//! history.json (and history.csv): one record per training epoch and the epoch kept.

use serde::{Deserialize, Serialize};

/// One line of history.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss over the epoch's batches.
    pub train_loss: f64,
    /// The history's metric over the epoch's training batches (with dropout active).
    pub train_metric: f64,
    /// Validation loss: cross-entropy (classification) or MSE in target units
    /// (regression).
    pub valid_loss: f64,
    /// The history's metric on the validation split.
    pub valid_metric: f64,
}

/// history.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// What `train_metric` / `valid_metric` hold: `accuracy` (classification) or `r2`
    /// (regression).
    pub metric: String,
    /// One record per epoch run.
    pub epochs: Vec<EpochRecord>,
    /// Epoch whose weights were kept.
    pub best_epoch: usize,
    /// What chose `best_epoch` (histories written before this field: `metric`).
    #[serde(default = "KeptBy::older")]
    pub kept_by: KeptBy,
    /// True when early stopping ended training before `epochs`.
    pub stopped_early: bool,
    /// How the train split was read when it was streamed from its shards (absent: it
    /// was held in memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streamed: Option<Streamed>,
}

/// A train split streamed from its shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Streamed {
    /// Shards of the train split.
    pub shards: usize,
    /// Shards shuffled together.
    pub window: usize,
}

/// What chose the kept epoch among those run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeptBy {
    /// The lowest validation loss (ties: the earlier epoch).
    Loss,
    /// The highest validation metric (accuracy or R²); of epochs with the same metric,
    /// the one with the lower validation loss — on a small validation split accuracy
    /// saturates within a few epochs, and the first epoch to reach it is under-trained
    /// while the loss keeps telling epochs apart.
    Metric,
}

impl KeptBy {
    fn older() -> KeptBy {
        KeptBy::Metric
    }

    /// In words, for summaries: `lowest validation loss`, `highest validation accuracy`.
    pub fn describe(self, metric: &str) -> String {
        match self {
            KeptBy::Loss => "lowest validation loss".into(),
            KeptBy::Metric => format!("highest validation {metric}, ties by loss"),
        }
    }
}

impl super::Artifact for History {
    const KIND: &'static str = "kiln.history";
    const FILE: &'static str = "history.json";
}

impl History {
    /// The record of the kept epoch, if it was run.
    pub fn best(&self) -> Option<&EpochRecord> {
        self.epochs.iter().find(|e| e.epoch == self.best_epoch)
    }

    /// history.csv: one row per epoch, `epoch,train_loss,train_<metric>,valid_loss,
    /// valid_<metric>,best` (shortest round-trip decimals, so the values equal
    /// history.json's).
    pub fn to_csv(&self) -> String {
        let m = &self.metric;
        let mut s = format!("epoch,train_loss,train_{m},valid_loss,valid_{m},best\n");
        for e in &self.epochs {
            s += &format!(
                "{},{},{},{},{},{}\n",
                e.epoch,
                e.train_loss,
                e.train_metric,
                e.valid_loss,
                e.valid_metric,
                u8::from(e.epoch == self.best_epoch)
            );
        }
        s
    }
}
