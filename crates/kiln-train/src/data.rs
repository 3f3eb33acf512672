//! Where training reads a split: a [`Dataset`] held in memory, or the split's Parquet
//! shards streamed through a prefetching loader (a seeded shard order per epoch, rows
//! shuffled within a window of shards), both cut into the same kind of batches.

use crate::{Result, TrainError, argmax};
use kiln_core::dataset::shards::{Shard, Shards, Split, TargetKind};
use kiln_core::dataset::{Moments, SplitData};
use kiln_core::{Dataset, ModelSpec, NativeModel, Predictor, Task, TensorStore};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use std::borrow::Cow;

/// A split as training reads it.
pub enum Data<'a> {
    /// Every row in memory: each epoch shuffles the whole split.
    Memory(&'a Dataset),
    /// The split's shards, read as the epoch goes ([`Streamed`]).
    Shards(Streamed<'a>),
}

/// A split streamed from its shards: at most two windows of shards are decoded at a
/// time (the one being trained on and the next, read on another thread).
pub struct Streamed<'a> {
    shards: &'a Shards,
    split: Split,
    window: usize,
    /// The first rows (at most [`crate::BATCH_NORM_ROWS`]), for batch norms.
    head: Dataset,
    /// What one pass over the shards found (see [`Streamed::open`]).
    stats: SplitStats,
}

/// Per-split figures gathered in one pass before training.
#[derive(Debug, Clone, Default)]
struct SplitStats {
    /// The largest class index (classification).
    label_max: Option<u32>,
    /// Count, mean and sum of squared deviations of the regression values (merged shard
    /// by shard, Chan et al.).
    values: Moments,
}

impl<'a> Streamed<'a> {
    /// Opens `split` of `shards`, shuffling `window` shards together (at least 1). Reads
    /// every shard once (each checked against its hash): the class range, the target's
    /// mean and spread, and the first rows.
    pub fn open(shards: &'a Shards, split: Split, window: usize) -> Result<Streamed<'a>> {
        let _span = tracing::info_span!("scan shards", split = split.name()).entered();
        let m = &shards.manifest;
        let mut head = Dataset {
            feature_names: m.feature_names.clone(),
            target: m.target.clone(),
            ..Dataset::default()
        };
        let mut stats = SplitStats::default();
        let want = crate::BATCH_NORM_ROWS;
        SplitData::Shards(shards, split).for_each_part(&mut |ds, _| -> Result<()> {
            if let Some(&l) = ds.labels.iter().max() {
                stats.label_max = Some(stats.label_max.map_or(l, |m| m.max(l)));
            }
            stats.values = stats
                .values
                .merge(Moments::of(ds.values.iter().map(|&v| f64::from(v))));
            head.append(&ds.head(want.saturating_sub(head.n_rows())));
            Ok(())
        })?;
        Ok(Streamed {
            shards,
            split,
            window: window.max(1),
            head,
            stats,
        })
    }

    fn shard_list(&self) -> &[Shard] {
        &self.shards.manifest.split(self.split).shards
    }

    /// The shards at `idx`, read and joined in that order.
    fn read_window(&self, idx: &[usize]) -> Result<Dataset> {
        let list = self.shard_list();
        let m = &self.shards.manifest;
        // sized once: growing by doubling would hold up to three windows at a time
        let rows: usize = idx.iter().map(|&i| list[i].rows).sum();
        let mut all = Dataset {
            feature_names: m.feature_names.clone(),
            target: m.target.clone(),
            features: Vec::with_capacity(rows * m.feature_names.len()),
            ..Dataset::default()
        };
        match m.target_kind {
            TargetKind::ClassIndex => all.labels.reserve_exact(rows),
            TargetKind::Value => all.values.reserve_exact(rows),
        }
        for &i in idx {
            all.append(&read(self.shards, &list[i])?);
        }
        Ok(all)
    }
}

fn read(shards: &Shards, shard: &Shard) -> Result<Dataset> {
    shards.shard(shard).map_err(TrainError::from)
}

/// One batch: `rows` rows of features, with their class indices or regression values.
pub(crate) struct Batch<'b> {
    pub(crate) x: &'b [f32],
    pub(crate) labels: &'b [u32],
    pub(crate) values: &'b [f32],
    pub(crate) rows: usize,
}

