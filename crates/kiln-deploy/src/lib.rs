//! kiln-deploy: exports models to ONNX (prost messages generated at build time from the
//! official onnx.proto, see [`onnx`]), runs them in ONNX Runtime through `ort`, and gates
//! the deployment on parity with kiln-core's reference forward pass. The stage writes
//! `model.onnx` (the `fp32` variant), `model.<variant>.onnx`, `parity.json` and
//! `schema.json` — the ONNX files only after every variant passed — and the pipeline adds
//! `model_card.md` ([`card`]). With `include_preprocessing` the fitted preprocessing is
//! baked into the graph ([`bake()`]).
//!
//! Over 600 lines with its doc example and tests; the stage's own code (config, input
//! checks, the variant loop and bundle writing) is about 500.
//!
//! ONNX Runtime is loaded at run time from `ORT_DYLIB_PATH` or from where
//! `cargo xtask setup` installs it (see [`runtime::library_path`]).
//!
//! ```
//! use kiln_core::{Activation, Dataset, ModelSpec, NativeModel, Predictor, Schema, Task, TensorStore};
//! use kiln_deploy::{Config, ExportMeta, OrtModel, Variant, export};
//!
//! // A 2 -> 2 linear classifier: logits = x @ [[1, 0], [0, 2]] + [0.5, 0].
//! let spec = ModelSpec::mlp(2, &[], Activation::Identity, Task::Classification, 2);
//! let mut w = TensorStore::default();
//! w.insert_f32("layers.0.weight", vec![2, 2], vec![1.0, 0.0, 0.0, 2.0]);
//! w.insert_f32("layers.0.bias", vec![2], vec![0.5, 0.0]);
//!
//! // Export and run it in ONNX Runtime.
//! let bytes = export(&spec, &w, &ExportMeta::default())?;
//! let mut onnx = OrtModel::from_bytes(&bytes, 1)?;
//! let p = onnx.predict(&[1.0, 1.0], 1)?;
//! assert_eq!(p.logits, vec![1.5, 2.0]);
//! assert_eq!(p.argmax(), vec![1]);
//!
//! // The deploy stage: export, check parity on a test split, write the bundle.
//! let schema = Schema {
//!     version: 1,
//!     input_columns: vec!["a".into(), "b".into()],
//!     feature_names: vec!["a".into(), "b".into()],
//!     target: "y".into(),
//!     task: Task::Classification,
//!     image: None,
//!     class_labels: vec!["no".into(), "yes".into()],
//!     transforms: vec![],
//! };
//! let test = Dataset {
//!     feature_names: schema.feature_names.clone(),
//!     target: "y".into(),
//!     features: vec![1.0, 1.0, 2.0, 0.5, -1.0, 3.0],
//!     labels: vec![1, 0, 1], values: vec![],
//! };
//! let model = NativeModel::new(spec, w)?;
//! let dir = tempfile::tempdir()?;
//! let variants = [Variant { name: "fp32".into(), model }];
//! let out = kiln_deploy::run(&Config::default(), &variants, &schema, &test, "hash", dir.path())?;
//! assert_eq!(out.variants[0].file, "model.onnx");
//! assert!(out.variants[0].parity.passed);
//! assert!(dir.path().join("model.onnx").is_file() && dir.path().join("parity.json").is_file());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod bake;
pub mod bundle;
pub mod card;
pub mod check;
pub mod export;
mod front;
pub mod onnx;
pub mod parity;
pub mod runtime;

pub use bake::{bake, is_baked};
pub use bundle::Bundle;
pub use card::{ColumnRange, ModelCard, VariantMetrics};
pub use export::{ExportMeta, build, decode, export, output_name};
pub use kiln_core::artifact::parity::Parity;
pub use parity::{ParityReport, WorstRow, check_model_parity, check_parity, compare};
pub use runtime::{OrtModel, library_path};

