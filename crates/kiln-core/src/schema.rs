//! The dataset schema (schema.json): feature names, task, class labels and the fitted
//! transforms that turn raw input columns into model features.

use crate::error::{CoreError, Result};
use serde::{Deserialize, Serialize};

/// What the model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// One label out of `class_labels`.
    Classification,
    /// A real number.
    Regression,
}

/// A fitted, per-column transform, recorded so that new raw rows get identical features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Transform {
    /// `x / by` on the named columns.
    Scale {
        /// Columns the transform applies to.
        columns: Vec<String>,
        /// The divisor.
        by: f32,
    },
    /// `(x - mean) / std` per column; statistics fitted on the train split.
    Standardize {
        /// Columns the transform applies to.
        columns: Vec<String>,
        /// Fitted means, one per column.
        mean: Vec<f32>,
        /// Fitted standard deviations (population, ddof = 0; 1 where it was 0).
        std: Vec<f32>,
    },
}

/// schema.json: what a dataset artifact holds and how it was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schema {
    /// Format version of this file.
    pub version: u32,
    /// Raw input columns, in the order a caller must give them.
    pub input_columns: Vec<String>,
    /// Model feature names, in the order of the feature vector.
    pub feature_names: Vec<String>,
    /// Name of the target column.
    pub target: String,
    /// Classification or regression.
    pub task: Task,
    /// Class labels (as text) in index order; empty for regression.
    pub class_labels: Vec<String>,
    /// Fitted transforms, applied in order to raw rows.
    pub transforms: Vec<Transform>,
}

impl Schema {
    /// Number of model features.
    pub fn n_features(&self) -> usize {
        self.feature_names.len()
    }

    /// Number of classes (0 for regression).
    pub fn n_classes(&self) -> usize {
        self.class_labels.len()
    }

    /// Applies the fitted transforms to raw rows (row-major, `input_columns` order) and
    /// returns model features. Only numeric, column-preserving transforms exist so far, so
    /// input and feature columns coincide.
    pub fn apply(&self, raw: &[f32]) -> Result<Vec<f32>> {
        let width = self.input_columns.len();
        if width == 0 || !raw.len().is_multiple_of(width) {
            return Err(CoreError::Invalid(format!(
                "raw rows hold {} values, not a multiple of the {} input columns",
                raw.len(),
                width
            )));
        }
        let mut out = raw.to_vec();
        for t in &self.transforms {
            match t {
                Transform::Scale { columns, by } => {
                    for c in self.indices(columns)? {
                        for row in out.chunks_exact_mut(width) {
                            row[c] /= by;
                        }
                    }
                }
                Transform::Standardize { columns, mean, std } => {
                    if mean.len() != columns.len() || std.len() != columns.len() {
                        return Err(CoreError::Invalid(format!(
                            "standardize lists {} columns but {} means and {} stds; the schema is corrupt",
                            columns.len(),
                            mean.len(),
                            std.len()
                        )));
                    }
                    for (k, c) in self.indices(columns)?.into_iter().enumerate() {
                        for row in out.chunks_exact_mut(width) {
                            row[c] = (row[c] - mean[k]) / std[k];
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    fn indices(&self, columns: &[String]) -> Result<Vec<usize>> {
        columns
            .iter()
            .map(|c| {
                self.input_columns
                    .iter()
                    .position(|n| n == c)
                    .ok_or_else(|| {
                        CoreError::Invalid(format!(
                            "transform names column `{c}` that the schema does not have"
                        ))
                    })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_scale_then_standardize() {
        let s = Schema {
            version: 1,
            input_columns: vec!["a".into(), "b".into()],
            feature_names: vec!["a".into(), "b".into()],
            target: "y".into(),
            task: Task::Classification,
            class_labels: vec!["0".into(), "1".into()],
            transforms: vec![
                Transform::Scale {
                    columns: vec!["a".into()],
                    by: 2.0,
                },
                Transform::Standardize {
                    columns: vec!["b".into()],
                    mean: vec![1.0],
                    std: vec![4.0],
                },
            ],
        };
        assert_eq!(
            s.apply(&[4.0, 9.0, 1.0, 1.0]).unwrap(),
            vec![2.0, 2.0, 0.5, 0.0]
        );
        assert!(s.apply(&[1.0, 2.0, 3.0]).is_err());
    }
}
