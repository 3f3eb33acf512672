//! verdict.json: whether the evaluated models are blessed for deployment, and every gate
//! that decided it.

use serde::{Deserialize, Serialize};

/// verdict.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// True when every gate passed (or there were none).
    pub blessed: bool,
    /// Human-readable summary.
    pub reason: String,
    /// Every gate checked.
    #[serde(default)]
    pub gates: Vec<GateResult>,
}

impl super::Artifact for Verdict {
    const KIND: &'static str = "kiln.verdict";
    const FILE: &'static str = "verdict.json";
}

/// One gate checked on one variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateResult {
    /// Variant checked.
    pub variant: String,
    /// Metric name.
    pub metric: String,
    /// The condition as written.
    pub condition: String,
    /// The measured value (NaN, written as null, when the variant has no such metric).
    #[serde(with = "super::profile::nullable_f64")]
    pub value: f64,
    /// Whether it held.
    pub passed: bool,
}
