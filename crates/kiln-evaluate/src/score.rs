//! Scoring one variant on the test split: its predictions, the classification or
//! regression metrics, the difference to kiln's native forward pass on the same rows and
//! the main metric per slice.

use crate::{analysis, metrics};
use kiln_core::{Dataset, Predictions};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Scores of one variant: confusion.json holds one per variant, by name (read back by
/// `kiln ui`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VariantMetrics {
    /// Variant name (the stage id it came from).
    pub name: String,
    /// Who produced the predictions (`native`, `onnxruntime`).
    pub predictor: String,
    /// Every scalar metric by its metrics.json key (classification: accuracy,
    /// balanced_accuracy, macro_f1, weighted_f1, log_loss, top_k_accuracy, roc_auc,
    /// pr_auc, ece; regression: mse, rmse, mae, r2, mape).
    pub scalars: BTreeMap<String, f64>,
    /// Per-class precision / recall / F1 (empty for regression).
    pub per_class: Vec<metrics::ClassScores>,
    /// Confusion matrix, rows = truth, columns = prediction (empty for regression).
    pub confusion: Vec<Vec<u64>>,
    /// Metrics that could not be computed, and why (e.g. R² of a constant target).
    pub notes: Vec<String>,
    /// Against kiln's native forward pass on the same rows, when this variant ran
    /// elsewhere (ONNX Runtime): (max |Δ| of probabilities, or of predictions for
    /// regression; argmax agreement).
    pub vs_native: Option<(f64, f64)>,
    /// Main metric (accuracy or R²; RMSE for regression when R² is undefined) per value
    /// of the `slice_by` column: (raw value, rows, metric).
    pub slices: Vec<(f64, usize, f64)>,
}

/// What every variant is scored against: the targets of the test rows, the rows of
/// each slice (by raw value), the class names and `top_k`.
#[derive(Clone, Copy)]
pub(crate) struct Against<'a> {
    pub(crate) data: &'a Dataset,
    pub(crate) slices: &'a [(f64, Vec<usize>)],
    pub(crate) class_labels: &'a [String],
    pub(crate) top_k: usize,
}

/// Scores the variant `name` (run by `predictor`) from its predictions `p` and compares
/// them with `reference` (kiln's native forward pass on the same rows) when given.
pub(crate) fn variant(
    name: &str,
    predictor: &str,
    p: &Predictions,
    reference: Option<&Predictions>,
    against: &Against<'_>,
) -> VariantMetrics {
    let Against {
        data,
        slices,
        class_labels,
        top_k,
    } = *against;
    let regression = data.is_regression();
    let vs_native = reference.map(|r| {
        let (a, b) = if regression {
            (&r.logits, &p.logits)
        } else {
            (&r.probabilities, &p.probabilities)
        };
        let diff = a
            .iter()
            .zip(b.iter())
            .map(|(x, y)| f64::from((x - y).abs()))
            .fold(0.0, f64::max);
        let (ra, pa) = (r.argmax(), p.argmax());
        let agree = ra.iter().zip(&pa).filter(|(x, y)| x == y).count();
        (diff, agree as f64 / data.n_rows().max(1) as f64)
    });
    let slice_scores: Vec<(f64, usize, f64)> = slices
        .iter()
        .map(|(value, rows)| {
            let sub = analysis::subset(data, rows);
            let k = p.n_outputs.max(1);
            let logits: Vec<f32> = rows
                .iter()
                .flat_map(|&r| p.logits[r * k..(r + 1) * k].iter().copied())
                .collect();
            (*value, rows.len(), analysis::main_metric(&sub, &logits, k))
        })
        .collect();
    let mut v = VariantMetrics {
        name: name.to_string(),
        predictor: predictor.to_string(),
        scalars: BTreeMap::new(),
        per_class: Vec::new(),
        confusion: Vec::new(),
        notes: Vec::new(),
        vs_native,
        slices: slice_scores,
    };
    if regression {
        regression_metrics(&mut v, data, p);
    } else {
        classification_metrics(&mut v, data, p, class_labels, top_k);
    }
    v
}

/// MSE, RMSE, MAE, MAPE and R² (a note instead when R² is undefined).
fn regression_metrics(v: &mut VariantMetrics, data: &Dataset, p: &Predictions) {
    let r = metrics::regression(&data.values, &p.logits);
    v.scalars = BTreeMap::from([
        ("mse".to_string(), r.mse),
        ("rmse".to_string(), r.rmse),
        ("mae".to_string(), r.mae),
        ("mape".to_string(), r.mape),
    ]);
    match r.r2 {
        Ok(x) => {
            v.scalars.insert("r2".into(), x);
        }
        Err(why) => v.notes.push(why),
    }
}

/// The classification scalars, per-class scores and the confusion matrix.
fn classification_metrics(
    v: &mut VariantMetrics,
    data: &Dataset,
    p: &Predictions,
    class_labels: &[String],
    top_k: usize,
) {
    let k = class_labels.len();
    let pred = p.argmax();
    let cm = metrics::confusion_matrix(&data.labels, &pred, k);
    let per_class = metrics::per_class(&cm, class_labels);
    let (t, pr) = (&data.labels, &p.probabilities);
    let top = top_k.clamp(1, k.saturating_sub(1).max(1));
    let mut scalars = BTreeMap::from([
        ("accuracy".to_string(), metrics::accuracy(t, &pred)),
        (
            "balanced_accuracy".to_string(),
            metrics::balanced_accuracy(&cm),
        ),
        ("macro_f1".to_string(), metrics::macro_f1(&per_class)),
        ("weighted_f1".to_string(), metrics::weighted_f1(&per_class)),
        ("log_loss".to_string(), metrics::log_loss(t, pr, k)),
        (
            "top_k_accuracy".to_string(),
            metrics::top_k_accuracy(t, pr, k, top),
        ),
        ("ece".to_string(), metrics::ece(t, pr, k)),
    ]);
    if let Some(x) = metrics::one_vs_rest(t, pr, k, metrics::roc_auc) {
        scalars.insert("roc_auc".into(), x);
    }
    if let Some(x) = metrics::one_vs_rest(t, pr, k, metrics::average_precision) {
        scalars.insert("pr_auc".into(), x);
    }
    v.scalars = scalars;
    v.per_class = per_class;
    v.confusion = cm;
}

/// Logs a scored variant (after its plots): its notes as warnings, then its main
/// figures.
pub(crate) fn log_scored(v: &VariantMetrics, regression: bool) {
    let name = &v.name;
    for why in &v.notes {
        tracing::warn!(variant = %name, "{why}");
    }
    if regression {
        tracing::info!(variant = %name, rmse = v.scalars["rmse"], mae = v.scalars["mae"], "scored");
    } else {
        tracing::info!(variant = %name, accuracy = v.scalars["accuracy"], macro_f1 = v.scalars["macro_f1"], "scored");
    }
}