use kiln_core::dataset::SplitData;
use kiln_core::{Dataset, NativeModel, Schema, Task};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Errors of the deployment stage.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The stage configuration or its inputs are unusable.
    #[error("deploy config: {0}")]
    Config(String),
    /// The model cannot be exported.
    #[error("export: {0}")]
    Export(String),
    /// ONNX Runtime could not be loaded or failed.
    #[error("onnxruntime: {0}")]
    Runtime(String),
    /// A variant's ONNX outputs differ from kiln's reference forward pass (or a compressed
    /// variant disagrees with fp32); no ONNX file was written.
    #[error("parity check failed, nothing was deployed: {0}")]
    Parity(String),
    /// A deployed bundle cannot be opened or used as it is.
    #[error("{0}")]
    Bundle(String),
    /// Raw rows cannot become the model's features.
    #[error(transparent)]
    Features(#[from] kiln_core::FeatureError),
    /// Predicting, reading or writing artifacts failed.
    #[error(transparent)]
    Core(#[from] kiln_core::CoreError),
}

/// Result alias for this crate.
pub type Result<T, E = DeployError> = std::result::Result<T, E>;

/// Configuration of the deployment stage (the keys of a `uses = "deploy"` stage).
///
/// The opset may also be written as `onnx = { opset = 17 }`, the spelling of the design's
/// pipeline files; giving both is an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, try_from = "ConfigFile")]
pub struct Config {
    /// Opset of the default ONNX domain (17).
    pub opset: i64,
    /// Largest allowed |probability difference| between ONNX Runtime and kiln's reference
    /// forward pass (1e-5).
    pub parity_tolerance: f32,
    /// Rows per batch on both sides of the parity check (1000). Dynamic int8 quantization
    /// takes its range from the whole batch, so this changes int8 results.
    pub parity_batch: usize,
    /// Smallest allowed argmax agreement of a non-fp32 variant with the fp32 model on the
    /// test split (0.99).
    pub min_argmax_agreement: f64,
    /// Bake the fitted numeric preprocessing of schema.json (scale, standardize) into the
    /// ONNX graph in front of the first layer, so that its input `features` takes the raw
    /// input columns (false). The graph then carries the metadata `preprocessing = baked`,
    /// and `kiln predict` / `kiln serve` feed it raw values.
    pub include_preprocessing: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            opset: 17,
            parity_tolerance: 1e-5,
            parity_batch: kiln_core::EVAL_BATCH,
            min_argmax_agreement: 0.99,
            include_preprocessing: false,
        }
    }
}

impl Config {
    /// Values out of range, as (key path, message) pairs; empty when the config is usable.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        if !(export::MIN_OPSET..=export::MAX_OPSET).contains(&self.opset) {
            p.push((
                "opset".into(),
                format!(
                    "opset {} is not supported; use {} to {} (17 is the default)",
                    self.opset,
                    export::MIN_OPSET,
                    export::MAX_OPSET
                ),
            ));
        }
        if !(self.parity_tolerance.is_finite() && self.parity_tolerance >= 0.0) {
            p.push((
                "parity_tolerance".into(),
                format!(
                    "{} must be a finite number >= 0 (1e-5 is the default)",
                    self.parity_tolerance
                ),
            ));
        }
        if self.parity_batch == 0 {
            p.push((
                "parity_batch".into(),
                "0 rows per batch; use 1 or more (1000 is the default)".into(),
            ));
        }
        if !(0.0..=1.0).contains(&self.min_argmax_agreement) {
            p.push((
                "min_argmax_agreement".into(),
                format!(
                    "{} must be in [0, 1] (0.99 is the default)",
                    self.min_argmax_agreement
                ),
            ));
        }
        p
    }

    /// Checks that every value is usable ([`Config::problems`] as an error).
    pub fn validate(&self) -> Result<()> {
        let p = self.problems();
        if p.is_empty() {
            return Ok(());
        }
        Err(DeployError::Config(
            p.iter()
                .map(|(k, m)| format!("{k}: {m}"))
                .collect::<Vec<_>>()
                .join("; "),
        ))
    }
}

/// What a config file may hold: [`Config`]'s keys, with the opset also accepted as
/// `onnx = { opset = … }`.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    opset: Option<i64>,
    #[serde(default)]
    onnx: Option<OnnxTable>,
    #[serde(default)]
    parity_tolerance: Option<f32>,
    #[serde(default)]
    parity_batch: Option<usize>,
    #[serde(default)]
    min_argmax_agreement: Option<f64>,
    #[serde(default)]
    include_preprocessing: Option<bool>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct OnnxTable {
    #[serde(default)]
    opset: Option<i64>,
}

impl TryFrom<ConfigFile> for Config {
    type Error = String;

