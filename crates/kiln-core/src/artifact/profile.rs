//! profile.json: what a user checks before trusting the data: rows per split, rows
//! dropped and added, class balance, and per raw column its type, missing share and range.

use serde::{Deserialize, Serialize};

/// profile.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Rows per split.
    pub rows: SplitCounts,
    /// Number of feature columns.
    pub n_features: usize,
    /// Rows per class label in the train split.
    pub train_class_counts: Vec<(String, usize)>,
    /// Per raw feature column: min, max, mean over the raw train split.
    pub columns: Vec<ColumnProfile>,
    /// Rows removed before the split, by reason.
    pub dropped_rows: DroppedRows,
    /// Train rows before and after augmentation (the class counts above are before).
    pub augmentation: AugmentCounts,
    /// Image files skipped by `skip_unreadable`, with the reason (none otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_files: Vec<SkippedFile>,
}

impl super::Artifact for Profile {
    const KIND: &'static str = "kiln.profile";
    const FILE: &'static str = "profile.json";
}

/// Row counts of the three splits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitCounts {
    /// Training rows.
    pub train: usize,
    /// Validation rows.
    pub valid: usize,
    /// Test rows.
    pub test: usize,
}

/// Summary of one raw feature column on the train split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnProfile {
    /// Column name.
    pub name: String,
    /// The column's type as read (polars' name for it, e.g. `i64`, `f64`, `str`).
    pub dtype: String,
    /// Share of missing cells, in [0, 1].
    pub null_share: f64,
    /// Distinct non-missing values.
    pub distinct: usize,
    /// True when `distinct` is a HyperLogLog estimate (a streamed preprocess counts
    /// exactly up to 65,536 values a column, then estimates, within about 1 %).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub distinct_estimated: bool,
    /// Smallest value (NaN, written as null, for a text column).
    #[serde(with = "nullable_f64")]
    pub min: f64,
    /// Largest value (as `min`).
    #[serde(with = "nullable_f64")]
    pub max: f64,
    /// Mean value (as `min`).
    #[serde(with = "nullable_f64")]
    pub mean: f64,
    /// Missing cells.
    pub missing: usize,
}

/// Rows the stage removed before the split (profile.json `dropped_rows`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DroppedRows {
    /// Rows whose target cell is empty.
    pub null_target: usize,
    /// Rows a `drop_nulls` step removed.
    pub null_features: usize,
    /// Rows a `dedupe` step removed.
    pub duplicates: usize,
    /// Image files an images source with `skip_unreadable` could not read or decode.
    #[serde(default)]
    pub unreadable_files: usize,
}

/// A file an images source skipped (`skip_unreadable`), and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedFile {
    /// The file.
    pub file: String,
    /// What reading or decoding it said.
    pub reason: String,
}

impl DroppedRows {
    /// Every dropped row.
    pub fn total(&self) -> usize {
        self.null_target + self.null_features + self.duplicates + self.unreadable_files
    }
}

/// Rows added to the train split (profile.json `augmentation`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AugmentCounts {
    /// Train rows before augmentation.
    pub before: usize,
    /// Rows added by oversampling.
    pub oversampled: usize,
    /// Augmented copies added.
    pub copies: usize,
    /// Train rows after augmentation.
    pub after: usize,
}

/// An f64 that JSON holds as a number, or as null for NaN (JSON has no NaN).
pub mod nullable_f64 {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes NaN and infinities as null (what serde_json writes for them anyway).
    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else {
            s.serialize_none()
        }
    }

    /// Reads null as NaN.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}
