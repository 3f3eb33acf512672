//! The `data` table of a train stage: whether the splits are held in memory or streamed
//! from their shards, and how many shards an epoch shuffles together.

use serde::{Deserialize, Serialize};

/// How training reads the dataset's splits (the `data` table of a train stage).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// `auto` (default): in memory while the train and valid features take at most
    /// `memory_mb`, streamed from the shards above that; `memory`; `stream`.
    #[serde(default)]
    pub load: Load,
    /// MiB of train + valid features that `auto` holds in memory at most (default 1024).
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u64,
    /// Shards shuffled together when streaming (default 4; each shard holds at most
    /// 64 MiB of features unless the preprocess stage's `shard_rows` says otherwise).
    #[serde(default = "default_window")]
    pub window: usize,
}

/// Where training holds the splits.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Load {
    /// In memory up to `memory_mb` of features, streamed above.
    #[default]
    Auto,
    /// Every row in memory; each epoch shuffles the whole train split.
    Memory,
    /// Streamed from the shards: each epoch reads the shards in a seeded order and
    /// shuffles the rows of `window` shards at a time.
    Stream,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            load: Load::Auto,
            memory_mb: default_memory_mb(),
            window: default_window(),
        }
    }
}

impl DataConfig {
    pub(crate) fn is_default(&self) -> bool {
        *self == DataConfig::default()
    }

    /// True when splits of `feature_bytes` bytes of features (train and valid) stream.
    pub fn streams(&self, feature_bytes: u64) -> bool {
        match self.load {
            Load::Auto => feature_bytes > self.memory_mb << 20,
            Load::Memory => false,
            Load::Stream => true,
        }
    }
}

fn default_memory_mb() -> u64 {
    1024
}

fn default_window() -> usize {
    4
}
