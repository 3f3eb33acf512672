//! kiln-deploy: exports models to ONNX (hand-written prost messages), runs them in ONNX
//! Runtime through `ort`, and gates the deployment on parity with kiln-core's reference
//! forward pass. Writes `model.onnx` (fp32), `model.<variant>.onnx`, `parity.json` and
//! `schema.json` — only after every variant passed.
//!
//! ```
//! use kiln_core::{Activation, ModelSpec, Predictor, Task, TensorStore};
//! use kiln_deploy::{ExportMeta, OrtModel, export};
//! let spec = ModelSpec::mlp(2, &[], Activation::Identity, Task::Classification, 2);
//! let mut w = TensorStore::default();
//! w.insert_f32("layers.0.weight", vec![2, 2], vec![1.0, 0.0, 0.0, 2.0]);
//! w.insert_f32("layers.0.bias", vec![2], vec![0.5, 0.0]);
//! let bytes = export(&spec, &w, &ExportMeta { opset: 17, ..Default::default() }).unwrap();
//! let mut model = OrtModel::from_bytes(&bytes, 1).unwrap();
//! let p = model.predict(&[1.0, 1.0], 1).unwrap();
//! assert_eq!(p.logits, vec![1.5, 2.0]);
//! ```

pub mod export;
pub mod onnx;
pub mod parity;
pub mod runtime;

pub use export::{ExportMeta, decode, export};
pub use parity::{ParityReport, check_parity};
pub use runtime::{OrtModel, library_path};

use kiln_core::{Dataset, EVAL_BATCH, NativeModel, Predictor, Schema};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Errors of the deployment stage.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The model cannot be exported.
    #[error("export: {0}")]
    Export(String),
    /// ONNX Runtime could not be loaded or failed.
    #[error("{0}")]
    Runtime(String),
    /// A variant's ONNX outputs differ from kiln's reference forward pass.
    #[error("parity check failed, nothing was deployed: {0}")]
    Parity(String),
    /// Reading or writing artifacts failed.
    #[error(transparent)]
    Core(#[from] kiln_core::CoreError),
}

/// Result alias for this crate.
pub type Result<T, E = DeployError> = std::result::Result<T, E>;

/// ONNX export settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnnxConfig {
    /// Opset of the default domain (17).
    #[serde(default = "default_opset")]
    pub opset: i64,
}

fn default_opset() -> i64 {
    17
}

impl Default for OnnxConfig {
    fn default() -> Self {
        OnnxConfig {
            opset: default_opset(),
        }
    }
}

/// Configuration of the deployment stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Export settings.
    #[serde(default)]
    pub onnx: OnnxConfig,
    /// Largest allowed |probability difference| between ONNX Runtime and the reference.
    #[serde(default = "default_tol")]
    pub parity_tolerance: f32,
    /// Smallest allowed argmax agreement of a compressed variant with fp32.
    #[serde(default = "default_agreement")]
    pub min_argmax_agreement: f64,
}

fn default_tol() -> f32 {
    1e-5
}
fn default_agreement() -> f64 {
    0.995
}

impl Default for Config {
    fn default() -> Self {
        Config {
            onnx: OnnxConfig::default(),
            parity_tolerance: default_tol(),
            min_argmax_agreement: default_agreement(),
        }
    }
}

/// A model to export under a variant name (`fp32` becomes `model.onnx`).
#[derive(Debug, Clone)]
pub struct Variant {
    /// Variant name.
    pub name: String,
    /// The model.
    pub model: NativeModel,
}

/// parity.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ParityFile {
    /// Per variant: ONNX Runtime vs the reference forward pass.
    pub variants: BTreeMap<String, ParityReport>,
    /// Per non-fp32 variant: argmax agreement with the fp32 reference.
    pub agreement_with_fp32: BTreeMap<String, f64>,
}

/// What the stage produced.
#[derive(Debug, Clone)]
pub struct Output {
    /// File name and size in bytes per variant.
    pub files: Vec<(String, usize)>,
    /// The parity figures.
    pub parity: ParityFile,
}

/// File name of a variant.
pub fn file_name(variant: &str) -> String {
    if variant == "fp32" {
        "model.onnx".into()
    } else {
        format!("model.{variant}.onnx")
    }
}

/// Exports every variant, checks each against the reference forward pass on the whole
/// `test` split, and writes the bundle into `out_dir` only if all checks pass.
pub fn run(
    config: &Config,
    variants: &[Variant],
    schema: &Schema,
    test: &Dataset,
    pipeline_hash: &str,
    out_dir: &Path,
) -> Result<Output> {
    let _span = tracing::info_span!("deploy").entered();
    let meta = ExportMeta {
        class_labels: schema.class_labels.clone(),
        feature_names: schema.feature_names.clone(),
        pipeline_hash: pipeline_hash.to_string(),
        opset: config.onnx.opset,
    };
    let mut parity = ParityFile {
        variants: BTreeMap::new(),
        agreement_with_fp32: BTreeMap::new(),
    };
    let mut files = Vec::new();
    let mut failures = Vec::new();
    let fp32_pred = match variants.iter().find(|v| v.name == "fp32") {
        Some(v) => Some(
            v.model
                .clone()
                .predict_batched(&test.features, test.n_rows(), EVAL_BATCH)?
                .argmax(),
        ),
        None => None,
    };
    for v in variants {
        let bytes = export(&v.model.spec, &v.model.weights, &meta)?;
        let mut ort_model = OrtModel::from_bytes(&bytes, 1)?;
        let mut native = v.model.clone();
        let report = check_parity(
            &mut native,
            &mut ort_model,
            &test.features,
            test.n_rows(),
            EVAL_BATCH,
            config.parity_tolerance,
        )?;
        tracing::info!(variant = %v.name, max_abs_prob = report.max_abs_prob, agreement = report.argmax_agreement, "parity");
        if !report.passed {
            let rows: Vec<String> = report
                .worst_rows
                .iter()
                .map(|r| format!("row {} |dp| {:.3e}", r.row, r.max_abs_prob))
                .collect();
            failures.push(format!(
                "{}: max |dp| {:.3e} > {:.0e} (worst: {})",
                v.name,
                report.max_abs_prob,
                config.parity_tolerance,
                rows.join(", ")
            ));
        }
        if let (Some(fp), true) = (&fp32_pred, v.name != "fp32") {
            let mine = native
                .predict_batched(&test.features, test.n_rows(), EVAL_BATCH)?
                .argmax();
            let agree = fp.iter().zip(&mine).filter(|(a, b)| a == b).count() as f64
                / test.n_rows().max(1) as f64;
            if agree < config.min_argmax_agreement {
                failures.push(format!(
                    "{}: argmax agreement with fp32 {:.4} < {}",
                    v.name, agree, config.min_argmax_agreement
                ));
            }
            parity.agreement_with_fp32.insert(v.name.clone(), agree);
        }
        parity.variants.insert(v.name.clone(), report);
        files.push((file_name(&v.name), bytes));
    }
    std::fs::create_dir_all(out_dir).map_err(|e| kiln_core::CoreError::io(out_dir, e))?;
    kiln_core::write_json(&out_dir.join("parity.json"), &parity)?;
    if !failures.is_empty() {
        return Err(DeployError::Parity(failures.join("; ")));
    }
    for (name, bytes) in &files {
        kiln_core::atomic_write(&out_dir.join(name), bytes)?;
    }
    kiln_core::write_json(&out_dir.join("schema.json"), schema)?;
    Ok(Output {
        files: files.into_iter().map(|(n, b)| (n, b.len())).collect(),
        parity,
    })
}