/// Rows gathered into a batch, one at a time.
struct BatchBuf {
    x: Vec<f32>,
    labels: Vec<u32>,
    values: Vec<f32>,
    rows: usize,
}

impl BatchBuf {
    fn push(&mut self, part: &Dataset, r: usize) {
        self.x.extend_from_slice(part.row(r));
        if let Some(&l) = part.labels.get(r) {
            self.labels.push(l);
        }
        if let Some(&v) = part.values.get(r) {
            self.values.push(v);
        }
        self.rows += 1;
    }

    fn emit(
        &mut self,
        rng: &mut ChaCha8Rng,
        f: &mut dyn FnMut(Batch<'_>, &mut ChaCha8Rng) -> Result<()>,
    ) -> Result<()> {
        let batch = Batch {
            x: &self.x,
            labels: &self.labels,
            values: &self.values,
            rows: self.rows,
        };
        let r = f(batch, rng);
        self.x.clear();
        self.labels.clear();
        self.values.clear();
        self.rows = 0;
        r
    }
}

/// Cuts `parts` (each with the order its rows are taken in) into batches of `bs` rows
/// and hands each to `f` with `rng`; a batch may span two parts, and the last one holds
/// what is left.
fn batches<'p>(
    parts: impl Iterator<Item = Result<(Cow<'p, Dataset>, Vec<usize>)>>,
    bs: usize,
    rng: &mut ChaCha8Rng,
    f: &mut dyn FnMut(Batch<'_>, &mut ChaCha8Rng) -> Result<()>,
) -> Result<()> {
    let mut buf = BatchBuf {
        x: Vec::new(),
        labels: Vec::new(),
        values: Vec::new(),
        rows: 0,
    };
    for part in parts {
        let (part, order) = part?;
        for r in order {
            buf.push(&part, r);
            if buf.rows == bs {
                buf.emit(rng, f)?;
            }
        }
    }
    if buf.rows > 0 {
        buf.emit(rng, f)?;
    }
    Ok(())
}

/// `0..n` shuffled with `rng`.
fn shuffled(n: usize, rng: &mut ChaCha8Rng) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    order
}

impl Data<'_> {
    /// Rows in the split.
    pub fn n_rows(&self) -> usize {
        match self {
            Data::Memory(d) => d.n_rows(),
            Data::Shards(s) => s.shards.manifest.split(s.split).rows,
        }
    }

    /// The feature columns.
    pub fn feature_names(&self) -> &[String] {
        match self {
            Data::Memory(d) => &d.feature_names,
            Data::Shards(s) => &s.shards.manifest.feature_names,
        }
    }

    /// How the split is streamed, for history.json (`None` in memory).
    pub(crate) fn streamed(&self) -> Option<kiln_core::artifact::history::Streamed> {
        match self {
            Data::Memory(_) => None,
            Data::Shards(s) => Some(kiln_core::artifact::history::Streamed {
                shards: s.shard_list().len(),
                window: s.window,
            }),
        }
    }

    /// Feature columns per row.
    pub fn n_features(&self) -> usize {
        self.feature_names().len()
    }

    /// True for regression values, false for class labels.
    pub fn is_regression(&self) -> bool {
        match self {
            Data::Memory(d) => d.is_regression(),
            Data::Shards(s) => s.shards.manifest.target_kind == TargetKind::Value,
        }
    }

    /// The largest class index, if any row has one.
    pub(crate) fn label_max(&self) -> Option<u32> {
        match self {
            Data::Memory(d) => d.labels.iter().copied().max(),
            Data::Shards(s) => s.stats.label_max,
        }
    }

    /// Regression values in the split.
    pub(crate) fn n_values(&self) -> usize {
        match self {
            Data::Memory(d) => d.values.len(),
            Data::Shards(s) => s.stats.values.n,
        }
    }

    /// Mean and standard deviation of the regression values (1 when they are constant).
    pub(crate) fn target_scale(&self) -> (f32, f32) {
        match self {
            Data::Memory(d) => crate::head::target_scale(&d.values),
            Data::Shards(_) => {
                let (mean, var) = self.target_moments();
                let std = if var > 0.0 { var.sqrt() } else { 1.0 };
                (mean as f32, std as f32)
            }
        }
    }

