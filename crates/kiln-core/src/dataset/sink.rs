//! Writing the sharded dataset artifact row chunk by row chunk: [`ShardSink`] holds at
//! most one shard's rows per split and writes each shard as soon as it is full, so a
//! dataset of any size is written in bounded memory.

use super::Dataset;
use super::shards::{self, Manifest, Shard, Split, SplitShards, TargetKind};
use crate::artifact;
use crate::error::{CoreError, Result};
use std::path::{Path, PathBuf};

/// A sharded dataset being written: rows go in with [`ShardSink::push`], split by split,
/// and [`ShardSink::finish`] writes the last shards and manifest.json. The shards are the
/// ones [`shards::write`] writes for the same rows (the same files, names and manifest).
#[derive(Debug)]
pub struct ShardSink {
    dir: PathBuf,
    shard_rows: usize,
    /// Per split: the rows not written yet (fewer than a shard).
    pending: [Dataset; 3],
    /// Per split: the shards written.
    written: [SplitShards; 3],
}

impl ShardSink {
    /// A sink writing into `dir` shards of at most `shard_rows` rows whose columns are
    /// `feature_names` and `target`.
    pub fn new(dir: &Path, feature_names: &[String], target: &str, shard_rows: usize) -> Self {
        let empty = Dataset {
            feature_names: feature_names.to_vec(),
            target: target.to_string(),
            ..Default::default()
        };
        ShardSink {
            dir: dir.to_path_buf(),
            shard_rows: shard_rows.max(1),
            pending: [empty.clone(), empty.clone(), empty],
            written: Default::default(),
        }
    }

    /// Adds `rows` (the sink's columns) to the end of `split`, writing every shard that
    /// fills up.
    pub fn push(&mut self, split: Split, rows: &Dataset) -> Result<()> {
        let k = split as usize;
        if rows.feature_names != self.pending[k].feature_names {
            return Err(CoreError::Invalid(
                "rows pushed into a shard sink must have its columns".into(),
            ));
        }
        rows.validate()?;
        let w = rows.n_features();
        let mut start = 0;
        while start < rows.n_rows() {
            let room = self.shard_rows - self.pending[k].n_rows();
            let end = (start + room).min(rows.n_rows());
            let p = &mut self.pending[k];
            p.features
                .extend_from_slice(&rows.features[start * w..end * w]);
            if !rows.labels.is_empty() {
                p.labels.extend_from_slice(&rows.labels[start..end]);
            }
            if !rows.values.is_empty() {
                p.values.extend_from_slice(&rows.values[start..end]);
            }
            start = end;
            if self.pending[k].n_rows() == self.shard_rows {
                self.flush(split)?;
            }
        }
        Ok(())
    }

    /// Rows pushed into `split` so far.
    pub fn rows(&self, split: Split) -> usize {
        let k = split as usize;
        self.written[k].rows + self.pending[k].n_rows()
    }

    /// Writes the pending rows of `split` as its next shard.
    fn flush(&mut self, split: Split) -> Result<()> {
        let k = split as usize;
        let p = &mut self.pending[k];
        let n = p.n_rows();
        if n == 0 {
            return Ok(());
        }
        p.validate()?;
        let index = self.written[k].shards.len();
        let shard: Shard = shards::write_shard(&self.dir, split, p, index, 0, n)?;
        p.features.clear();
        p.labels.clear();
        p.values.clear();
        self.written[k].rows += n;
        self.written[k].shards.push(shard);
        Ok(())
    }

    /// Writes the last shard of every split and manifest.json (`target_kind` says what
    /// the target column holds), and returns the manifest.
    pub fn finish(mut self, target_kind: TargetKind) -> Result<Manifest> {
        for split in Split::ALL {
            self.flush(split)?;
        }
        let [train, valid, test] = self.written;
        let [first, ..] = self.pending;
        let manifest = Manifest {
            feature_names: first.feature_names,
            target: first.target,
            target_kind,
            train,
            valid,
            test,
        };
        artifact::save(&self.dir, &manifest)?;
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(range: std::ops::Range<u32>) -> Dataset {
        Dataset {
            feature_names: vec!["a".into(), "b".into()],
            target: "y".into(),
            features: range
                .clone()
                .flat_map(|i| [i as f32, -(i as f32)])
                .collect(),
            labels: range.map(|i| i % 3).collect(),
            values: Vec::new(),
        }
    }

    /// Rows pushed in uneven pieces give the very shards and manifest that writing the
    /// whole splits at once gives.
    #[test]
    fn pushed_rows_write_what_whole_splits_write() {
        let base = std::env::temp_dir().join(format!("kiln-sink-{}", std::process::id()));
        let (a, b) = (base.join("sink"), base.join("whole"));
        for d in [&a, &b] {
            std::fs::create_dir_all(d).unwrap();
        }
        let (train, valid, test) = (rows(0..23), rows(100..107), rows(200..201));
        let mut sink = ShardSink::new(&a, &train.feature_names, "y", 5);
        for (split, ds) in Split::ALL.into_iter().zip([&train, &valid, &test]) {
            // pieces of 3, 1, 4, … rows
            let mut start = 0;
            for step in [3usize, 1, 4, 1, 5, 9, 2, 6].into_iter().cycle() {
                if start >= ds.n_rows() {
                    break;
                }
                let end = (start + step).min(ds.n_rows());
                let mut piece = ds.head(end);
                piece.features.drain(..start * 2);
                piece.labels.drain(..start);
                sink.push(split, &piece).unwrap();
                start = end;
            }
            assert_eq!(sink.rows(split), ds.n_rows());
        }
        let streamed = sink.finish(TargetKind::ClassIndex).unwrap();
        let whole = shards::write(&b, [&train, &valid, &test], 5).unwrap();
        assert_eq!(streamed, whole);
        assert_eq!(streamed.train.shards.len(), 5);
        assert_eq!(streamed.train.shards[4].rows, 3);
        let back = shards::read_split(&a, Split::Train).unwrap();
        assert_eq!(back, train);
        std::fs::remove_dir_all(&base).ok();
    }
}
