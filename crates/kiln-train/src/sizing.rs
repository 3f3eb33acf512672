//! Training settings sized to the data: the network, batch and epochs `kiln init` writes
//! for a table, and the network a train stage without `model` builds.

use crate::ModelConfig;

/// Training settings sized to the data: what `kiln init` writes, and the network a train
/// stage without `model` builds.
#[derive(Debug, Clone, PartialEq)]
pub struct Sizing {
    /// Hidden layer widths.
    pub hidden: Vec<usize>,
    /// Dropout after each hidden layer.
    pub dropout: f32,
    /// Epochs at most.
    pub epochs: usize,
    /// Rows per step.
    pub batch_size: usize,
    /// Epochs without a better validation score before stopping.
    pub patience: usize,
}

impl Sizing {
    /// Settings for `rows` training rows: small tables get a small network, small
    /// batches and many epochs (enough optimizer steps to converge: at least about
    /// 3,000), large ones a wider network, larger batches and fewer epochs.
    pub fn for_rows(rows: usize) -> Sizing {
        let (hidden, dropout, batch_size) = match rows {
            0..1_000 => (vec![64], 0.1, 32),
            1_000..10_000 => (vec![128, 64], 0.1, 64),
            10_000..100_000 => (vec![256, 128], 0.1, 128),
            _ => (vec![256, 128], 0.0, 256),
        };
        let steps_per_epoch = rows.div_ceil(batch_size).max(1);
        let epochs = (3_000usize.div_ceil(steps_per_epoch)).clamp(20, 300);
        Sizing {
            hidden,
            dropout,
            epochs,
            batch_size,
            patience: (epochs / 10).clamp(5, 20),
        }
    }

    /// The network: these hidden widths and dropout, ReLU, no norm, an embedding of every
    /// ordinal-encoded column (the default).
    pub fn model(&self) -> ModelConfig {
        ModelConfig {
            hidden: self.hidden.clone(),
            dropout: self.dropout,
            ..ModelConfig::default()
        }
    }
}