    /// Mean and population variance of the regression values, in f64.
    pub(crate) fn target_moments(&self) -> (f64, f64) {
        let m = match self {
            Data::Memory(d) => Moments::of(d.values.iter().map(|&v| f64::from(v))),
            Data::Shards(s) => s.stats.values,
        };
        (m.mean, m.variance())
    }

    /// The split as the other stages read it.
    pub fn split_data(&self) -> SplitData<'_> {
        match self {
            Data::Memory(d) => SplitData::Memory(d),
            Data::Shards(s) => SplitData::Shards(s.shards, s.split),
        }
    }

    /// The features of the first `n` rows (fewer when the split is shorter; at most
    /// [`crate::BATCH_NORM_ROWS`] when streamed).
    pub(crate) fn head(&self, n: usize) -> &[f32] {
        let d = match self {
            Data::Memory(d) => d,
            Data::Shards(s) => &s.head,
        };
        let rows = n.min(d.n_rows());
        &d.features[..rows * d.n_features()]
    }

    /// Calls `f` with the split's parts in row order (the whole split, or shard by shard)
    /// and the index of each part's first row.
    pub(crate) fn for_each_part(
        &self,
        f: &mut dyn FnMut(&Dataset, usize) -> Result<()>,
    ) -> Result<()> {
        match self {
            Data::Memory(d) => f(d, 0),
            Data::Shards(s) => SplitData::Shards(s.shards, s.split).for_each_part(f),
        }
    }

    /// One epoch's batches of `bs` rows, in the epoch's order, each handed to `f` with
    /// `rng`, the epoch's stream (its dropout masks draw from it). In memory, `rng` first
    /// shuffles the whole split, as it always has. Streamed, the shard order and each
    /// window's rows come from a stream of their own (`seed`, `epoch`): the next window
    /// is read on another thread while this one trains, and the order depends on nothing
    /// but the seed and the epoch.
    pub(crate) fn epoch(
        &self,
        rng: &mut ChaCha8Rng,
        seed: u64,
        epoch: usize,
        bs: usize,
        f: &mut dyn FnMut(Batch<'_>, &mut ChaCha8Rng) -> Result<()>,
    ) -> Result<()> {
        let s = match self {
            Data::Memory(d) => {
                let order = shuffled(d.n_rows(), rng);
                return batches(std::iter::once(Ok((Cow::Borrowed(*d), order))), bs, rng, f);
            }
            Data::Shards(s) => s,
        };
        let mut order_rng = shard_stream(seed, epoch);
        let order = shuffled(s.shard_list().len(), &mut order_rng);
        let windows: Vec<Vec<usize>> = order.chunks(s.window).map(<[usize]>::to_vec).collect();
        std::thread::scope(|scope| {
            // a rendezvous: the reader builds the next window while this one trains,
            // and waits with it until it is taken, so at most two windows are held
            let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Dataset>>(0);
            scope.spawn(move || {
                let _span = tracing::debug_span!("prefetch", epoch).entered();
                for w in &windows {
                    let part = s.read_window(w);
                    let failed = part.is_err();
                    // the trainer stopped (an error of its own): stop reading
                    if tx.send(part).is_err() || failed {
                        break;
                    }
                }
            });
            // `rx` is dropped when this closure returns, early or not, so the reader
            // never waits on a full channel that nobody empties
            let parts = rx.into_iter().map(|p| {
                p.map(|d| {
                    let order = shuffled(d.n_rows(), &mut order_rng);
                    (Cow::Owned(d), order)
                })
            });
            batches(parts, bs, rng, f)
        })
    }

    /// Loss and metric of `weights` on the split (see [`crate::evaluate`]), part by part.
    pub(crate) fn evaluate(&self, spec: &ModelSpec, weights: &TensorStore) -> Result<(f64, f64)> {
        let mean = match self {
            Data::Memory(d) => Moments::of(d.values.iter().map(|&v| f64::from(v))).mean,
            Data::Shards(s) => s.stats.values.mean,
        };
        let mut model = NativeModel::new(spec.clone(), weights.clone())?;
        let mut sums = EvalSums::default();
        self.for_each_part(&mut |d, _| sums.add(&mut model, d, mean))?;
        Ok(sums.finish(spec.task, self.n_rows()))
    }
}

