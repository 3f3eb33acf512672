//! candidates.json (every compression candidate the optimize stage scored, and which it
//! chose) and latency.timings.json (their ONNX Runtime timings: measured, so kept out of
//! the stage's content hash).

use serde::{Deserialize, Serialize};

/// candidates.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidates {
    /// fp32 first, then each candidate in the order configured.
    pub candidates: Vec<Candidate>,
}

impl super::Artifact for Candidates {
    const KIND: &'static str = "kiln.candidates";
    const FILE: &'static str = "candidates.json";
}

impl Candidates {
    /// The chosen candidate, if one was.
    pub fn chosen(&self) -> Option<&Candidate> {
        self.candidates.iter().find(|c| c.chosen)
    }
}

/// One evaluated candidate (deterministic, no timings).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// `fp32` (the reference), or the candidate's name.
    pub name: String,
    /// Weights and biases.
    pub params: usize,
    /// Weights and biases that are not zero.
    pub nonzeros: usize,
    /// Bytes of tensor data.
    pub weight_bytes: usize,
    /// Size of its ONNX file (without class labels in the metadata).
    pub onnx_bytes: usize,
    /// Accuracy (R² for regression) on the validation split.
    pub valid_accuracy: f64,
    /// Drop of that score against fp32 (positive = worse).
    pub accuracy_drop: f64,
    /// Whether this candidate was chosen.
    pub chosen: bool,
    /// Why it was or was not chosen.
    pub reason: String,
}

/// latency.timings.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// One entry per candidate, in the order of candidates.json.
    pub latency: Vec<Latency>,
}

impl super::Artifact for Timings {
    const KIND: &'static str = "kiln.latency";
    const FILE: &'static str = "latency.timings.json";
}

/// A candidate's ONNX Runtime latency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Candidate name.
    pub name: String,
    /// Median milliseconds per call with 1 row.
    pub batch1_ms: f64,
    /// Median milliseconds per call with 1024 rows.
    pub batch1024_ms: f64,
    /// fp32's batch-1024 time divided by this one's (> 1 = faster).
    pub speedup_1024: f64,
    /// Set when the chosen candidate is slower than fp32 at batch 1024, with the reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slower_than_fp32: Option<String>,
}
