//! The in-memory dataset (row-major f32 features + class labels or regression targets)
//! and its Arrow IPC form.

use crate::error::{CoreError, Result};
use arrow_array::{Array, ArrayRef, Float32Array, Float64Array, RecordBatch, UInt32Array};
use arrow_ipc::writer::FileWriter;
use arrow_schema::{DataType, Field, Schema as ArrowSchema};
use std::path::Path;
use std::sync::Arc;

mod ipc_file;
mod moments;
pub mod shards;
mod sink;
mod split_data;

pub use moments::Moments;
pub use sink::ShardSink;
pub use split_data::SplitData;

use ipc_file::IpcFile;

/// Rows per record batch of the Arrow IPC files kiln writes, at most.
pub const IPC_BATCH_ROWS: usize = 65_536;

/// Rows per record batch for `width` feature columns: about 8 MB of features, so that a
/// batch's buffers stay in the cache and are reused from one batch to the next instead
/// of being mapped afresh (at MNIST's 784 columns a 65,536-row batch was 200 MB, and
/// writing it spent its time in page faults); between 1,024 and [`IPC_BATCH_ROWS`].
pub fn ipc_batch_rows(width: usize) -> usize {
    ((8 << 20) / (4 * width.max(1))).clamp(1024, IPC_BATCH_ROWS)
}

/// Row-major features and per-row targets, the currency between stages. A classification
/// dataset fills `labels` (class indices) and leaves `values` empty; a regression dataset
/// fills `values` and leaves `labels` empty.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Dataset {
    /// Feature names, one per column.
    pub feature_names: Vec<String>,
    /// Name of the target column.
    pub target: String,
    /// `n_rows * n_features` values, row after row.
    pub features: Vec<f32>,
    /// Class index per row (classification).
    pub labels: Vec<u32>,
    /// Target value per row (regression).
    pub values: Vec<f32>,
}

impl Dataset {
    /// Number of rows.
    pub fn n_rows(&self) -> usize {
        self.labels.len().max(self.values.len())
    }

    /// True when the rows carry regression targets rather than class labels.
    pub fn is_regression(&self) -> bool {
        !self.values.is_empty()
    }

    /// Number of feature columns.
    pub fn n_features(&self) -> usize {
        self.feature_names.len()
    }

    /// Coefficient of determination of `pred` against the regression targets:
    /// `1 - SSE / SST`. For a constant target (SST = 0) it is 1 for an exact fit and 0
    /// otherwise, so model selection can still rank fits.
    pub fn r2(&self, pred: &[f32]) -> f64 {
        let n = self.values.len().max(1) as f64;
        let mean = self.values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let (mut sse, mut sst) = (0.0f64, 0.0f64);
        for (&p, &t) in pred.iter().zip(&self.values) {
            sse += (f64::from(p) - f64::from(t)).powi(2);
            sst += (f64::from(t) - mean).powi(2);
        }
        if sst > 0.0 {
            1.0 - sse / sst
        } else if sse == 0.0 {
            1.0
        } else {
            0.0
        }
    }

    /// The first `n` rows (all of them when there are fewer).
    pub fn head(&self, n: usize) -> Dataset {
        let n = n.min(self.n_rows());
        Dataset {
            feature_names: self.feature_names.clone(),
            target: self.target.clone(),
            features: self.features[..n * self.n_features()].to_vec(),
            labels: self.labels[..n.min(self.labels.len())].to_vec(),
            values: self.values[..n.min(self.values.len())].to_vec(),
        }
    }

    /// Appends `other`'s rows (the same columns).
    pub fn append(&mut self, other: &Dataset) {
        self.features.extend_from_slice(&other.features);
        self.labels.extend_from_slice(&other.labels);
        self.values.extend_from_slice(&other.values);
    }

