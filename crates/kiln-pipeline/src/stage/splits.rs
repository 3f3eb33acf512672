//! How the stages after a preprocess stage hold its splits: in memory, or streamed from
//! the shards when the train stage behind their model streams (`data` of a train stage:
//! above `memory_mb` of train and valid features, or `load = "stream"`).

use super::{DatasetArtifact, RunCx, StageError, train_of};
use crate::file::StageConfig;
use kiln_core::Schema;
use kiln_core::dataset::SplitData;
use kiln_core::dataset::shards::{Shards, Split};

/// A dataset artifact as a stage reads it.
pub(crate) enum Splits {
    /// Read whole (shared by the run's stages).
    Memory(DatasetArtifact),
    /// Opened; each split is read shard by shard as a stage goes.
    Shards(Box<Streaming>),
}

/// The opened shards of a streamed dataset.
pub(crate) struct Streaming {
    schema: Schema,
    shards: Shards,
    /// Shards an epoch (of fine-tuning) shuffles together: the train stage's
    /// `data.window`.
    window: usize,
}

impl Splits {
    /// The dataset's schema.
    pub(crate) fn schema(&self) -> &Schema {
        match self {
            Splits::Memory(a) => &a.0,
            Splits::Shards(s) => &s.schema,
        }
    }

    /// One split.
    pub(crate) fn split(&self, split: Split) -> SplitData<'_> {
        match self {
            Splits::Memory(a) => SplitData::Memory(&a.1[split as usize]),
            Splits::Shards(s) => SplitData::Shards(&s.shards, split),
        }
    }

    /// One split as training reads it (a streamed one after its pass of figures).
    pub(crate) fn data(&self, split: Split) -> Result<kiln_train::Data<'_>, StageError> {
        Ok(match self {
            Splits::Memory(a) => kiln_train::Data::Memory(&a.1[split as usize]),
            Splits::Shards(s) => {
                kiln_train::Data::Shards(kiln_train::Streamed::open(&s.shards, split, s.window)?)
            }
        })
    }
}

/// Bytes of features in `rows` rows (train and valid) of `width` features: what
/// `data.memory_mb` bounds.
pub(crate) fn feature_bytes(rows: usize, width: usize) -> u64 {
    4 * rows as u64 * width as u64
}

impl RunCx<'_> {
    /// The splits of preprocess stage `pre` for a stage that uses the model of stage
    /// `model`: streamed when the train stage behind that model streams them.
    pub(crate) fn splits(&mut self, pre: &str, model: &str) -> Result<Splits, StageError> {
        let data = match train_of(self.pipeline, model).map(|t| &t.config) {
            Some(StageConfig::Train(c)) => c.data.clone(),
            _ => kiln_train::DataConfig::default(),
        };
        let shards = Shards::open(self.dir(pre)?)?;
        let m = &shards.manifest;
        if !data.streams(feature_bytes(
            m.train.rows + m.valid.rows,
            m.feature_names.len(),
        )) {
            return Ok(Splits::Memory(self.dataset(pre)?));
        }
        let schema: Schema = kiln_core::read_json(&self.dir(pre)?.join("schema.json"))?;
        tracing::info!(
            stage = %self.def.id,
            "streaming the splits from their shards"
        );
        Ok(Splits::Shards(Box::new(Streaming {
            schema,
            shards,
            window: data.window,
        })))
    }
}
