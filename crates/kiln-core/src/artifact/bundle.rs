//! bundle.json: what a deploy folder holds and which format it is, so that `kiln predict`,
//! `kiln serve` and `kiln_deploy::Bundle` can refuse a bundle they cannot read and say how
//! to re-export it.

use serde::{Deserialize, Serialize};

/// bundle.json in a deploy folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleManifest {
    /// The kiln version that wrote it.
    pub kiln_version: String,
    /// The deploy stage's cache key (also in the ONNX metadata).
    pub stage_hash: String,
    /// The ONNX files, `model.onnx` (fp32) first, each with its variant name.
    pub models: Vec<BundleModel>,
    /// The preprocessing is in the graph (`include_preprocessing = true`).
    pub preprocessing_baked: bool,
}

/// One ONNX file of a bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleModel {
    /// Variant name (`fp32`, `int8`, …).
    pub variant: String,
    /// File name in the bundle.
    pub file: String,
    /// Its size in bytes.
    pub bytes: u64,
}

impl super::Artifact for BundleManifest {
    const KIND: &'static str = "kiln.bundle";
    const FILE: &'static str = "bundle.json";
}