    fn try_from(f: ConfigFile) -> std::result::Result<Self, String> {
        let d = Config::default();
        let opset = match (f.opset, f.onnx.and_then(|o| o.opset)) {
            (Some(_), Some(_)) => {
                return Err("both `opset` and `onnx.opset` are set; keep one of them".into());
            }
            (Some(o), None) | (None, Some(o)) => o,
            (None, None) => d.opset,
        };
        // Ranges are checked by `Config::problems`, which names the key.
        Ok(Config {
            opset,
            parity_tolerance: f.parity_tolerance.unwrap_or(d.parity_tolerance),
            parity_batch: f.parity_batch.unwrap_or(d.parity_batch),
            min_argmax_agreement: f.min_argmax_agreement.unwrap_or(d.min_argmax_agreement),
            include_preprocessing: f.include_preprocessing.unwrap_or(d.include_preprocessing),
        })
    }
}

/// A model to deploy under a variant name (`fp32` becomes `model.onnx`, any other name
/// `model.<name>.onnx`).
#[derive(Debug, Clone)]
pub struct Variant {
    /// Variant name: letters, digits, `-` and `_`.
    pub name: String,
    /// The model, as kiln's reference forward pass runs it.
    pub model: NativeModel,
}

/// One deployed variant.
#[derive(Debug, Clone, PartialEq)]
pub struct VariantOutput {
    /// Variant name.
    pub name: String,
    /// File name in the output folder (`model.onnx` or `model.<name>.onnx`).
    pub file: String,
    /// Size of the ONNX file in bytes.
    pub bytes: usize,
    /// ONNX Runtime vs the reference forward pass.
    pub parity: ParityReport,
    /// Argmax agreement with the fp32 variant (None for fp32 itself).
    pub agreement_with_fp32: Option<f64>,
}

/// What the stage produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// The variants, in the order given.
    pub variants: Vec<VariantOutput>,
    /// The content of parity.json.
    pub parity: Parity,
}

/// File name of a variant: `model.onnx` for `fp32`, else `model.<variant>.onnx`.
pub fn file_name(variant: &str) -> String {
    if variant == "fp32" {
        "model.onnx".into()
    } else {
        format!("model.{variant}.onnx")
    }
}

fn check_inputs(variants: &[Variant], schema: &Schema, test: &SplitData<'_>) -> Result<()> {
    let bad = |m: String| Err(DeployError::Config(m));
    if variants.is_empty() {
        return bad("no model to deploy; give the stage an input model".into());
    }
    for (i, v) in variants.iter().enumerate() {
        let ok = !v.name.is_empty()
            && v.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok {
            return bad(format!(
                "variant name `{}` must be letters, digits, `-` or `_`",
                v.name
            ));
        }
        if variants[..i].iter().any(|o| o.name == v.name) {
            return bad(format!("variant `{}` is given twice; rename one", v.name));
        }
        if v.model.spec.input_dim != test.n_features() {
            return bad(format!(
                "variant `{}` takes {} features but the test split has {}; deploy the model with the dataset it was trained on",
                v.name,
                v.model.spec.input_dim,
                test.n_features()
            ));
        }
    }
    if variants.iter().any(|v| v.name != "fp32") && !variants.iter().any(|v| v.name == "fp32") {
        return bad(
            "compressed variants are checked against an `fp32` variant; add the uncompressed model as `fp32`".into(),
        );
    }
    if schema.feature_names != test.feature_names() {
        return bad(
            "the schema's feature names differ from the test split's; pass the dataset's own schema.json".into(),
        );
    }
    if let SplitData::Memory(d) = test {
        d.validate()?;
    }
    if test.n_rows() == 0 {
        return bad("the test split is empty; parity needs rows to compare".into());
    }
    Ok(())
}

/// The deploy stage: exports every variant, loads each export in ONNX Runtime (from
/// memory), checks it against kiln's reference forward pass on the whole `test` split
/// (both sides batched by `config.parity_batch`), checks each non-fp32 variant's argmax
/// agreement with fp32, and writes `parity.json` into `out_dir`. Only when every check
/// passed does it also write the ONNX files and `schema.json`; otherwise it removes any
/// earlier ONNX file of these variants from `out_dir` and returns [`DeployError::Parity`]
/// naming the worst rows.
pub fn run(
    config: &Config,
    variants: &[Variant],
    schema: &Schema,
    test: &Dataset,
    pipeline_hash: &str,
    out_dir: &Path,
) -> Result<Output> {
    run_with_exporter(
        config,
        variants,
        schema,
        test,
        pipeline_hash,
        out_dir,
        &|m: &NativeModel, meta: &ExportMeta| export(&m.spec, &m.weights, meta),
    )
}

