//! The dataset schema (schema.json): feature names, task, class labels and the fitted
//! transforms that turn raw input columns into model features.
//!
//! One file, over 600 lines: every `Transform` variant's fields, its `apply` and its
//! description sit side by side, so a new step is added in one place and a step's meaning
//! at training and at prediction cannot drift apart.

use crate::encode::{Expansion, TextColumn, bucket, expand, tokens};
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
    /// Missing values (NaN in raw rows: null or empty cells) replaced by a fitted value.
    Impute {
        /// Columns the transform applies to.
        columns: Vec<String>,
        /// How the values were fitted: `mean`, `median`, `most_frequent` or `constant`.
        strategy: String,
        /// The fill value of each column.
        values: Vec<f32>,
    },
    /// Values below `min` set to `min`, above `max` to `max` (per column; a missing
    /// bound leaves that side open).
    Clip {
        /// Columns the transform applies to.
        columns: Vec<String>,
        /// Lower bounds, one per column.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<Vec<f32>>,
        /// Upper bounds, one per column.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<Vec<f32>>,
    },
    /// `ln(1 + x)` on the named columns.
    Log1p {
        /// Columns the transform applies to.
        columns: Vec<String>,
    },
    /// `(x - min) / (max - min)` with the train min and max (divided by 1 where the train
    /// column is constant, so its train values become 0).
    MinMax {
        /// Columns the transform applies to.
        columns: Vec<String>,
        /// Train minimum per column.
        min: Vec<f32>,
        /// Train maximum per column.
        max: Vec<f32>,
    },
    /// Removes the named columns from the features.
    Drop {
        /// Columns removed.
        columns: Vec<String>,
    },
    /// Keeps only the named columns, in the order of the features.
    Select {
        /// Columns kept.
        columns: Vec<String>,
    },
    /// Missing cells of text (categorical) columns replaced by a fitted category.
    ImputeCategorical {
        /// Text columns the transform applies to.
        columns: Vec<String>,
        /// How the values were fitted: `most_frequent` or `constant`.
        strategy: String,
        /// The fill category of each column.
        values: Vec<String>,
    },
    /// Each text column becomes one feature per recorded category, named
    /// `column=category`, in the order recorded: 1 where the cell equals the category,
    /// 0 elsewhere. A cell that is no recorded category (unseen in training, beyond the
    /// `max_categories` cap, or missing) gives all zeros.
    OneHot {
        /// Text columns the transform applies to.
        columns: Vec<String>,
        /// Per column, the categories kept (sorted by name).
        categories: Vec<Vec<String>>,
    },
    /// Each text column becomes one feature of the same name: the cell's index in the
    /// recorded categories (sorted by name), or -1 for a cell that is none of them
    /// (unseen in training, or missing).
    Ordinal {
        /// Text columns the transform applies to.
        columns: Vec<String>,
        /// Per column, the categories in index order.
        categories: Vec<Vec<String>>,
    },
    /// Piecewise-linear encoding (Gorishniy et al. 2022, "On Embeddings for Numerical
    /// Features in Tabular Deep Learning"): a numeric column with fitted bin edges
    /// `e_0 < … < e_T` becomes `T` features named `column#0` …, feature `t` being
    /// `(x - e_t) / (e_{t+1} - e_t)` clamped to [0, 1] — 1 for the bins below x, x's place
    /// within its own bin, 0 above. A network then bends each feature at the train
    /// split's quantiles instead of learning where to.
    PiecewiseLinear {
        /// Numeric columns the transform applies to.
        columns: Vec<String>,
        /// Per column, its strictly increasing bin edges (at least two).
        edges: Vec<Vec<f32>>,
    },
    /// Hashed bag of words: each text column becomes `n_features` features named
    /// `column#0` … : the cell is lowercased and split on every non-alphanumeric
    /// character, and each token adds 1 to feature `fnv1a_64(token) % n_features`. A
    /// missing cell gives all zeros.
    HashText {
        /// Text columns the transform applies to.
        columns: Vec<String>,
        /// Features per column.
        n_features: usize,
    },
}