    /// The features of row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        let w = self.n_features();
        &self.features[i * w..(i + 1) * w]
    }

    /// Checks that sizes agree and every feature is finite.
    pub fn validate(&self) -> Result<()> {
        if !self.labels.is_empty() && !self.values.is_empty() {
            return Err(CoreError::Invalid(
                "a dataset holds class labels or regression targets, not both".into(),
            ));
        }
        if let Some(i) = self.values.iter().position(|v| !v.is_finite()) {
            return Err(CoreError::Invalid(format!(
                "row {i}: target `{}` is {}; drop rows without a finite target",
                self.target, self.values[i]
            )));
        }
        if self.features.len() != self.n_rows() * self.n_features() {
            return Err(CoreError::Invalid(format!(
                "dataset holds {} feature values, expected {} rows x {} columns",
                self.features.len(),
                self.n_rows(),
                self.n_features()
            )));
        }
        if let Some(i) = self.features.iter().position(|v| !v.is_finite()) {
            let w = self.n_features().max(1);
            return Err(CoreError::Invalid(format!(
                "row {} column `{}` is {} after preprocessing; add an impute or clip step",
                i / w,
                self.feature_names[i % w],
                self.features[i]
            )));
        }
        Ok(())
    }

    /// Encodes the dataset as an Arrow IPC file: one Float32 column per feature and a
    /// column named after the target, UInt32 class indices or Float32 regression values.
    pub fn to_ipc_bytes(&self) -> Result<Vec<u8>> {
        self.write_ipc_to(Vec::new())
    }

    /// Writes the Arrow IPC file into `out`, in record batches of at most
    /// [`ipc_batch_rows`] rows (each transposed from the row-major features on its own,
    /// so memory stays at one batch), and returns `out`.
    pub fn write_ipc_to<W: std::io::Write>(&self, out: W) -> Result<W> {
        self.validate()?;
        let (n, w) = (self.n_rows(), self.n_features());
        let schema = self.arrow_schema();
        let mut writer = FileWriter::try_new(out, &schema).map_err(arrow_error)?;
        let mut start = 0;
        // an empty dataset still gets one (empty) batch
        while start < n || (n == 0 && start == 0) {
            let end = (start + ipc_batch_rows(w)).min(n);
            writer
                .write(&self.record_batch(&schema, start, end)?)
                .map_err(arrow_error)?;
            start = end;
            if n == 0 {
                break;
            }
        }
        writer.finish().map_err(arrow_error)?;
        writer.into_inner().map_err(arrow_error)
    }

    /// The Arrow schema of the dataset's columnar form: one Float32 column per feature
    /// and a column named after the target, UInt32 class indices or Float32 values.
    pub(crate) fn arrow_schema(&self) -> Arc<ArrowSchema> {
        let mut fields: Vec<Field> = self
            .feature_names
            .iter()
            .map(|f| Field::new(f, DataType::Float32, false))
            .collect();
        let target_type = if self.is_regression() {
            DataType::Float32
        } else {
            DataType::UInt32
        };
        fields.push(Field::new(&self.target, target_type, false));
        Arc::new(ArrowSchema::new(fields))
    }

    /// Rows `start..end` as one record batch of `schema` ([`Dataset::arrow_schema`]),
    /// transposed from the row-major features.
    pub(crate) fn record_batch(
        &self,
        schema: &Arc<ArrowSchema>,
        start: usize,
        end: usize,
    ) -> Result<RecordBatch> {
        let w = self.n_features();
        let rows = &self.features[start * w..end * w];
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(w + 1);
        for col in rows_to_columns(rows, w) {
            columns.push(Arc::new(Float32Array::from(col)));
        }
        if self.is_regression() {
            columns.push(Arc::new(Float32Array::from(
                self.values[start..end].to_vec(),
            )));
        } else {
            columns.push(Arc::new(UInt32Array::from(
                self.labels[start..end].to_vec(),
            )));
        }
        RecordBatch::try_new(schema.clone(), columns).map_err(arrow_error)
    }

    /// Writes the dataset to `path` as Arrow IPC, atomically (into a temporary file
    /// beside it, then renamed), streaming one record batch at a time.
    pub fn write_ipc(&self, path: &Path) -> Result<()> {
        crate::artifact::atomic_write_with(path, |f| {
            let w = self.write_ipc_to(std::io::BufWriter::with_capacity(1 << 20, f))?;
            w.into_inner()
                .map_err(|e| CoreError::io(path, e.into_error()))?;
            Ok(())
        })
    }

    /// Reads a dataset written by [`Dataset::write_ipc`] (or any Arrow IPC file with
    /// Float32 feature columns and a target column named `target`: UInt32 class indices,
    /// or Float32 / Float64 regression values).
    pub fn read_ipc(path: &Path, target: &str) -> Result<Dataset> {
        // arrow-rs is not hardened against every corrupt file: a panic inside it becomes
        // an error naming the file
        std::panic::catch_unwind(|| Self::read_ipc_unguarded(path, target)).unwrap_or_else(|p| {
            Err(CoreError::Arrow {
                path: path.to_path_buf(),
                message: format!(
                    "the Arrow IPC file is corrupt (reading it failed: {}); write it again",
                    crate::panic_message(&p)
                ),
            })
        })
    }

    fn read_ipc_unguarded(path: &Path, target: &str) -> Result<Dataset> {
        let arrow_err = |m: String| CoreError::Arrow {
            path: path.to_path_buf(),
            message: m,
        };
        let bytes = std::fs::read(path).map_err(|e| CoreError::io(path, e))?;
        let file = IpcFile::open(bytes).map_err(arrow_err)?;
        let mut rows = Collector::new(&file.schema, target).map_err(arrow_err)?;
        for k in 0..file.n_batches() {
            let Some(batch) = file.batch(k).map_err(arrow_err)? else {
                continue;
            };
            rows.push(&batch).map_err(arrow_err)?;
        }
        rows.finish()
    }
}