/// [`run`] with another exporter in place of [`export()`] — for an exporter of one's own, or
/// for tests that hand the gate a faulty export and expect it to refuse.
pub fn run_with_exporter(
    config: &Config,
    variants: &[Variant],
    schema: &Schema,
    test: &Dataset,
    pipeline_hash: &str,
    out_dir: &Path,
    exporter: &dyn Fn(&NativeModel, &ExportMeta) -> Result<Vec<u8>>,
) -> Result<Output> {
    run_split(
        config,
        variants,
        schema,
        SplitData::Memory(test),
        pipeline_hash,
        out_dir,
        exporter,
    )
}

/// [`run_with_exporter`] on a test split held in memory or streamed shard by shard
/// ([`SplitData`]): every variant's parity is checked part by part (each part batched
/// by `config.parity_batch` on both sides) and the reports merged, so only one part's
/// features are held at a time.
pub fn run_split(
    config: &Config,
    variants: &[Variant],
    schema: &Schema,
    test: SplitData<'_>,
    pipeline_hash: &str,
    out_dir: &Path,
    exporter: &dyn Fn(&NativeModel, &ExportMeta) -> Result<Vec<u8>>,
) -> Result<Output> {
    let _span = tracing::info_span!("deploy", variants = variants.len()).entered();
    config.validate()?;
    check_inputs(variants, schema, &test)?;
    let meta = ExportMeta {
        class_labels: schema.class_labels.clone(),
        feature_names: schema.feature_names.clone(),
        kiln_version: kiln_core::KILN_VERSION.to_string(),
        pipeline_hash: pipeline_hash.to_string(),
        opset: config.opset,
    };
    let n = test.n_rows();
    let mut exported = Vec::new();
    for v in variants {
        let mut bytes = exporter(&v.model, &meta)?;
        if config.include_preprocessing {
            let mut m = decode(&bytes)?;
            bake::bake(&mut m, schema)?;
            bytes = prost::Message::encode_to_vec(&m);
        }
        let onnx = OrtModel::from_bytes(&bytes, 1)?;
        exported.push((v, bytes, onnx));
    }
    // A streamed regressor's differences are relative to the spread of its predictions
    // over the whole split: one pass of the reference first.
    let scales: Vec<Option<Vec<f32>>> = match test {
        SplitData::Shards(..) if schema.task == Task::Regression => variants
            .iter()
            .map(|v| parity::split_scales(&v.model, &test, config.parity_batch).map(Some))
            .collect::<Result<_>>()?,
        _ => vec![None; variants.len()],
    };
    let fp32 = variants.iter().position(|v| v.name == "fp32");
    let mut reports: Vec<Option<ParityReport>> = vec![None; variants.len()];
    let mut agree = vec![0usize; variants.len()];
    test.for_each_part(&mut |part: &Dataset, first| -> Result<()> {
        part.validate()?;
        // A baked model takes raw rows: ONNX Runtime gets them, the reference pass gets
        // what `Schema::apply` makes of them.
        let baked = if config.include_preprocessing {
            let raw = bake::unapply(schema, &part.features)?;
            Some((schema.apply(&raw)?, raw))
        } else {
            None
        };
        let x: (&[f32], &[f32]) = match &baked {
            Some((f, raw)) => (f, raw),
            None => (&part.features, &part.features),
        };
        let mut classes = Vec::with_capacity(variants.len());
        for (i, (v, _, onnx)) in exported.iter_mut().enumerate() {
            let (report, native) = parity::check_model_parity_scaled(
                &v.model,
                onnx,
                x,
                part.n_rows(),
                config.parity_batch,
                config.parity_tolerance,
                scales[i].as_deref(),
            )?;
            reports[i] = Some(match reports[i].take() {
                None => report,
                Some(before) => parity::merge(before, report, first),
            });
            classes.push(native.argmax());
        }
        if let Some(f) = fp32 {
            for (i, c) in classes.iter().enumerate() {
                agree[i] += classes[f].iter().zip(c).filter(|(a, b)| a == b).count();
            }
        }
        Ok(())
    })?;
    let mut checked = Vec::new();
    for (((v, bytes, _), report), same) in exported.into_iter().zip(reports).zip(&agree) {
        let Some(report) = report else {
            return Err(DeployError::Parity(
                "the test split has no rows to compare".into(),
            ));
        };
        tracing::info!(
            variant = %v.name,
            bytes = bytes.len(),
            max_abs_prob = report.max_abs_prob,
            max_abs_logit = report.max_abs_logit,
            passed = report.passed,
            "parity"
        );
        checked.push((v, bytes, report, *same as f64 / n as f64));
    }

    let mut failures = Vec::new();
    let mut parity = Parity {
        variants: BTreeMap::new(),
        agreement_with_fp32: BTreeMap::new(),
        min_argmax_agreement: config.min_argmax_agreement,
        passed: false,
        preprocessing_baked: config.include_preprocessing,
    };
    let mut outputs = Vec::new();
    for (v, bytes, report, same) in &checked {
        if !report.passed {
            let by = match v.model.spec.task {
                Task::Classification => format!(
                    "{:.3e} in probabilities ({:.3e} in logits)",
                    report.max_abs_prob, report.max_abs_logit
                ),
                Task::Regression => format!(
                    "{:.3e} relative to max(|prediction|, the predictions' std, 1) ({:.3e} absolute)",
                    report.worst_rows.first().map_or(0.0, |r| r.diff),
                    report.max_abs_logit
                ),
            };
            failures.push(format!(
                "{}: ONNX Runtime differs from the reference by up to {by}, tolerance {:.1e}; worst rows: {}",
                v.name,
                report.tolerance,
                report.worst_rows_text(v.model.spec.task)
            ));
        }
        let agreement = match (fp32, v.name.as_str()) {
            // pruned variants compute another function on purpose (their accuracy budget
            // is the optimize stage's); quantized ones must agree with fp32
            (Some(_), name) if name != "fp32" && v.model.spec.pruning.is_none() => {
                let a = *same;
                if a < config.min_argmax_agreement {
                    failures.push(format!(
                        "{}: argmax agreement with fp32 {a:.4} < {}",
                        v.name, config.min_argmax_agreement
                    ));
                }
                parity.agreement_with_fp32.insert(v.name.clone(), a);
                Some(a)
            }
            _ => None,
        };
        parity.variants.insert(v.name.clone(), report.clone());
        outputs.push(VariantOutput {
            name: v.name.clone(),
            file: file_name(&v.name),
            bytes: bytes.len(),
            parity: report.clone(),
            agreement_with_fp32: agreement,
        });
    }

    std::fs::create_dir_all(out_dir).map_err(|e| kiln_core::CoreError::io(out_dir, e))?;
    parity.passed = failures.is_empty();
    if !parity.passed {
        for (v, ..) in &checked {
            let stale = out_dir.join(file_name(&v.name));
            if stale.is_file() {
                std::fs::remove_file(&stale).map_err(|e| kiln_core::CoreError::io(&stale, e))?;
            }
        }
        kiln_core::artifact::save(out_dir, &parity)?;
        return Err(DeployError::Parity(format!(
            "{}; see {} and re-export from the same weights",
            failures.join("; "),
            out_dir.join("parity.json").display()
        )));
    }
    for (v, bytes, ..) in &checked {
        kiln_core::atomic_write(&out_dir.join(file_name(&v.name)), bytes)?;
    }
    kiln_core::write_json(&out_dir.join("schema.json"), schema)?;
    kiln_core::artifact::save(out_dir, &parity)?;
    kiln_core::artifact::save(
        out_dir,
        &kiln_core::artifact::bundle::BundleManifest {
            kiln_version: kiln_core::KILN_VERSION.to_string(),
            stage_hash: pipeline_hash.to_string(),
            models: outputs
                .iter()
                .map(|o| kiln_core::artifact::bundle::BundleModel {
                    variant: o.name.clone(),
                    file: o.file.clone(),
                    bytes: o.bytes as u64,
                })
                .collect(),
            preprocessing_baked: config.include_preprocessing,
        },
    )?;
    Ok(Output {
        variants: outputs,
        parity,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Stage {
        #[allow(dead_code)]
        stage: Config,
    }

    #[test]
    fn config_defaults_and_both_opset_spellings() {
        let c: Config = serde_json::from_str("{}").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(
            (
                c.opset,
                c.parity_tolerance,
                c.parity_batch,
                c.min_argmax_agreement
            ),
            (17, 1e-5, 1000, 0.99)
        );
        let c: Config = serde_json::from_str(r#"{"opset": 18, "parity_batch": 64}"#).unwrap();
        assert_eq!((c.opset, c.parity_batch), (18, 64));
        let c: Config = serde_json::from_str(r#"{"onnx": {"opset": 19}}"#).unwrap();
        assert_eq!((c.opset, c.include_preprocessing), (19, false));
        let c: Config = serde_json::from_str(r#"{"include_preprocessing": true}"#).unwrap();
        assert!(c.include_preprocessing && c.problems().is_empty());
        // Round trip through the flat form.
        let back: Config = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        for (text, want) in [
            (
                r#"{"opset": 17, "onnx": {"opset": 17}}"#,
                "keep one of them",
            ),
            (
                r#"{"parity_tolerence": 1e-4}"#,
                "unknown field `parity_tolerence`",
            ),
            (
                r#"{"onnx": {"include_preprocessing": true}}"#,
                "unknown field",
            ),
        ] {
            let e = serde_json::from_str::<Stage>(&format!(r#"{{"stage": {text}}}"#))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains(want), "{text}: {e}");
        }
        // Out-of-range values parse, and `problems` names their keys.
        let c: Config = serde_json::from_str(
            r#"{"opset": 9, "parity_batch": 0, "parity_tolerance": -1, "min_argmax_agreement": 2}"#,
        )
        .unwrap();
        let problems = c.problems();
        let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "opset",
                "parity_tolerance",
                "parity_batch",
                "min_argmax_agreement"
            ]
        );
        assert!(problems[0].1.contains("opset 9 is not supported"));
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.starts_with("deploy config: opset: opset 9") && e.contains("; parity_batch: 0 rows"),
            "{e}"
        );
        assert!(Config::default().problems().is_empty());
    }

    #[test]
    fn file_names_follow_the_artifact_contract() {
        assert_eq!(file_name("fp32"), "model.onnx");
        assert_eq!(file_name("int8"), "model.int8.onnx");
    }

    #[test]
    fn inputs_are_checked_before_any_work() {
        use kiln_core::{Activation, ModelSpec, Task, TensorStore};
        let spec = ModelSpec::mlp(2, &[], Activation::Identity, Task::Classification, 2);
        let mut w = TensorStore::default();
        w.insert_f32("layers.0.weight", vec![2, 2], vec![1.0, 0.0, 0.0, 1.0]);
        w.insert_f32("layers.0.bias", vec![2], vec![0.0, 0.0]);
        let model = NativeModel::new(spec, w).unwrap();
        let schema = Schema {
            version: 1,
            input_columns: vec!["a".into(), "b".into()],
            feature_names: vec!["a".into(), "b".into()],
            target: "y".into(),
            task: Task::Classification,
            image: None,
            class_labels: vec!["0".into(), "1".into()],
            transforms: vec![],
        };
        let test = Dataset {
            feature_names: schema.feature_names.clone(),
            target: "y".into(),
            features: vec![1.0, 2.0],
            labels: vec![1],
            values: vec![],
        };
        let v = |name: &str| Variant {
            name: name.into(),
            model: model.clone(),
        };
        let err = |vs: &[Variant], t: &Dataset| {
            check_inputs(vs, &schema, &SplitData::Memory(t))
                .unwrap_err()
                .to_string()
        };
        assert!(err(&[], &test).contains("no model to deploy"));
        assert!(err(&[v("fp32"), v("fp32")], &test).contains("given twice"));
        assert!(err(&[v("../x")], &test).contains("must be letters"));
        assert!(err(&[v("int8")], &test).contains("add the uncompressed model as `fp32`"));
        let mut nan = test.clone();
        nan.features[0] = f32::NAN;
        assert!(err(&[v("fp32")], &nan).contains("add an impute or clip step"));
        let empty = Dataset {
            features: vec![],
            labels: vec![],
            ..test.clone()
        };
        assert!(err(&[v("fp32")], &empty).contains("test split is empty"));
        assert!(check_inputs(&[v("fp32"), v("int8")], &schema, &SplitData::Memory(&test)).is_ok());
        let e = run(
            &Config {
                parity_batch: 0,
                ..Config::default()
            },
            &[v("fp32")],
            &schema,
            &test,
            "h",
            Path::new("/nonexistent/out"),
        )
        .unwrap_err();
        assert!(matches!(e, DeployError::Config(_)), "{e}");
    }
}