/// Replaces the numeric columns at `idx` (named `columns`) of row-major `data` by their
/// piecewise-linear encodings with bin `edges` (see [`Transform::PiecewiseLinear`]).
fn piecewise_linear(
    names: &mut Vec<String>,
    data: &mut Vec<f32>,
    columns: &[String],
    idx: &[usize],
    edges: &[Vec<f32>],
) {
    let width = names.len();
    // per old column: which encoded column it is, if any
    let which: Vec<Option<usize>> = (0..width)
        .map(|j| idx.iter().position(|&c| c == j))
        .collect();
    let mut new_names = Vec::new();
    for (j, n) in names.iter().enumerate() {
        match which[j] {
            Some(k) => {
                new_names.extend((0..edges[k].len() - 1).map(|t| format!("{}#{t}", columns[k])))
            }
            None => new_names.push(n.clone()),
        }
    }
    let mut out = Vec::with_capacity(data.len() / width.max(1) * new_names.len());
    for row in data.chunks_exact(width) {
        for (j, &x) in row.iter().enumerate() {
            match which[j] {
                Some(k) => out.extend(edges[k].windows(2).map(|e| {
                    if x.is_nan() {
                        f32::NAN
                    } else {
                        ((x - e[0]) / (e[1] - e[0])).clamp(0.0, 1.0)
                    }
                })),
                None => out.push(x),
            }
        }
    }
    *names = new_names;
    *data = out;
}