/// The stream of a streamed epoch's shard order and window shuffles (apart from the
/// epoch's own stream, which dropout masks draw from).
fn shard_stream(seed: u64, epoch: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_5eed_5eed_5eed);
    rng.set_stream((1 << 32) | epoch as u64);
    rng
}

/// Sums behind a split's loss and metric, added part by part in row order.
#[derive(Default)]
pub(crate) struct EvalSums {
    loss: f64,
    correct: usize,
    sse: f64,
    sst: f64,
}

impl EvalSums {
    /// Adds `data`'s rows; `mean` is the mean of the whole split's regression values.
    pub(crate) fn add(&mut self, model: &mut NativeModel, data: &Dataset, mean: f64) -> Result<()> {
        let p = model.predict(&data.features, data.n_rows())?;
        if model.spec.task == Task::Regression {
            for (&p, &t) in p.logits.iter().zip(&data.values) {
                self.sse += (f64::from(p) - f64::from(t)).powi(2);
                self.sst += (f64::from(t) - mean).powi(2);
            }
            return Ok(());
        }
        let k = p.n_outputs;
        for (i, row) in p.probabilities.chunks_exact(k).enumerate() {
            let l = data.labels[i] as usize;
            self.loss -= (row[l].max(1e-12) as f64).ln();
            if argmax(row) == l {
                self.correct += 1;
            }
        }
        Ok(())
    }

