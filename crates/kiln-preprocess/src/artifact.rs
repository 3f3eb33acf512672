//! The dataset artifact a preprocess stage leaves: [`Output`] (the splits, schema and
//! profile in memory) written as Parquet shards with their manifest, schema.json and
//! profile.json, and [`read_artifact`], which reads it back.

use crate::error::{PreprocessError, Result};
use kiln_core::artifact::profile::{DroppedRows, Profile};
use kiln_core::dataset::shards;
use kiln_core::{Dataset, Schema};
use std::path::Path;

use crate::AugmentCounts;

/// What one run produced.
#[derive(Debug, Clone)]
pub struct Output {
    /// The schema written to schema.json.
    pub schema: Schema,
    /// Rows in train, valid, test.
    pub rows: [usize; 3],
    /// Rows removed before the split.
    pub dropped: DroppedRows,
    /// Rows the augmentation added to the train split.
    pub augmented: AugmentCounts,
    /// The train, valid and test splits as written (what [`read_artifact`] reads back),
    /// for a caller that goes on in the same process.
    pub splits: [Dataset; 3],
    /// The data profile (profile.json).
    pub profile: Profile,
    /// Rows per shard of the written splits.
    pub shard_rows: usize,
}

impl Output {
    /// Writes the dataset artifact into `out_dir`: the splits as Parquet shards of
    /// [`Output::shard_rows`] rows with `manifest.json`, `schema.json` and
    /// `profile.json`.
    pub fn write(&self, out_dir: &Path) -> Result<()> {
        std::fs::create_dir_all(out_dir).map_err(|source| PreprocessError::Io {
            path: out_dir.to_path_buf(),
            source,
        })?;
        let [train, valid, test] = &self.splits;
        let _span = tracing::info_span!("write").entered();
        let m = shards::write(out_dir, [train, valid, test], self.shard_rows)?;
        kiln_core::artifact::save(out_dir, &self.profile)?;
        kiln_core::write_json(&out_dir.join("schema.json"), &self.schema)?;
        tracing::info!(
            train = train.n_rows(),
            valid = valid.n_rows(),
            test = test.n_rows(),
            shards = m.train.shards.len() + m.valid.shards.len() + m.test.shards.len(),
            "split written"
        );
        Ok(())
    }
}

/// Reads the dataset artifact written by [`crate::run`]: schema plus the three splits (every
/// shard checked against its content hash in manifest.json).
pub fn read_artifact(dir: &Path) -> Result<(Schema, [Dataset; 3])> {
    let schema: Schema = kiln_core::read_json(&dir.join("schema.json"))?;
    let s = shards::Shards::open(dir)?;
    let read = |split| s.split(split);
    Ok((
        schema,
        [
            read(shards::Split::Train)?,
            read(shards::Split::Valid)?,
            read(shards::Split::Test)?,
        ],
    ))
}