impl Transform {
    /// The transform's name as written in a pipeline file (`op`).
    pub fn op(&self) -> &'static str {
        match self {
            Transform::Scale { .. } => "scale",
            Transform::Standardize { .. } => "standardize",
            Transform::Impute { .. } => "impute",
            Transform::Clip { .. } => "clip",
            Transform::Log1p { .. } => "log1p",
            Transform::MinMax { .. } => "min_max",
            Transform::Drop { .. } => "drop",
            Transform::Select { .. } => "select",
            Transform::ImputeCategorical { .. } => "impute_categorical",
            Transform::OneHot { .. } => "one_hot",
            Transform::Ordinal { .. } => "ordinal",
            Transform::HashText { .. } => "hash_text",
            Transform::PiecewiseLinear { .. } => "piecewise_linear",
        }
    }

    /// Whether the transform takes text columns (`impute_categorical`, `one_hot`,
    /// `ordinal`, `hash_text`).
    pub fn is_text(&self) -> bool {
        matches!(
            self,
            Transform::ImputeCategorical { .. }
                | Transform::OneHot { .. }
                | Transform::Ordinal { .. }
                | Transform::HashText { .. }
        )
    }

    /// The columns the transform names.
    pub fn columns(&self) -> &[String] {
        match self {
            Transform::Scale { columns, .. }
            | Transform::Standardize { columns, .. }
            | Transform::Impute { columns, .. }
            | Transform::Clip { columns, .. }
            | Transform::Log1p { columns }
            | Transform::MinMax { columns, .. }
            | Transform::Drop { columns }
            | Transform::Select { columns }
            | Transform::ImputeCategorical { columns, .. }
            | Transform::OneHot { columns, .. }
            | Transform::Ordinal { columns, .. }
            | Transform::HashText { columns, .. }
            | Transform::PiecewiseLinear { columns, .. } => columns,
        }
    }

    /// Applies this transform to row-major `data` whose columns are `names`; `drop` and
    /// `select` change `names` (and the row width) too. Exactly the float operations of
    /// [`Schema::apply`], which calls it once per transform.
    pub fn apply_to(&self, names: &mut Vec<String>, data: &mut Vec<f32>) -> Result<()> {
        self.apply_with_text(names, data, &mut Vec::new())
    }

    /// [`Transform::apply_to`] for rows that hold text columns too: `names` lists every
    /// column, the text ones included (their values in `data` are placeholders, never
    /// read), and `text` holds the cells of the text columns still present. Numeric
    /// transforms refuse a text column; encoders replace one by numeric features.
    pub fn apply_with_text(
        &self,
        names: &mut Vec<String>,
        data: &mut Vec<f32>,
        text: &mut Vec<(String, TextColumn)>,
    ) -> Result<()> {
        let is_text = |c: &String| text.iter().any(|(n, _)| n == c);
        if self.is_text() {
            if let Some(c) = self.columns().iter().find(|c| !is_text(c)) {
                return Err(CoreError::Invalid(format!(
                    "{} takes the text column `{c}`, but the rows give no text cells for it; pass its cells as text (Schema::apply_with_text)",
                    self.op()
                )));
            }
        } else if !matches!(self, Transform::Drop { .. } | Transform::Select { .. })
            && let Some(c) = self.columns().iter().find(|c| is_text(c))
        {
            return Err(CoreError::Invalid(format!(
                "{} computes with column `{c}`, which holds text; the schema is corrupt",
                self.op()
            )));
        }
        let width = names.len();
        if width == 0 || !data.len().is_multiple_of(width) {
            return Err(CoreError::Invalid(format!(
                "rows hold {} values, not a multiple of the {} columns",
                data.len(),
                width
            )));
        }
        let idx = indices(names, self.columns(), self.op())?;
        let per_col = |v: &[f32], what: &str| -> Result<()> {
            if v.len() != idx.len() {
                return Err(CoreError::Invalid(format!(
                    "{} lists {} columns but {} {what}; the schema is corrupt",
                    self.op(),
                    idx.len(),
                    v.len()
                )));
            }
            Ok(())
        };
        let each = |data: &mut Vec<f32>, f: &dyn Fn(usize, f32) -> f32| {
            for row in data.chunks_exact_mut(width) {
                for (k, &c) in idx.iter().enumerate() {
                    row[c] = f(k, row[c]);
                }
            }
        };
        match self {
            Transform::Scale { by, .. } => each(data, &|_, x| x / by),
            Transform::Standardize { mean, std, .. } => {
                per_col(mean, "means")?;
                per_col(std, "stds")?;
                each(data, &|k, x| (x - mean[k]) / std[k]);
            }
            Transform::Impute { values, .. } => {
                per_col(values, "values")?;
                each(data, &|k, x| if x.is_nan() { values[k] } else { x });
            }
            Transform::Clip { min, max, .. } => {
                for (v, what) in [(min, "minima"), (max, "maxima")] {
                    if let Some(v) = v {
                        per_col(v, what)?;
                    }
                }
                each(data, &|k, x| {
                    let x = match min {
                        Some(lo) if x < lo[k] => lo[k],
                        _ => x,
                    };
                    match max {
                        Some(hi) if x > hi[k] => hi[k],
                        _ => x,
                    }
                });
            }
            Transform::Log1p { .. } => each(data, &|_, x| x.ln_1p()),
            Transform::PiecewiseLinear { columns, edges } => {
                if edges.len() != idx.len()
                    || edges
                        .iter()
                        .any(|e| e.len() < 2 || !e.windows(2).all(|w| w[0] < w[1]))
                {
                    return Err(CoreError::Invalid(
                        "piecewise_linear: each column needs two or more increasing edges; the schema is corrupt"
                            .into(),
                    ));
                }
                piecewise_linear(names, data, columns, &idx, edges);
            }
            Transform::MinMax { min, max, .. } => {
                per_col(min, "minima")?;
                per_col(max, "maxima")?;
                each(data, &|k, x| (x - min[k]) / min_max_range(min[k], max[k]));
            }
            Transform::ImputeCategorical {
                columns, values, ..
            } => {
                per_col_s(values, "values", idx.len(), self.op())?;
                for (c, v) in columns.iter().zip(values) {
                    if let Some((_, col)) = text.iter_mut().find(|(n, _)| n == c) {
                        col.fill(v);
                    }
                }
            }
            Transform::OneHot {
                columns,
                categories,
            }
            | Transform::Ordinal {
                columns,
                categories,
            } => {
                if categories.len() != idx.len() {
                    return Err(CoreError::Invalid(format!(
                        "{} lists {} columns but {} category lists; the schema is corrupt",
                        self.op(),
                        idx.len(),
                        categories.len()
                    )));
                }
                let one_hot = matches!(self, Transform::OneHot { .. });
                self.encode(names, data, text, idx, |k, col| {
                    let cats = &categories[k];
                    // each distinct cell looked up once: a column of thousands of
                    // categories made a linear search per cell the cost of a chunk
                    let at: std::collections::HashMap<&str, usize> = cats
                        .iter()
                        .enumerate()
                        .rev()
                        .map(|(p, c)| (c.as_str(), p))
                        .collect();
                    let per_code = col
                        .dict
                        .iter()
                        .map(|d| match (at.get(d.as_str()).copied(), one_hot) {
                            (Some(p), true) => vec![(p as u32, 1.0)],
                            (None, true) => vec![],
                            (Some(p), false) => vec![(0, p as f32)],
                            (None, false) => vec![(0, -1.0)],
                        })
                        .collect();
                    if one_hot {
                        Expansion {
                            names: cats.iter().map(|c| format!("{}={c}", columns[k])).collect(),
                            per_code,
                            missing: vec![],
                        }
                    } else {
                        Expansion {
                            names: vec![columns[k].clone()],
                            per_code,
                            missing: vec![(0, -1.0)],
                        }
                    }
                })?;
            }
            Transform::HashText {
                columns,
                n_features,
            } => {
                if *n_features == 0 {
                    return Err(CoreError::Invalid(
                        "hash_text with n_features = 0; the schema is corrupt".into(),
                    ));
                }
                let n = *n_features;
                self.encode(names, data, text, idx, |k, col| Expansion {
                    names: (0..n).map(|b| format!("{}#{b}", columns[k])).collect(),
                    per_code: col
                        .dict
                        .iter()
                        .map(|d| {
                            let mut counts: Vec<(u32, f32)> = Vec::new();
                            for t in tokens(d) {
                                let b = bucket(&t, n) as u32;
                                match counts.iter_mut().find(|(o, _)| *o == b) {
                                    Some((_, v)) => *v += 1.0,
                                    None => counts.push((b, 1.0)),
                                }
                            }
                            counts
                        })
                        .collect(),
                    missing: vec![],
                })?;
            }
            Transform::Drop { .. } | Transform::Select { .. } => {
                let keep: Vec<usize> = match self {
                    Transform::Drop { .. } => (0..width).filter(|c| !idx.contains(c)).collect(),
                    _ => idx.clone(),
                };
                if keep.is_empty() {
                    return Err(CoreError::Invalid(format!(
                        "{} leaves no feature columns",
                        self.op()
                    )));
                }
                let mut out = Vec::with_capacity(data.len() / width * keep.len());
                for row in data.chunks_exact(width) {
                    out.extend(keep.iter().map(|&c| row[c]));
                }
                *data = out;
                *names = keep.iter().map(|&c| names[c].clone()).collect();
                text.retain(|(n, _)| names.contains(n));
            }
        }
        Ok(())
    }

    /// Runs an encoder: `plan(k, column)` gives the expansion of the k-th named column.
    fn encode(
        &self,
        names: &mut Vec<String>,
        data: &mut Vec<f32>,
        text: &mut Vec<(String, TextColumn)>,
        idx: Vec<usize>,
        plan: impl Fn(usize, &TextColumn) -> Expansion,
    ) -> Result<()> {
        let cols = self.columns();
        let mut plans = Vec::with_capacity(cols.len());
        let mut taken = Vec::with_capacity(cols.len());
        for (k, c) in cols.iter().enumerate() {
            let Some(p) = text.iter().position(|(n, _)| n == c) else {
                return Err(CoreError::Invalid(format!(
                    "{} names text column `{c}` that the rows lack",
                    self.op()
                )));
            };
            taken.push(text.remove(p).1);
            plans.push((idx[k], plan(k, &taken[k])));
        }
        let refs: Vec<&TextColumn> = taken.iter().collect();
        expand(names, data, &refs, &plans, self.op())
    }
}