    /// (loss, metric): cross-entropy and accuracy, or MSE and R² (1 for an exact fit of
    /// a constant target, 0 for any other fit of one).
    pub(crate) fn finish(&self, task: Task, rows: usize) -> (f64, f64) {
        let n = rows.max(1) as f64;
        if task == Task::Regression {
            let r2 = if self.sst > 0.0 {
                1.0 - self.sse / self.sst
            } else if self.sse == 0.0 {
                1.0
            } else {
                0.0
            };
            return (self.sse / n, r2);
        }
        (self.loss / n, self.correct as f64 / n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::dataset::shards;

    /// `n` rows whose first feature is the row's index; labels `i % 3` or values `i / 8`.
    fn rows(n: usize, regression: bool) -> Dataset {
        Dataset {
            feature_names: vec!["id".into(), "x".into()],
            target: "y".into(),
            features: (0..n)
                .flat_map(|i| [i as f32, (i % 7) as f32 * 0.5])
                .collect(),
            labels: if regression {
                vec![]
            } else {
                (0..n).map(|i| (i % 3) as u32).collect()
            },
            values: if regression {
                (0..n).map(|i| i as f32 / 8.0 - 3.0).collect()
            } else {
                vec![]
            },
        }
    }

    fn written(name: &str, train: &Dataset, shard_rows: usize) -> (tempfile::TempDir, Shards) {
        let dir = tempfile::Builder::new().prefix(name).tempdir().unwrap();
        let empty = rows(0, train.is_regression());
        shards::write(
            dir.path(),
            [train, &rows(9, train.is_regression()), &empty],
            shard_rows,
        )
        .unwrap();
        let s = Shards::open(dir.path()).unwrap();
        (dir, s)
    }

    /// The row ids of one epoch, batch by batch.
    fn epoch(d: &Data<'_>, seed: u64, e: usize, bs: usize) -> Vec<Vec<u32>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut out = Vec::new();
        d.epoch(&mut rng, seed, e, bs, &mut |b, _| {
            assert_eq!(b.x.len(), b.rows * 2);
            assert_eq!(b.labels.len(), b.rows);
            let ids: Vec<u32> = b.x.chunks(2).map(|r| r[0] as u32).collect();
            // each row keeps its own label
            for (&id, &l) in ids.iter().zip(b.labels) {
                assert_eq!(l, id % 3);
            }
            out.push(ids);
            Ok(())
        })
        .unwrap();
        out
    }

    /// A streamed epoch visits every row once in batches of the asked size, in an order
    /// that depends only on the seed and the epoch, and shuffles across the shards of a
    /// window.
    #[test]
    fn a_streamed_epoch_visits_every_row_once_in_a_seeded_order() {
        let train = rows(1003, false);
        let (_dir, s) = written("kiln-data-epoch", &train, 50);
        assert_eq!(s.manifest.train.shards.len(), 21);
        let d = Data::Shards(Streamed::open(&s, Split::Train, 4).unwrap());
        assert_eq!(
            (d.n_rows(), d.n_features(), d.label_max()),
            (1003, 2, Some(2))
        );
        let a = epoch(&d, 7, 1, 64);
        assert_eq!(a.len(), 1003_usize.div_ceil(64));
        assert!(a[..a.len() - 1].iter().all(|b| b.len() == 64));
        assert_eq!(a.last().unwrap().len(), 1003 % 64);
        let mut all: Vec<u32> = a.concat();
        all.sort_unstable();
        assert_eq!(all, (0..1003).collect::<Vec<u32>>());
        // the same seed and epoch give the same batches; another epoch or seed another order
        assert_eq!(epoch(&d, 7, 1, 64), a);
        assert_ne!(epoch(&d, 7, 2, 64).concat(), a.concat());
        assert_ne!(epoch(&d, 8, 1, 64).concat(), a.concat());
        // a batch mixes rows of several shards (of 50 rows each) and is not in file order
        let shards_in = |b: &[u32]| {
            let mut s: Vec<u32> = b.iter().map(|i| i / 50).collect();
            s.sort_unstable();
            s.dedup();
            s.len()
        };
        assert!(shards_in(&a[0]) >= 3, "{:?}", a[0]);
        // the first rows are kept for batch norms
        assert_eq!(d.head(3), &[0.0, 0.0, 1.0, 0.5, 2.0, 1.0]);
    }

    /// Streamed, the regression scale and the evaluation equal what memory gives; a
    /// shard changed after opening fails the epoch with its name, without a hang.
    #[test]
    fn streamed_figures_equal_memory_and_a_changed_shard_is_named() {
        let train = rows(777, true);
        let (dir, s) = written("kiln-data-figures", &train, 100);
        let streamed = Data::Shards(Streamed::open(&s, Split::Train, 2).unwrap());
        let memory = Data::Memory(&train);
        let (a, b) = (streamed.target_scale(), memory.target_scale());
        assert!(
            (a.0 - b.0).abs() <= 1e-6 * b.0.abs() && (a.1 - b.1).abs() <= 1e-6 * b.1,
            "{a:?} {b:?}"
        );
        assert_eq!(streamed.n_values(), 777);
        let spec = ModelSpec::mlp(2, &[4], kiln_core::Activation::Relu, Task::Regression, 1);
        let mut weights = TensorStore::default();
        let w: Vec<f32> = (0..8).map(|i| (i as f32 - 3.5) * 0.3).collect();
        weights.insert_f32("layers.0.weight", vec![2, 4], w);
        weights.insert_f32("layers.0.bias", vec![4], vec![0.1, -0.2, 0.3, 0.0]);
        weights.insert_f32("layers.1.weight", vec![4, 1], vec![0.5, -1.0, 0.25, 2.0]);
        weights.insert_f32("layers.1.bias", vec![1], vec![-0.5]);
        let (lm, rm) = memory.evaluate(&spec, &weights).unwrap();
        let (ls, rs) = streamed.evaluate(&spec, &weights).unwrap();
        assert!((lm - ls).abs() <= 1e-9 * lm.abs(), "{lm} {ls}");
        assert!((rm - rs).abs() <= 1e-9 * rm.abs().max(1.0), "{rm} {rs}");

        let shard = dir.path().join(&s.manifest.train.shards[5].file);
        let mut bytes = std::fs::read(&shard).unwrap();
        let k = bytes.len() / 2;
        bytes[k] ^= 1;
        std::fs::write(&shard, &bytes).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let e = streamed
            .epoch(&mut rng, 1, 1, 16, &mut |_, _| Ok(()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("train-00005.parquet") && e.contains("has other content"),
            "{e}"
        );
        // the trainer's own error ends the epoch too, while the reader is ahead
        let mut calls = 0;
        let e = Data::Shards(Streamed::open(&s, Split::Valid, 1).unwrap())
            .epoch(&mut rng, 1, 1, 2, &mut |_, _| {
                calls += 1;
                Err(TrainError::Config("stop".into()))
            })
            .unwrap_err();
        assert_eq!((calls, e.to_string().contains("stop")), (1, true));
    }
}
