//! A split as a stage reads it: a [`Dataset`] held in memory, or the split's shards read
//! one at a time, so that a stage's memory does not grow with the split.

use super::Dataset;
use super::shards::{Shards, Split};
use crate::error::Result;
use std::borrow::Cow;

/// One split of a dataset artifact, whole or by shards.
#[derive(Clone, Copy)]
pub enum SplitData<'a> {
    /// Every row in memory.
    Memory(&'a Dataset),
    /// The split's shards in `Shards`, read in row order when asked.
    Shards(&'a Shards, Split),
}

impl<'a> SplitData<'a> {
    /// Rows in the split.
    pub fn n_rows(&self) -> usize {
        match self {
            SplitData::Memory(d) => d.n_rows(),
            SplitData::Shards(s, split) => s.manifest.split(*split).rows,
        }
    }

    /// The feature columns.
    pub fn feature_names(&self) -> &[String] {
        match self {
            SplitData::Memory(d) => &d.feature_names,
            SplitData::Shards(s, _) => &s.manifest.feature_names,
        }
    }

    /// Feature columns per row.
    pub fn n_features(&self) -> usize {
        self.feature_names().len()
    }

    /// True for regression values, false for class labels.
    pub fn is_regression(&self) -> bool {
        match self {
            SplitData::Memory(d) => d.is_regression(),
            SplitData::Shards(s, _) => s.manifest.target_kind == super::shards::TargetKind::Value,
        }
    }

    /// Calls `f` with the split's parts in row order (the whole split, or shard by shard,
    /// each checked against its hash) and the index of each part's first row.
    pub fn for_each_part<E: From<crate::CoreError>>(
        &self,
        f: &mut dyn FnMut(&Dataset, usize) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        match self {
            SplitData::Memory(d) => f(d, 0),
            SplitData::Shards(s, split) => {
                let mut first = 0;
                for shard in &s.manifest.split(*split).shards {
                    let d = s.shard(shard)?;
                    f(&d, first)?;
                    first += d.n_rows();
                }
                Ok(())
            }
        }
    }

    /// The first `n` rows (all of them when the split is shorter); streamed, only the
    /// shards that hold them are read.
    pub fn head(&self, n: usize) -> Result<Cow<'a, Dataset>> {
        let s = match self {
            SplitData::Memory(d) if d.n_rows() <= n => return Ok(Cow::Borrowed(*d)),
            SplitData::Memory(d) => return Ok(Cow::Owned(d.head(n))),
            SplitData::Shards(s, split) => (s, split),
        };
        let m = &s.0.manifest;
        let mut out = Dataset {
            feature_names: m.feature_names.clone(),
            target: m.target.clone(),
            ..Dataset::default()
        };
        for shard in &m.split(*s.1).shards {
            if out.n_rows() >= n {
                break;
            }
            out.append(&s.0.shard(shard)?.head(n - out.n_rows()));
        }
        Ok(Cow::Owned(out))
    }

    /// The whole split in memory (read and joined when streamed).
    pub fn load(&self) -> Result<Cow<'a, Dataset>> {
        match self {
            SplitData::Memory(d) => Ok(Cow::Borrowed(*d)),
            SplitData::Shards(s, split) => Ok(Cow::Owned(s.split(*split)?)),
        }
    }
}