fn per_col_s(v: &[String], what: &str, n: usize, op: &str) -> Result<()> {
    if v.len() != n {
        return Err(CoreError::Invalid(format!(
            "{op} lists {n} columns but {} {what}; the schema is corrupt",
            v.len()
        )));
    }
    Ok(())
}

/// The divisor `min_max` uses: `max - min`, or 1 where the train column was constant.
pub fn min_max_range(min: f32, max: f32) -> f32 {
    let r = max - min;
    if r > 0.0 && r.is_finite() { r } else { 1.0 }
}

fn indices(names: &[String], columns: &[String], op: &str) -> Result<Vec<usize>> {
    columns
        .iter()
        .map(|c| {
            names.iter().position(|n| n == c).ok_or_else(|| {
                CoreError::Invalid(format!(
                    "{op} names column `{c}` that the rows at that point do not have; the schema is corrupt"
                ))
            })
        })
        .collect()
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
    /// The features' shape as an image (`[channels, height, width]`) when the source
    /// read images (an image folder, IDX files): what `kiln predict` decodes image files
    /// into (absent in schema.json files written before it existed, and for tables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<crate::conv::ImageShape>,
    /// Fitted transforms, applied in order to raw rows.
    pub transforms: Vec<Transform>,
}

impl Schema {
    /// Number of model features.
    pub fn n_features(&self) -> usize {
        self.feature_names.len()
    }

