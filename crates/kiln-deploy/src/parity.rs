//! The parity gate: ONNX Runtime's outputs against kiln-core's reference forward pass on
//! the same rows, batched identically (dynamic int8 quantization is batch-dependent).

use kiln_core::{Predictions, Predictor};
use serde::{Deserialize, Serialize};

/// One of the rows that differ most.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorstRow {
    /// Row index in the checked split.
    pub row: usize,
    /// Largest absolute probability difference in that row.
    pub max_abs_prob: f32,
    /// Native (reference) predicted class.
    pub native_class: u32,
    /// ONNX Runtime predicted class.
    pub onnx_class: u32,
}

/// Outcome of a parity check (an entry of parity.json).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParityReport {
    /// Rows compared.
    pub n_rows: usize,
    /// Rows per batch on both sides.
    pub batch: usize,
    /// Largest absolute difference of logits.
    pub max_abs_logit: f32,
    /// Largest absolute difference of probabilities.
    pub max_abs_prob: f32,
    /// Fraction of rows with the same argmax.
    pub argmax_agreement: f64,
    /// Tolerance on `max_abs_prob`.
    pub tolerance: f32,
    /// `max_abs_prob <= tolerance`.
    pub passed: bool,
    /// The rows that differ most (at most 5).
    pub worst_rows: Vec<WorstRow>,
}

/// |a - b|, where any NaN counts as an infinite difference (a NaN never passes parity).
fn abs_diff(a: f32, b: f32) -> f32 {
    let d = (a - b).abs();
    if d.is_nan() { f32::INFINITY } else { d }
}

/// Compares two sets of predictions row by row.
pub fn compare(
    native: &Predictions,
    onnx: &Predictions,
    batch: usize,
    tolerance: f32,
) -> ParityReport {
    let k = native.n_outputs.max(1);
    let mut max_abs_logit = 0.0f32;
    for (a, b) in native.logits.iter().zip(&onnx.logits) {
        max_abs_logit = max_abs_logit.max(abs_diff(*a, *b));
    }
    let (na, oa) = (native.argmax(), onnx.argmax());
    let mut rows: Vec<WorstRow> = native
        .probabilities
        .chunks_exact(k)
        .zip(onnx.probabilities.chunks_exact(k))
        .enumerate()
        .map(|(i, (a, b))| WorstRow {
            row: i,
            max_abs_prob: a
                .iter()
                .zip(b)
                .map(|(x, y)| abs_diff(*x, *y))
                .fold(0.0, f32::max),
            native_class: na[i],
            onnx_class: oa[i],
        })
        .collect();
    let size_ok = native.logits.len() == onnx.logits.len()
        && native.probabilities.len() == onnx.probabilities.len();
    let max_abs_prob = if size_ok {
        rows.iter().map(|r| r.max_abs_prob).fold(0.0, f32::max)
    } else {
        f32::INFINITY
    };
    let agree = na.iter().zip(&oa).filter(|(a, b)| a == b).count();
    rows.sort_by(|a, b| {
        b.max_abs_prob
            .total_cmp(&a.max_abs_prob)
            .then(a.row.cmp(&b.row))
    });
    rows.truncate(5);
    ParityReport {
        n_rows: native.n_rows,
        batch,
        max_abs_logit,
        max_abs_prob,
        argmax_agreement: agree as f64 / native.n_rows.max(1) as f64,
        tolerance,
        passed: size_ok && max_abs_prob <= tolerance,
        worst_rows: rows,
    }
}

/// Runs both predictors on `features` in batches of `batch` rows and compares them.
pub fn check_parity(
    native: &mut dyn Predictor,
    onnx: &mut dyn Predictor,
    features: &[f32],
    n_rows: usize,
    batch: usize,
    tolerance: f32,
) -> kiln_core::Result<ParityReport> {
    let a = native.predict_batched(features, n_rows, batch)?;
    let b = onnx.predict_batched(features, n_rows, batch)?;
    Ok(compare(&a, &b, batch, tolerance))
}
