//! metrics.json: every metric of every evaluated variant on the test split.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// metrics.json.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Variant (the stage it came from) -> metric name -> value.
    pub variants: BTreeMap<String, BTreeMap<String, f64>>,
    /// Baseline (`majority`, `logistic`, `mean`, `ridge`) -> metric name -> value, fitted
    /// on the training split and scored on the same test rows (none when switched off).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub baselines: BTreeMap<String, BTreeMap<String, f64>>,
}

impl super::Artifact for Metrics {
    const KIND: &'static str = "kiln.metrics";
    const FILE: &'static str = "metrics.json";
}

impl Metrics {
    /// A variant's metric, if it was measured.
    pub fn get(&self, variant: &str, metric: &str) -> Option<f64> {
        self.variants.get(variant)?.get(metric).copied()
    }

    /// True when the variants were scored as regressors (they have `mse`).
    pub fn is_regression(&self) -> bool {
        self.variants
            .values()
            .chain(self.baselines.values())
            .any(|m| m.contains_key("mse"))
    }

    /// The metrics a summary shows, (key, title): accuracy and macro F1 for classifiers,
    /// RMSE, MAE and R² for regressors.
    pub fn main(&self) -> &'static [(&'static str, &'static str)] {
        if self.is_regression() {
            &[("rmse", "RMSE"), ("mae", "MAE"), ("r2", "R²")]
        } else {
            &[("accuracy", "accuracy"), ("macro_f1", "macro F1")]
        }
    }
}
