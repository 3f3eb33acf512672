//! parity.json: ONNX Runtime against kiln's reference forward pass for every deployed
//! variant (the deploy stage's gate), and each variant's argmax agreement with fp32.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// parity.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Parity {
    /// Per variant: ONNX Runtime vs kiln's reference forward pass on the test split.
    pub variants: BTreeMap<String, ParityReport>,
    /// Per non-fp32 variant that is not pruned: fraction of test rows whose reference
    /// argmax equals the fp32 model's.
    pub agreement_with_fp32: BTreeMap<String, f64>,
    /// The required argmax agreement with fp32.
    pub min_argmax_agreement: f64,
    /// Whether every check passed (the ONNX files were written).
    pub passed: bool,
    /// The preprocessing is in the graph: ONNX Runtime ran on raw rows (the test split's
    /// transforms undone) and the reference pass on `Schema::apply` of those rows.
    #[serde(default)]
    pub preprocessing_baked: bool,
}

/// One of the rows that differ most.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorstRow {
    /// Row index in the checked rows.
    pub row: usize,
    /// Largest absolute probability difference in that row (for regression models,
    /// which have no probabilities: the prediction difference relative to
    /// `max(1, |native prediction|, the std of the native predictions)`; `f32::MAX` for a
    /// non-finite native prediction).
    pub diff: f32,
    /// Largest absolute logit difference in that row.
    pub max_abs_logit: f32,
    /// Class predicted by the reference (`native`) side.
    pub native_class: u32,
    /// Class predicted by the ONNX side.
    pub onnx_class: u32,
}

/// Outcome of a parity check (one entry of parity.json).
///
/// A difference that is NaN or infinite (a NaN output on one side) is recorded as
/// `f32::MAX`, so it never passes and still serialises as a JSON number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParityReport {
    /// Name of the reference predictor (e.g. `native`).
    pub native: String,
    /// Name of the predictor under test (e.g. `onnxruntime`).
    pub onnx: String,
    /// Rows compared.
    pub n_rows: usize,
    /// Rows per batch, the same on both sides.
    pub batch: usize,
    /// Largest absolute difference of logits.
    pub max_abs_logit: f32,
    /// Largest absolute difference of probabilities (0 for regression).
    pub max_abs_prob: f32,
    /// Fraction of rows whose argmax agrees.
    pub argmax_agreement: f64,
    /// The tolerance on `max_abs_prob` (for regression: on the largest prediction
    /// difference relative to `max(1, |native prediction|, the std of the native
    /// predictions)`, so a target in the thousands is held to fp32's relative precision
    /// at its own scale, not to an absolute 1e-5).
    pub tolerance: f32,
    /// `max_abs_prob <= tolerance` (the relative prediction difference for regression)
    /// and both sides produced the same number of rows and outputs.
    pub passed: bool,
    /// The rows that differ most, largest first (at most five).
    pub worst_rows: Vec<WorstRow>,
    /// Rows of an int8 model with smooth activations or layer norm that are beyond
    /// `tolerance` but within it once one quantized activation of the reference moves by
    /// one step (a last-bit difference of `exp` / `tanh` / `erf` put a value on the
    /// other side of a rounding boundary; `kiln_core::tolerance`). They pass.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rounding_rows: Vec<usize>,
}

impl ParityReport {
    /// A one-line description of the worst rows, for error messages.
    pub fn worst_rows_text(&self, task: crate::Task) -> String {
        self.worst_rows
            .iter()
            .map(|r| match task {
                crate::Task::Classification => format!(
                    "row {} (|dp| {:.3e}, class {} vs {})",
                    r.row, r.diff, r.native_class, r.onnx_class
                ),
                crate::Task::Regression => format!("row {} (relative {:.3e})", r.row, r.diff),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl super::Artifact for Parity {
    const KIND: &'static str = "kiln.parity";
    const FILE: &'static str = "parity.json";
}