    /// The features that hold an `ordinal` transform's codes (a column it encodes that is
    /// still a feature under its own name), in feature order.
    pub fn ordinal_features(&self) -> Vec<String> {
        let ordinal: Vec<&String> = self
            .transforms
            .iter()
            .filter_map(|t| match t {
                Transform::Ordinal { columns, .. } => Some(columns),
                _ => None,
            })
            .flatten()
            .collect();
        self.feature_names
            .iter()
            .filter(|f| ordinal.contains(f))
            .cloned()
            .collect()
    }

    /// Number of classes (0 for regression).
    pub fn n_classes(&self) -> usize {
        self.class_labels.len()
    }

    /// Whether a missing raw value (NaN) of `column` is filled or removed before any
    /// step computes with it: an `impute` of it, or a `drop` / `select` that removes it,
    /// comes first.
    pub fn fills_missing(&self, column: &str) -> bool {
        for t in &self.transforms {
            let named = t.columns().iter().any(|c| c == column);
            match t {
                Transform::Select { .. } if !named => return true,
                Transform::Select { .. } => {}
                Transform::Impute { .. } | Transform::Drop { .. } if named => return true,
                _ if named => return false,
                _ => {}
            }
        }
        false
    }

    /// The input columns whose cells are text: those a text transform (`one_hot`,
    /// `ordinal`, `hash_text`, `impute_categorical`) uses before any other transform
    /// does, in `input_columns` order.
    pub fn text_columns(&self) -> Vec<String> {
        self.input_columns
            .iter()
            .filter(|c| {
                for t in &self.transforms {
                    let named = t.columns().contains(c);
                    match t {
                        Transform::Select { .. } if !named => return false,
                        Transform::Drop { .. } if named => return false,
                        Transform::Select { .. } | Transform::Drop { .. } => {}
                        _ if named => return t.is_text(),
                        _ => {}
                    }
                }
                false
            })
            .cloned()
            .collect()
    }

    /// Applies the fitted transforms to raw rows (row-major, `input_columns` order; a
    /// missing value is NaN) and returns model features (`feature_names` order). For a
    /// schema with text columns use [`Schema::apply_with_text`].
    pub fn apply(&self, raw: &[f32]) -> Result<Vec<f32>> {
        self.apply_with_text(raw, Vec::new())
    }

    /// [`Schema::apply`] for raw rows with text columns: `raw` holds every input column
    /// (any value at a text column's place; it is not read) and `text` the cells of
    /// each of [`Schema::text_columns`], by name.
    pub fn apply_with_text(
        &self,
        raw: &[f32],
        mut text: Vec<(String, TextColumn)>,
    ) -> Result<Vec<f32>> {
        let width = self.input_columns.len();
        if width == 0 || !raw.len().is_multiple_of(width) {
            return Err(CoreError::Invalid(format!(
                "raw rows hold {} values, not a multiple of the {} input columns",
                raw.len(),
                width
            )));
        }
        let n_rows = raw.len() / width;
        for (c, col) in &text {
            if !self.input_columns.contains(c) {
                return Err(CoreError::Invalid(format!(
                    "text column `{c}` is not an input column of the schema"
                )));
            }
            if col.len() != n_rows {
                return Err(CoreError::Invalid(format!(
                    "text column `{c}` holds {} rows, the numbers {n_rows}",
                    col.len()
                )));
            }
        }
        let mut out = raw.to_vec();
        let mut names = self.input_columns.clone();
        for t in &self.transforms {
            t.apply_with_text(&mut names, &mut out, &mut text)?;
        }
        if names != self.feature_names {
            return Err(CoreError::Invalid(format!(
                "the transforms end with columns {names:?}, not the schema's features {:?}; the schema is corrupt",
                self.feature_names
            )));
        }
        Ok(out)
    }

