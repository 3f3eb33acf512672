//! The in-memory dataset (row-major f32 features + class labels) and its Arrow IPC form.

use crate::error::{CoreError, Result};
use arrow_array::{Array, ArrayRef, Float32Array, RecordBatch, UInt32Array};
use arrow_ipc::{reader::FileReader, writer::FileWriter};
use arrow_schema::{DataType, Field, Schema as ArrowSchema};
use std::path::Path;
use std::sync::Arc;

/// Row-major features and class-index labels, the currency between stages.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Feature names, one per column.
    pub feature_names: Vec<String>,
    /// Name of the target column.
    pub target: String,
    /// `n_rows * n_features` values, row after row.
    pub features: Vec<f32>,
    /// Class index per row.
    pub labels: Vec<u32>,
}

impl Dataset {
    /// Number of rows.
    pub fn n_rows(&self) -> usize {
        self.labels.len()
    }

    /// Number of feature columns.
    pub fn n_features(&self) -> usize {
        self.feature_names.len()
    }

    /// The features of row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        let w = self.n_features();
        &self.features[i * w..(i + 1) * w]
    }

    /// Checks that sizes agree and every feature is finite.
    pub fn validate(&self) -> Result<()> {
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
    /// UInt32 column named after the target.
    pub fn to_ipc_bytes(&self) -> Result<Vec<u8>> {
        self.validate()?;
        let (n, w) = (self.n_rows(), self.n_features());
        let mut fields: Vec<Field> = self
            .feature_names
            .iter()
            .map(|f| Field::new(f, DataType::Float32, false))
            .collect();
        fields.push(Field::new(&self.target, DataType::UInt32, false));
        let schema = Arc::new(ArrowSchema::new(fields));
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(w + 1);
        for c in 0..w {
            let col: Vec<f32> = (0..n).map(|r| self.features[r * w + c]).collect();
            columns.push(Arc::new(Float32Array::from(col)));
        }
        columns.push(Arc::new(UInt32Array::from(self.labels.clone())));
        let err = |e: arrow_schema::ArrowError| CoreError::Invalid(format!("arrow: {e}"));
        let batch = RecordBatch::try_new(schema.clone(), columns).map_err(err)?;
        let mut buf = Vec::new();
        {
            let mut writer = FileWriter::try_new(&mut buf, &schema).map_err(err)?;
            writer.write(&batch).map_err(err)?;
            writer.finish().map_err(err)?;
        }
        Ok(buf)
    }

    /// Writes the dataset to `path` as Arrow IPC, atomically.
    pub fn write_ipc(&self, path: &Path) -> Result<()> {
        crate::atomic_write(path, &self.to_ipc_bytes()?)
    }

    /// Reads a dataset written by [`Dataset::write_ipc`] (or any Arrow IPC file with
    /// numeric feature columns and an unsigned integer target column named `target`).
    pub fn read_ipc(path: &Path, target: &str) -> Result<Dataset> {
        let arrow_err = |m: String| CoreError::Arrow {
            path: path.to_path_buf(),
            message: m,
        };
        let file = std::fs::File::open(path).map_err(|e| CoreError::io(path, e))?;
        let reader = FileReader::try_new(file, None).map_err(|e| arrow_err(e.to_string()))?;
        let schema = reader.schema();
        let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        let t_idx = names
            .iter()
            .position(|n| n == target)
            .ok_or_else(|| arrow_err(format!("no target column `{target}`")))?;
        let feature_names: Vec<String> = names
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != t_idx)
            .map(|(_, n)| n.clone())
            .collect();
        let w = feature_names.len();
        let mut features = Vec::new();
        let mut labels = Vec::new();
        for batch in reader {
            let batch = batch.map_err(|e| arrow_err(e.to_string()))?;
            let n = batch.num_rows();
            let start = features.len();
            features.resize(start + n * w, 0.0f32);
            let mut c = 0;
            for (i, col) in batch.columns().iter().enumerate() {
                if i == t_idx {
                    let l = col.as_any().downcast_ref::<UInt32Array>().ok_or_else(|| {
                        arrow_err(format!(
                            "target column `{target}` is {}, expected UInt32",
                            col.data_type()
                        ))
                    })?;
                    labels.extend(l.values().iter().copied());
                    continue;
                }
                let f = col.as_any().downcast_ref::<Float32Array>().ok_or_else(|| {
                    arrow_err(format!(
                        "column `{}` is {}, expected Float32",
                        feature_names[c],
                        col.data_type()
                    ))
                })?;
                if f.null_count() > 0 {
                    return Err(arrow_err(format!(
                        "column `{}` holds nulls",
                        feature_names[c]
                    )));
                }
                for (r, v) in f.values().iter().enumerate() {
                    features[start + r * w + c] = *v;
                }
                c += 1;
            }
        }
        Ok(Dataset {
            feature_names,
            target: target.to_string(),
            features,
            labels,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipc_round_trip_is_exact() {
        let d = Dataset {
            feature_names: vec!["a".into(), "b".into()],
            target: "y".into(),
            features: vec![1.0, -2.5, 3.25, f32::MIN_POSITIVE],
            labels: vec![1, 0],
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
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn non_finite_feature_is_named() {
        let d = Dataset {
            feature_names: vec!["a".into(), "b".into()],
            target: "y".into(),
            features: vec![1.0, 2.0, 3.0, f32::NAN],
            labels: vec![1, 0],
        };
        let e = d.validate().unwrap_err().to_string();
        assert!(e.contains("row 1 column `b`"), "{e}");
    }
}