fn arrow_error(e: arrow_schema::ArrowError) -> CoreError {
    CoreError::Invalid(format!("arrow: {e}"))
}

/// A dataset gathered from record batches of its columnar form (Float32 features and a
/// target column), as a file's batches are read; errors are messages for the caller to
/// attach to its file.
pub(crate) struct Collector {
    /// Where the target column is.
    t_idx: usize,
    ds: Dataset,
}

impl Collector {
    /// A collector for batches of `schema`, whose target column is `target`.
    pub(crate) fn new(schema: &ArrowSchema, target: &str) -> std::result::Result<Self, String> {
        let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        let t_idx = names
            .iter()
            .position(|n| n == target)
            .ok_or_else(|| format!("no target column `{target}`"))?;
        let feature_names = names
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != t_idx)
            .map(|(_, n)| n.clone())
            .collect();
        Ok(Collector {
            t_idx,
            ds: Dataset {
                feature_names,
                target: target.to_string(),
                ..Dataset::default()
            },
        })
    }

    /// Appends a batch's rows.
    pub(crate) fn push(&mut self, batch: &RecordBatch) -> std::result::Result<(), String> {
        let (t_idx, target) = (self.t_idx, &self.ds.target);
        let feature_names = &self.ds.feature_names;
        let w = feature_names.len();
        let n = batch.num_rows();
        if batch.num_columns() != w + 1 {
            return Err(format!(
                "a batch holds {} columns, expected {}",
                batch.num_columns(),
                w + 1
            ));
        }
        let start = self.ds.features.len();
        self.ds.features.resize(start + n * w, 0.0f32);
        let mut c = 0;
        let mut cols: Vec<&[f32]> = Vec::with_capacity(w);
        for (i, col) in batch.columns().iter().enumerate() {
            if i == t_idx {
                if col.null_count() > 0 {
                    return Err(format!("target column `{target}` holds nulls"));
                }
                let any = col.as_any();
                if let Some(l) = any.downcast_ref::<UInt32Array>() {
                    self.ds.labels.extend(l.values().iter().copied());
                } else if let Some(v) = any.downcast_ref::<Float32Array>() {
                    self.ds.values.extend(v.values().iter().copied());
                } else if let Some(v) = any.downcast_ref::<Float64Array>() {
                    self.ds.values.extend(v.values().iter().map(|&x| x as f32));
                } else {
                    return Err(format!(
                        "target column `{target}` is {}; expected UInt32 class indices or Float32 values",
                        col.data_type()
                    ));
                }
                continue;
            }
            let f = col.as_any().downcast_ref::<Float32Array>().ok_or_else(|| {
                format!(
                    "column `{}` is {}, expected Float32",
                    feature_names[c],
                    col.data_type()
                )
            })?;
            if f.null_count() > 0 {
                return Err(format!("column `{}` holds nulls", feature_names[c]));
            }
            cols.push(f.values());
            c += 1;
        }
        columns_to_rows(&cols, &mut self.ds.features[start..]);
        Ok(())
    }

    /// The dataset, checked.
    pub(crate) fn finish(self) -> Result<Dataset> {
        self.ds.validate()?;
        Ok(self.ds)
    }
}

/// Columns at a time through the cache: a strip of this many columns is copied row by
/// row, so each row's strip is one or two cache lines instead of one line per value.
const STRIP: usize = 16;

/// The columns of row-major `rows` (`w` values per row).
fn rows_to_columns(rows: &[f32], w: usize) -> Vec<Vec<f32>> {
    let n = rows.len().checked_div(w).unwrap_or(0);
    let mut out: Vec<Vec<f32>> = (0..w).map(|_| Vec::with_capacity(n)).collect();
    for (s, strip) in out.chunks_mut(STRIP).enumerate() {
        let (c0, k) = (s * STRIP, strip.len());
        for row in rows.chunks_exact(w) {
            for (col, &v) in strip.iter_mut().zip(&row[c0..c0 + k]) {
                col.push(v);
            }
        }
    }
    out
}