    /// Model features of raw `rows`: the fitted transforms applied, every feature checked
    /// to be finite (a row that still holds NaN or infinity after preprocessing is an
    /// error naming it and the feature).
    pub fn features(&self, rows: &Rows) -> std::result::Result<Vec<f32>, FeatureError> {
        let features = self
            .apply_with_text(&rows.values, rows.text.clone())
            .map_err(|e| FeatureError::Schema(e.to_string()))?;
        let w = self.n_features().max(1);
        if let Some(i) = features.iter().position(|v| !v.is_finite()) {
            return Err(FeatureError::NotFinite {
                row: i / w,
                column: self.feature_names.get(i % w).cloned().unwrap_or_default(),
            });
        }
        Ok(features)
    }
}

/// Raw rows in a schema's `input_columns` order, as `kiln predict`, `kiln serve` and a
/// library caller hand them to a model: numbers row-major (a missing value or a text
/// column's place as NaN), and the cells of the text columns by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rows {
    /// Number of rows.
    pub n_rows: usize,
    /// `n_rows * input_columns.len()` values, row after row.
    pub values: Vec<f32>,
    /// The cells of the schema's text columns.
    pub text: Vec<(String, TextColumn)>,
}

/// Why raw rows could not become model features.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FeatureError {
    /// The schema cannot be applied (a corrupt schema.json, a wrong row width).
    #[error("{0}")]
    Schema(String),
    /// A feature is NaN or infinite after preprocessing.
    #[error("row {row} column `{column}` is not a finite number after preprocessing")]
    NotFinite {
        /// The row, counted from 0.
        row: usize,
        /// The feature's name.
        column: String,
    },
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
            image: None,
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
        let e = s.apply(&[1.0, 2.0, 3.0]).unwrap_err().to_string();
        assert!(
            e.contains("raw rows hold 3 values, not a multiple of the 2 input columns"),
            "{e}"
        );
    }

    #[test]
    fn piecewise_linear_worked_by_hand() {
        let t = Transform::PiecewiseLinear {
            columns: vec!["b".into()],
            edges: vec![vec![0.0, 2.0, 4.0, 8.0]],
        };
        let mut names = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        // b = -1 (below every bin), 3 (half through the second bin), 6 (half through the
        // third), 100 (above); NaN stays NaN in every feature
        let mut data = vec![
            1.0,
            -1.0,
            7.0, //
            2.0,
            3.0,
            8.0, //
            3.0,
            6.0,
            9.0, //
            4.0,
            100.0,
            10.0, //
            5.0,
            f32::NAN,
            11.0,
        ];
        t.apply_to(&mut names, &mut data).unwrap();
        assert_eq!(names, ["a", "b#0", "b#1", "b#2", "c"]);
        assert_eq!(
            data[..20],
            [
                1.0, 0.0, 0.0, 0.0, 7.0, //
                2.0, 1.0, 0.5, 0.0, 8.0, //
                3.0, 1.0, 1.0, 0.5, 9.0, //
                4.0, 1.0, 1.0, 1.0, 10.0,
            ]
        );
        assert!(data[21..24].iter().all(|x| x.is_nan()));
        assert_eq!((data[20], data[24]), (5.0, 11.0));
        for bad in [vec![vec![1.0]], vec![vec![2.0, 1.0]], vec![]] {
            let t = Transform::PiecewiseLinear {
                columns: vec!["a".into()],
                edges: bad,
            };
            let e = t
                .apply_to(&mut vec!["a".to_string()], &mut vec![1.0])
                .unwrap_err();
            assert!(e.to_string().contains("the schema is corrupt"), "{e}");
        }
    }

    #[test]
    fn apply_impute_clip_log1p_min_max_drop_select() {
        let names = ["a", "b", "c"].map(String::from).to_vec();
        let s = Schema {
            version: 1,
            input_columns: names.clone(),
            feature_names: vec!["c".into(), "a".into()],
            target: "y".into(),
            task: Task::Regression,
            image: None,
            class_labels: vec![],
            transforms: vec![
                Transform::Impute {
                    columns: vec!["a".into()],
                    strategy: "median".into(),
                    values: vec![3.0],
                },
                Transform::Clip {
                    columns: vec!["a".into(), "b".into()],
                    min: Some(vec![2.0, -1.0]),
                    max: None,
                },
                Transform::Log1p {
                    columns: vec!["b".into()],
                },
                Transform::MinMax {
                    columns: vec!["a".into(), "c".into()],
                    min: vec![2.0, 5.0],
                    max: vec![10.0, 5.0],
                },
                Transform::Drop {
                    columns: vec!["b".into()],
                },
                Transform::Select {
                    columns: vec!["c".into(), "a".into()],
                },
            ],
        };
        // row 1: a = NaN -> 3 -> 3 -> (3-2)/8; c constant on train: (7-5)/1
        // row 2: a = 1 -> clipped to 2 -> 0; c = 5 -> 0
        let raw = [f32::NAN, 0.0, 7.0, 1.0, -3.0, 5.0];
        assert_eq!(s.apply(&raw).unwrap(), vec![2.0, 0.125, 0.0, 0.0]);
        // log1p on b: before the drop, b = ln(1 + max(x, -1))
        let mut n = names.clone();
        let mut d = vec![1.0, 1.0, 1.0];
        s.transforms[2].apply_to(&mut n, &mut d).unwrap();
        assert_eq!(d, vec![1.0, 2.0f32.ln(), 1.0]);
        assert!(s.fills_missing("a"), "imputed first");
        assert!(!s.fills_missing("b"), "clip uses b first");
        assert!(!s.fills_missing("c"), "min_max uses c first");
        let mut dropped = s.clone();
        dropped.transforms.insert(
            0,
            Transform::Drop {
                columns: vec!["b".into()],
            },
        );
        assert!(dropped.fills_missing("b"));
        let mut bad = s.clone();
        bad.feature_names = names;
        assert!(bad.apply(&raw).unwrap_err().to_string().contains("corrupt"));
    }

    fn text(cells: &[Option<&str>]) -> TextColumn {
        TextColumn::from_cells(cells.iter().copied())
    }

    #[test]
    fn encoders_expand_text_columns_in_place() {
        let s = Schema {
            version: 1,
            input_columns: ["color", "x", "size", "notes"].map(String::from).to_vec(),
            feature_names: [
                "color=blue",
                "color=red",
                "x",
                "size",
                "notes#0",
                "notes#1",
                "notes#2",
            ]
            .map(String::from)
            .to_vec(),
            target: "y".into(),
            task: Task::Classification,
            image: None,
            class_labels: vec!["a".into(), "b".into()],
            transforms: vec![
                Transform::ImputeCategorical {
                    columns: vec!["size".into()],
                    strategy: "constant".into(),
                    values: vec!["M".into()],
                },
                Transform::OneHot {
                    columns: vec!["color".into()],
                    categories: vec![vec!["blue".into(), "red".into()]],
                },
                Transform::Ordinal {
                    columns: vec!["size".into()],
                    categories: vec![vec!["L".into(), "M".into(), "S".into()]],
                },
                Transform::HashText {
                    columns: vec!["notes".into()],
                    n_features: 3,
                },
                Transform::Scale {
                    columns: vec!["x".into()],
                    by: 2.0,
                },
            ],
        };
        assert_eq!(s.text_columns(), ["color", "size", "notes"]);
        // rows: red / 4 / missing size / "Late, late!"; green (unseen) / 6 / XL (unseen) / missing
        let raw = [f32::NAN, 4.0, f32::NAN, f32::NAN, 0.0, 6.0, 0.0, 0.0];
        let cols = vec![
            ("color".to_string(), text(&[Some("red"), Some("green")])),
            ("size".to_string(), text(&[None, Some("XL")])),
            ("notes".to_string(), text(&[Some("Late, late!"), None])),
        ];
        let late = bucket("late", 3);
        let mut row0 = vec![0.0, 1.0, 2.0, 1.0, 0.0, 0.0, 0.0];
        row0[4 + late] = 2.0;
        let row1 = vec![0.0, 0.0, 3.0, -1.0, 0.0, 0.0, 0.0];
        assert_eq!(
            s.apply_with_text(&raw, cols.clone()).unwrap(),
            [row0, row1].concat()
        );
        // without the text cells, the encoders say what is missing
        let e = s.apply(&raw).unwrap_err().to_string();
        assert!(e.contains("`size`") && e.contains("text"), "{e}");
        // a numeric transform on a text column is a corrupt schema
        let mut bad = s.clone();
        bad.transforms.insert(
            0,
            Transform::Log1p {
                columns: vec!["color".into()],
            },
        );
        let e = bad.apply_with_text(&raw, cols).unwrap_err().to_string();
        assert!(
            e.contains("log1p computes with column `color`, which holds text"),
            "{e}"
        );
    }
}