/// Writes `cols` (equal lengths) into row-major `rows` (`cols.len()` values per row).
fn columns_to_rows(cols: &[&[f32]], rows: &mut [f32]) {
    let w = cols.len();
    if w == 0 {
        return;
    }
    for (s, strip) in cols.chunks(STRIP).enumerate() {
        let c0 = s * STRIP;
        for (r, row) in rows.chunks_exact_mut(w).enumerate() {
            for (dst, col) in row[c0..c0 + strip.len()].iter_mut().zip(strip) {
                *dst = col[r];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_multi_batch_round_trip_puts_every_value_in_its_column() {
        // 37 columns (two full strips and a partial one), two record batches
        let w = 37;
        let b = ipc_batch_rows(w);
        assert_eq!(b, 56_679); // 8 MiB / (4 bytes x 37)
        let n = b + 3;
        let d = Dataset {
            feature_names: (0..w).map(|j| format!("f{j}")).collect(),
            target: "y".into(),
            features: (0..n * w).map(|i| i as f32).collect(),
            labels: (0..n as u32).map(|i| i % 3).collect(),
            values: vec![],
        };
        let bytes = d.to_ipc_bytes().unwrap();
        let reader =
            arrow_ipc::reader::FileReader::try_new(std::io::Cursor::new(bytes.clone()), None)
                .unwrap();
        let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
        assert_eq!(batches.len(), 2);
        let last = &batches[1];
        assert_eq!(last.num_rows(), 3);
        // row b + 2, column 33 holds (row * w + 33)
        let c33 = last
            .column(33)
            .as_any()
            .downcast_ref::<Float32Array>()
            .unwrap();
        assert_eq!(c33.value(2), ((b + 2) * w + 33) as f32);
        assert_eq!(
            (
                ipc_batch_rows(784),
                ipc_batch_rows(1),
                ipc_batch_rows(1 << 20)
            ),
            (2674, IPC_BATCH_ROWS, 1024)
        );
        let dir = std::env::temp_dir().join(format!("kiln-core-wide-{}", std::process::id()));
        let p = dir.join("d.arrow");
        d.write_ipc(&p).unwrap();
        assert_eq!(Dataset::read_ipc(&p, "y").unwrap(), d);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ipc_round_trip_is_exact() {
        let d = Dataset {
            feature_names: vec!["a".into(), "b".into()],
            target: "y".into(),
            features: vec![1.0, -2.5, 3.25, f32::MIN_POSITIVE],
            labels: vec![1, 0],
            values: vec![],
        };
        let dir = std::env::temp_dir().join(format!("kiln-core-ds-{}", std::process::id()));
        let p = dir.join("d.arrow");
        d.write_ipc(&p).unwrap();
        let back = Dataset::read_ipc(&p, "y").unwrap();
        assert_eq!(back, d);
        assert!(
            Dataset::read_ipc(&p, "nope")
                .unwrap_err()
                .to_string()
                .contains("no target column `nope`")
        );
        // A regression target travels as Float32.
        let r = Dataset {
            labels: vec![],
            values: vec![0.5, -7.25],
            ..d.clone()
        };
        r.write_ipc(&p).unwrap();
        let back = Dataset::read_ipc(&p, "y").unwrap();
        assert_eq!(back, r);
        assert!(back.is_regression() && !d.is_regression());
        assert_eq!(back.n_rows(), 2);
        // SST = 2 * 3.875^2 = 30.03125; SSE = 0.25 + 1 = 1.25
        assert!((r.r2(&[0.0, -6.25]) - (1.0 - 1.25 / 30.03125)).abs() < 1e-12);
        assert_eq!(r.r2(&[0.5, -7.25]), 1.0);
        let flat = Dataset {
            values: vec![2.0, 2.0],
            ..r.clone()
        };
        assert_eq!((flat.r2(&[2.0, 2.0]), flat.r2(&[2.0, 2.5])), (1.0, 0.0));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn non_finite_target_is_named() {
        let d = Dataset {
            feature_names: vec!["a".into()],
            target: "price".into(),
            features: vec![1.0, 2.0],
            labels: vec![],
            values: vec![1.0, f32::INFINITY],
        };
        let e = d.validate().unwrap_err().to_string();
        assert!(e.contains("row 1: target `price` is inf"), "{e}");
    }

    #[test]
    fn non_finite_feature_is_named() {
        let d = Dataset {
            feature_names: vec!["a".into(), "b".into()],
            target: "y".into(),
            features: vec![1.0, 2.0, 3.0, f32::NAN],
            labels: vec![1, 0],
            values: vec![],
        };
        let e = d.validate().unwrap_err().to_string();
        assert!(e.contains("row 1 column `b`"), "{e}");
    }
}
