//! kiln-optimize: compresses a trained model. Candidates — int8 quantization (dynamic or
//! static activations, weights per channel or per tensor), magnitude pruning to an exact
//! sparsity, structured pruning that removes hidden units, optionally in steps with
//! fine-tuning between them, and combinations — are each scored on the validation split,
//! exported to ONNX for their size and timed in ONNX Runtime at batch 1 and 1024; the
//! smallest one within `max_accuracy_drop` is chosen (latency never decides, so reruns
//! agree) and written as the stage's model.
//!
//! ```
//! use kiln_core::{Activation, Dataset, ModelSpec, NativeModel, Task, TensorStore};
//! use kiln_optimize::{Config, QuantizeConfig, run};
//! let spec = ModelSpec::mlp(2, &[], Activation::Identity, Task::Classification, 2);
//! let mut w = TensorStore::default();
//! w.insert_f32("layers.0.weight", vec![2, 2], vec![1.0, -1.0, -0.5, 0.5]);
//! w.insert_f32("layers.0.bias", vec![2], vec![0.0, 0.0]);
//! let model = NativeModel::new(spec, w).unwrap();
//! let valid = Dataset { feature_names: vec!["a".into(), "b".into()], target: "y".into(),
//!     features: vec![1.0, 0.0, 0.0, 1.0], labels: vec![0, 1], values: vec![] };
//! let config = Config { quantize: Some(QuantizeConfig::default()), max_accuracy_drop: Some(0.0),
//!     latency: false, ..Default::default() };
//! let out = run(&config, &model, &valid, &valid, &std::env::temp_dir().join("kiln-optimize-doc")).unwrap();
//! assert_eq!(out.candidates[0].valid_accuracy, 1.0);
//! assert_eq!(out.chosen, "int8");
//! assert!(out.model.spec.quantization.is_some());
//! ```

pub mod prune;
pub mod quantize;

use kiln_core::{Dataset, EVAL_BATCH, NativeModel, Predictor, WeightType};
pub use prune::Scope;
pub use quantize::Scheme;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Errors of the optimization stage.
#[derive(Debug, thiserror::Error)]
pub enum OptimizeError {
    /// The configuration cannot be applied.
    #[error("{0}")]
    Config(String),
    /// No candidate stayed within the accuracy budget (candidates.json and every
    /// candidate's model are still written).
    #[error("no candidate is within max_accuracy_drop = {budget}:\n{table}")]
    OverBudget {
        /// The budget.
        budget: f64,
        /// One line per candidate.
        table: String,
    },
    /// Reading or writing artifacts failed.
    #[error(transparent)]
    Core(#[from] kiln_core::CoreError),
    /// Fine-tuning failed.
    #[error("fine-tuning: {0}")]
    Train(#[from] kiln_train::TrainError),
    /// Exporting or timing a candidate in ONNX Runtime failed.
    #[error("{0}")]
    Deploy(#[from] kiln_deploy::DeployError),
}

/// Result alias for this crate.
pub type Result<T, E = OptimizeError> = std::result::Result<T, E>;

/// Configuration of the optimization stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// One int8 candidate, `{ dtype = "int8", scheme = "dynamic", per_channel = true }`
    /// (shorthand for a `candidates` entry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantize: Option<QuantizeConfig>,
    /// Candidates to try, e.g. `[{ quantize = "dynamic" }, { structured = 0.5,
    /// finetune_epochs = 1 }, { prune = 0.8, steps = 4, finetune_epochs = 1 }]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<CandidateConfig>,
    /// Largest allowed drop of validation accuracy (R² for a regressor), absolute, e.g.
    /// 0.003 = 0.3 points. Without it the smallest candidate is chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_accuracy_drop: Option<f64>,
    /// Fine-tuning between pruning steps (epochs come from each candidate's
    /// `finetune_epochs`): `{ lr = 1e-4, batch_size = 64 }`.
    #[serde(default)]
    pub finetune: FinetuneConfig,
    /// Training rows that calibrate static quantization (default 1000).
    #[serde(default = "default_calibration_rows")]
    pub calibration_rows: usize,
    /// Time every candidate in ONNX Runtime at batch 1 and 1024 (default true; the
    /// figures go to latency.timings.json and the summary, never into the choice).
    #[serde(default = "default_true")]
    pub latency: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            quantize: None,
            candidates: Vec::new(),
            max_accuracy_drop: None,
            finetune: Default::default(),
            calibration_rows: default_calibration_rows(),
            latency: true,
        }
    }
}

fn default_calibration_rows() -> usize {
    1000
}

/// Adam settings of the fine-tuning after each pruning step (its epochs are each
/// candidate's `finetune_epochs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FinetuneConfig {
    /// Learning rate (default 1e-4: the weights are already trained).
    #[serde(default = "default_ft_lr")]
    pub lr: f64,
    /// Rows per step (default 64).
    #[serde(default = "default_ft_batch")]
    pub batch_size: usize,
    /// Shuffling seed (the pipeline fills it from its top-level `seed`).
    #[serde(default)]
    pub seed: u64,
}

fn default_ft_lr() -> f64 {
    1e-4
}
fn default_ft_batch() -> usize {
    64
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        FinetuneConfig {
            lr: default_ft_lr(),
            batch_size: default_ft_batch(),
            seed: 0,
        }
    }
}

/// The legacy single int8 setting (`quantize = { … }`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuantizeConfig {
    /// Weight type: `int8`.
    #[serde(default = "default_dtype")]
    pub dtype: WeightType,
    /// `dynamic` (activations quantized per batch at run time) or `static` (ranges
    /// calibrated on training rows).
    #[serde(default = "default_scheme")]
    pub scheme: Scheme,
    /// One scale per output channel (default true).
    #[serde(default = "default_true")]
    pub per_channel: bool,
    /// Symmetric weights (default true) or asymmetric (with zero points).
    #[serde(default = "default_true")]
    pub symmetric: bool,
}

/// One candidate: pruning (magnitude or structured, optional), then quantization
/// (optional).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CandidateConfig {
    /// Name in candidates.json and of the deployed file (default: made from the settings,
    /// e.g. `int8`, `int8-static`, `sparse-50`, `structured-50-int8`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Magnitude pruning: the fraction of weights set to zero, in [0, 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune: Option<f64>,
    /// Magnitude pruning ranks weights per `layer` (default) or over the whole network
    /// (`global`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
    /// Structured pruning: the fraction of each hidden layer's units removed, in [0, 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub structured: Option<f64>,
    /// Prune in this many equal steps (default 1), fine-tuning after each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    /// Fine-tuning epochs after each pruning step (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finetune_epochs: Option<usize>,
    /// `dynamic` or `static` (int8 weights; activations quantized per batch or with
    /// calibrated ranges), or `fp16` (half-precision weights, fp32 arithmetic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantize: Option<QuantizeMode>,
    /// One weight scale per output channel (default true) or one per tensor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_channel: Option<bool>,
    /// int8 weights symmetric around 0 (default true) or asymmetric (a zero point per
    /// scale, the full int8 range over [min, max]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symmetric: Option<bool>,
}

/// How a candidate quantizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum QuantizeMode {
    /// int8 weights, activations quantized per batch at run time.
    Dynamic,
    /// int8 weights, activation ranges calibrated on training rows.
    Static,
    /// Half-precision weights, fp32 arithmetic.
    Fp16,
}

impl CandidateConfig {
    /// The candidate's name: its own, or one made from its settings.
    pub fn resolved_name(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        let pct = |f: f64| (f * 100.0).round() as i64;
        let mut parts = Vec::new();
        if let Some(s) = self.structured {
            parts.push(format!("structured-{}", pct(s)));
        }
        if let Some(s) = self.prune {
            parts.push(format!("sparse-{}", pct(s)));
            if self.scope == Some(Scope::Global) {
                parts.push("global".into());
            }
        }
        if let Some(q) = &self.quantize {
            parts.push(match q {
                QuantizeMode::Static => "int8-static".into(),
                QuantizeMode::Fp16 => "fp16".into(),
                QuantizeMode::Dynamic => "int8".into(),
            });
            if self.per_channel == Some(false) {
                parts.push("per-tensor".into());
            }
            if self.symmetric == Some(false) {
                parts.push("asym".into());
            }
        }
        if parts.is_empty() {
            "unchanged".into()
        } else {
            parts.join("-")
        }
    }

    fn problems(&self, key: &str, p: &mut Vec<(String, String)>) {
        let frac = |v: Option<f64>, k: &str, p: &mut Vec<(String, String)>| {
            if let Some(f) = v
                && !(0.0..1.0).contains(&f)
            {
                p.push((
                    format!("{key}.{k}"),
                    format!("{f} must be in [0, 1) (a fraction removed)"),
                ));
            }
        };
        frac(self.prune, "prune", p);
        frac(self.structured, "structured", p);
        if self.scope.is_some() && self.prune.is_none() {
            p.push((
                format!("{key}.scope"),
                "scope applies to magnitude pruning; add `prune = <sparsity>`".into(),
            ));
        }
        if self.steps == Some(0) {
            p.push((format!("{key}.steps"), "steps must be at least 1".into()));
        }
        if self.prune.is_none() && self.structured.is_none() && self.quantize.is_none() {
            p.push((
                key.into(),
                "the candidate changes nothing; give `prune`, `structured` or `quantize`".into(),
            ));
        }
        if let Some(n) = &self.name
            && (n.is_empty()
                || n == "fp32"
                || !n
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            p.push((
                format!("{key}.name"),
                format!("name `{n}` must be letters, digits, `-` or `_`, and not `fp32`"),
            ));
        }
    }
}

impl Config {
    /// Every candidate: `quantize` (if given) first, then `candidates` in order.
    pub fn all_candidates(&self) -> Vec<CandidateConfig> {
        let mut all = Vec::new();
        if let Some(q) = &self.quantize {
            all.push(CandidateConfig {
                quantize: Some(match q.scheme {
                    Scheme::Static => QuantizeMode::Static,
                    _ => QuantizeMode::Dynamic,
                }),
                per_channel: Some(q.per_channel),
                symmetric: Some(q.symmetric),
                ..Default::default()
            });
        }
        all.extend(self.candidates.iter().cloned());
        all
    }

    /// Values out of range, as (key path, message) pairs; empty when the config is usable.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        if let Some(b) = self.max_accuracy_drop
            && !(0.0..=1.0).contains(&b)
        {
            p.push((
                "max_accuracy_drop".into(),
                format!("{b} must be in [0, 1] (an absolute accuracy drop)"),
            ));
        }
        if let Some(q) = &self.quantize {
            if q.dtype != kiln_core::WeightType::Int8 {
                p.push((
                    "quantize.dtype".into(),
                    format!("dtype `{}` is not supported; use \"int8\"", q.dtype),
                ));
            }
            if q.scheme == Scheme::Weights {
                p.push((
                    "quantize.scheme".into(),
                    format!(
                        "scheme `{}` is not supported; use \"dynamic\" or \"static\"",
                        q.scheme
                    ),
                ));
            }
        }
        for (i, c) in self.candidates.iter().enumerate() {
            c.problems(&format!("candidates[{i}]"), &mut p);
        }
        let names: Vec<String> = self
            .all_candidates()
            .iter()
            .map(CandidateConfig::resolved_name)
            .collect();
        for (i, n) in names.iter().enumerate() {
            if names[..i].contains(n) {
                p.push((
                    "candidates".into(),
                    format!("two candidates are named `{n}`; give one a `name`"),
                ));
            }
        }
        if names.is_empty() {
            p.push((
                "candidates".into(),
                "nothing to do: add `candidates = [{ quantize = \"dynamic\" }]` (or `quantize = { dtype = \"int8\" }`)".into(),
            ));
        }
        if self.calibration_rows == 0 {
            p.push(("calibration_rows".into(), "must be at least 1".into()));
        }
        if self.finetune.batch_size == 0 || self.finetune.lr.is_nan() || self.finetune.lr <= 0.0 {
            p.push((
                "finetune".into(),
                "batch_size must be at least 1 and lr positive".into(),
            ));
        }
        p
    }
}

fn default_dtype() -> WeightType {
    WeightType::Int8
}
fn default_scheme() -> Scheme {
    Scheme::Dynamic
}
fn default_true() -> bool {
    true
}

impl Default for QuantizeConfig {
    fn default() -> Self {
        QuantizeConfig {
            dtype: default_dtype(),
            scheme: default_scheme(),
            per_channel: true,
            symmetric: true,
        }
    }
}

pub use kiln_core::artifact::candidates::{Candidate, Candidates, Latency, Timings};

/// What the stage produced.
#[derive(Debug, Clone)]
pub struct Output {
    /// The chosen (compressed) model.
    pub model: NativeModel,
    /// Name of the chosen candidate.
    pub chosen: String,
    /// Every candidate evaluated, the reference fp32 first.
    pub candidates: Vec<Candidate>,
    /// Their latency, when measured (same order).
    pub latency: Vec<Latency>,
}

/// The budget's score of `model` on `data`, predicted in batches of [`EVAL_BATCH`] rows:
/// accuracy for class labels, R² for regression targets (so `max_accuracy_drop` bounds
/// the loss of R² there).
pub fn score(model: &mut NativeModel, data: &Dataset) -> Result<f64> {
    let p = model.predict_batched(&data.features, data.n_rows(), EVAL_BATCH)?;
    if data.is_regression() {
        return Ok(data.r2(&p.logits));
    }
    let correct = p
        .argmax()
        .iter()
        .zip(&data.labels)
        .filter(|(a, b)| a == b)
        .count();
    Ok(correct as f64 / data.n_rows().max(1) as f64)
}

/// Builds one candidate from the fp32 `model`: pruning in `steps` steps with fine-tuning
/// after each, then quantization.
pub fn build(
    c: &CandidateConfig,
    model: &NativeModel,
    config: &Config,
    train: &Dataset,
    valid: &Dataset,
) -> Result<NativeModel> {
    let steps = c.steps.unwrap_or(1).max(1);
    let epochs = c.finetune_epochs.unwrap_or(0);
    let ft = kiln_train::Finetune {
        epochs,
        lr: config.finetune.lr,
        batch_size: config.finetune.batch_size,
        seed: config.finetune.seed,
    };
    let mut m = model.clone();
    if let Some(frac) = c.structured {
        let widths: Vec<usize> = model.spec.layers[..model.spec.layers.len() - 1]
            .iter()
            .map(|l| l.out_dim)
            .collect();
        for t in 1..=steps {
            let f = frac * t as f64 / steps as f64;
            let keep: Vec<usize> = widths
                .iter()
                .map(|&w| (w - (f * w as f64).round() as usize).max(1))
                .collect();
            let kept = prune::units_to_keep(&m, &keep)?;
            m = prune::remove_units(&m, &kept, frac)?;
            if epochs > 0 {
                let spec = m.spec.clone();
                m = kiln_train::finetune(&m, &[], &ft, train, valid)?;
                m.spec.pruning = spec.pruning;
            }
        }
    }
    if let Some(s) = c.prune {
        let scope = c.scope.unwrap_or_default();
        let pruning = m.spec.pruning.clone();
        for t in 1..=steps {
            let (p, masks) = prune::magnitude(&m, s * t as f64 / steps as f64, scope)?;
            m = p;
            if epochs > 0 {
                let masks: Vec<Option<Vec<f32>>> = masks.into_iter().map(Some).collect();
                let spec = m.spec.clone();
                m = kiln_train::finetune(&m, &masks, &ft, train, valid)?;
                m.spec.pruning = spec.pruning;
            }
        }
        if pruning.is_some() {
            // structured, then magnitude: record the structural change
            m.spec.pruning = pruning;
        }
    }
    if c.quantize == Some(QuantizeMode::Fp16) {
        return quantize::fp16(&m);
    }
    if let Some(q) = &c.quantize {
        let scheme = if *q == QuantizeMode::Static {
            Scheme::Static
        } else {
            Scheme::Dynamic
        };
        m = quantize::quantize_with(
            &m,
            scheme,
            c.per_channel.unwrap_or(true),
            c.symmetric.unwrap_or(true),
            Some((train, config.calibration_rows)),
        )?;
    }
    Ok(m)
}

/// Median milliseconds of ONNX Runtime (one thread) on the first row and on 1024 rows
/// (the validation rows repeated).
fn latency(bytes: &[u8], valid: &Dataset) -> Result<(f64, f64)> {
    let mut ort = kiln_deploy::OrtModel::from_bytes(bytes, 1)?;
    let w = valid.n_features();
    let rows: Vec<f32> = valid
        .features
        .chunks_exact(w)
        .cycle()
        .take(1024)
        .flatten()
        .copied()
        .collect();
    let mut time = |x: &[f32], n: usize, reps: usize| -> Result<f64> {
        ort.predict(x, n)?; // warm-up
        let mut t: Vec<f64> = (0..reps)
            .map(|_| {
                let s = std::time::Instant::now();
                ort.predict(x, n).map(|_| s.elapsed().as_secs_f64() * 1e3)
            })
            .collect::<Result<_, _>>()?;
        t.sort_by(f64::total_cmp);
        Ok(t[reps / 2])
    };
    Ok((time(&rows[..w], 1, 201)?, time(&rows, 1024, 15)?))
}

/// Why a compressed model can be slower than fp32 in ONNX Runtime.
fn slower_reason(c: &NativeModel) -> String {
    match (&c.spec.quantization, &c.spec.pruning) {
        (None, Some(p)) if p.kind == kiln_core::PruningKind::Magnitude => {
            "zeros are stored and multiplied like any weight: ONNX Runtime has no sparse MatMul kernel; use structured pruning for speed".into()
        }
        (Some(q), _) if q.scheme == kiln_core::Scheme::Static => {
            "QuantizeLinear + MatMulInteger + rescaling costs more than an fp32 GEMM of this size".into()
        }
        (Some(_), _) => {
            "the quantize/dequantize steps cost more than the int8 GEMM saves at this size".into()
        }
        _ => "measured slower on this machine (timings are noisy; see latency.timings.json)".into(),
    }
}

/// Runs the stage: builds the candidates, scores them on `valid`, exports each for its
/// size (and time, with `config.latency`), picks the smallest ONNX file within the
/// budget (ties: the higher score, then the earlier candidate) and writes it
/// (spec.json, weights.safetensors) plus candidates.json, latency.timings.json and every
/// candidate's model under `candidates/<name>/`.
pub fn run(
    config: &Config,
    model: &NativeModel,
    train: &Dataset,
    valid: &Dataset,
    out_dir: &Path,
) -> Result<Output> {
    let _span = tracing::info_span!("optimize").entered();
    if let Some((key, msg)) = config.problems().into_iter().next() {
        return Err(OptimizeError::Config(format!("{key}: {msg}")));
    }
    if model.spec.quantization.is_some() {
        return Err(OptimizeError::Config(
            "the input model is already quantized; optimize a trained fp32 model".into(),
        ));
    }
    let meta = kiln_deploy::ExportMeta {
        feature_names: valid.feature_names.clone(),
        ..Default::default()
    };
    let export = |m: &NativeModel| kiln_deploy::export(&m.spec, &m.weights, &meta);
    let mut fp32 = model.clone();
    let base = score(&mut fp32, valid)?;
    let fp32_bytes = export(model)?;
    let count = |m: &NativeModel| -> usize {
        (0..m.spec.layers.len())
            .map(|i| {
                let w = format!("layers.{i}.weight");
                let nz_w = match m.weights.f32(&w) {
                    Ok(v) => v.iter().filter(|x| **x != 0.0).count(),
                    Err(_) => m
                        .weights
                        .i8(&w)
                        .map_or(0, |v| v.iter().filter(|x| **x != 0).count()),
                };
                let b = m.weights.f32(&format!("layers.{i}.bias"));
                nz_w + b.map_or(0, |v| v.iter().filter(|x| **x != 0.0).count())
            })
            .sum()
    };
    let mut candidates = vec![Candidate {
        name: "fp32".into(),
        params: model.spec.n_params(),
        nonzeros: count(model),
        weight_bytes: model.weights.data_bytes(),
        onnx_bytes: fp32_bytes.len(),
        valid_accuracy: base,
        accuracy_drop: 0.0,
        chosen: false,
        reason: "reference".into(),
    }];
    let mut built = vec![(model.clone(), fp32_bytes)];
    for c in config.all_candidates() {
        let name = c.resolved_name();
        let _span = tracing::info_span!("candidate", %name).entered();
        let mut m = build(&c, model, config, train, valid)?;
        let acc = score(&mut m, valid)?;
        let bytes = export(&m)?;
        tracing::info!(acc, drop = base - acc, bytes = bytes.len(), "candidate");
        candidates.push(Candidate {
            name,
            params: m.spec.n_params(),
            nonzeros: count(&m),
            weight_bytes: m.weights.data_bytes(),
            onnx_bytes: bytes.len(),
            valid_accuracy: acc,
            accuracy_drop: base - acc,
            chosen: false,
            reason: String::new(),
        });
        built.push((m, bytes));
    }
    // the choice: smallest ONNX file within budget, never a timing
    let within = |c: &Candidate| {
        config
            .max_accuracy_drop
            .is_none_or(|b| c.accuracy_drop <= b + 1e-12)
    };
    let mut order: Vec<usize> = (1..candidates.len())
        .filter(|&i| within(&candidates[i]))
        .collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (&candidates[a], &candidates[b]);
        x.onnx_bytes
            .cmp(&y.onnx_bytes)
            .then(y.valid_accuracy.total_cmp(&x.valid_accuracy))
            .then(a.cmp(&b))
    });
    let chosen = order.first().copied();
    for i in 1..candidates.len() {
        let c = &candidates[i];
        let reason = if Some(i) == chosen {
            "smallest within budget".to_string()
        } else if !within(c) {
            format!(
                "drop {:.4} over budget {:.4}",
                c.accuracy_drop,
                config.max_accuracy_drop.unwrap_or(0.0)
            )
        } else {
            let ch = &candidates[chosen.unwrap_or(i)];
            format!("larger ({} B vs {} B)", c.onnx_bytes, ch.onnx_bytes)
        };
        candidates[i].reason = reason;
        candidates[i].chosen = Some(i) == chosen;
    }
    let mut lat = Vec::new();
    if config.latency {
        let _span = tracing::info_span!("latency").entered();
        let mut fp32_1024 = f64::NAN;
        for (i, ((m, bytes), c)) in built.iter().zip(&candidates).enumerate() {
            let (b1, b1024) = latency(bytes, valid)?;
            if i == 0 {
                fp32_1024 = b1024;
            }
            let speedup = fp32_1024 / b1024;
            lat.push(Latency {
                name: c.name.clone(),
                batch1_ms: b1,
                batch1024_ms: b1024,
                speedup_1024: speedup,
                slower_than_fp32: (c.chosen && speedup < 1.0).then(|| slower_reason(m)),
            });
        }
    }
    std::fs::create_dir_all(out_dir).map_err(|e| kiln_core::CoreError::io(out_dir, e))?;
    for ((m, _), c) in built.iter().zip(&candidates).skip(1) {
        m.save(&out_dir.join("candidates").join(&c.name))?;
    }
    kiln_core::artifact::save(
        out_dir,
        &Candidates {
            candidates: candidates.clone(),
        },
    )?;
    if !lat.is_empty() {
        kiln_core::artifact::save(
            out_dir,
            &Timings {
                latency: lat.clone(),
            },
        )?;
    }
    let Some(ci) = chosen else {
        return Err(OptimizeError::OverBudget {
            budget: config.max_accuracy_drop.unwrap_or(0.0),
            table: table(&candidates, &lat),
        });
    };
    let model = built.swap_remove(ci).0;
    model.save(out_dir)?;
    tracing::info!(chosen = %candidates[ci].name, "optimized");
    Ok(Output {
        model,
        chosen: candidates[ci].name.clone(),
        candidates,
        latency: lat,
    })
}

/// File of the measured latencies (not hashed into the stage's content: timings vary).
pub const LATENCY_FILE: &str = <Timings as kiln_core::Artifact>::FILE;

/// The candidates as text lines (the over-budget error).
pub fn table(candidates: &[Candidate], latency: &[Latency]) -> String {
    candidates
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let t = latency
                .get(i)
                .map(|l| {
                    format!(
                        ", {:.3} ms at batch 1, {:.2} ms at 1024",
                        l.batch1_ms, l.batch1024_ms
                    )
                })
                .unwrap_or_default();
            format!(
                "  {}: accuracy {:.4} (drop {:.4}), {} non-zeros, {} ONNX bytes{t}: {}",
                c.name, c.valid_accuracy, c.accuracy_drop, c.nonzeros, c.onnx_bytes, c.reason
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::{Activation, ModelSpec, Task, TensorStore};

    /// 20 -> 64 -> 3: large enough that weight bytes, not graph nodes, decide ONNX sizes.
    fn model() -> NativeModel {
        let spec = ModelSpec::mlp(20, &[64], Activation::Relu, Task::Classification, 3);
        let mut w = TensorStore::default();
        let w0: Vec<f32> = (0..20 * 64)
            .map(|i| (i as f32 * 0.37).sin() * 0.5)
            .collect();
        let w1: Vec<f32> = (0..64 * 3).map(|i| (i as f32 * 0.71).cos() * 0.5).collect();
        w.insert_f32("layers.0.weight", vec![20, 64], w0);
        w.insert_f32(
            "layers.0.bias",
            vec![64],
            (0..64).map(|i| (i as f32 * 0.1).sin() * 0.1).collect(),
        );
        w.insert_f32("layers.1.weight", vec![64, 3], w1);
        w.insert_f32("layers.1.bias", vec![3], vec![0.0, 0.1, -0.1]);
        NativeModel::new(spec, w).unwrap()
    }

    fn data(m: &mut NativeModel) -> Dataset {
        let x: Vec<f32> = (0..200 * 20)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) / 5.0)
            .collect();
        let labels = m.predict(&x, 200).unwrap().argmax();
        Dataset {
            feature_names: (0..20).map(|i| format!("f{i}")).collect(),
            target: "y".into(),
            features: x,
            labels,
            values: vec![],
        }
    }

    #[test]
    fn candidate_names_are_made_from_settings() {
        let c = |s: &str| -> CandidateConfig { toml_like(s) };
        assert_eq!(c("q=dynamic").resolved_name(), "int8");
        assert_eq!(c("q=static").resolved_name(), "int8-static");
        assert_eq!(c("p=0.5").resolved_name(), "sparse-50");
        assert_eq!(c("s=0.25,q=dynamic").resolved_name(), "structured-25-int8");
        assert_eq!(c("q=fp16").resolved_name(), "fp16");
        let mut a = c("q=dynamic");
        a.symmetric = Some(false);
        assert_eq!(a.resolved_name(), "int8-asym");
    }

    fn toml_like(s: &str) -> CandidateConfig {
        let mut c = CandidateConfig::default();
        for kv in s.split(',') {
            let (k, v) = kv.split_once('=').unwrap();
            match k {
                "q" => c.quantize = Some(serde_json::from_value(serde_json::json!(v)).unwrap()),
                "p" => c.prune = Some(v.parse().unwrap()),
                "s" => c.structured = Some(v.parse().unwrap()),
                _ => unreachable!(),
            }
        }
        c
    }

    /// The budget picks the smallest candidate within it: with a generous budget the
    /// structured + int8 model (smallest file); with a zero budget only candidates that
    /// keep every validation prediction (labels are fp32's own, so fp32-equal models
    /// score 1.0) qualify.
    #[test]
    fn budget_picks_the_smallest_candidate_within_it() {
        let mut m = model();
        let valid = data(&mut m);
        let cands = vec![
            toml_like("q=dynamic"),
            toml_like("p=0.5"),
            toml_like("s=0.5,q=dynamic"),
        ];
        let dir = tempfile::tempdir().unwrap();
        let loose = Config {
            candidates: cands.clone(),
            max_accuracy_drop: Some(1.0),
            latency: false,
            ..Default::default()
        };
        let out = run(&loose, &m, &valid, &valid, dir.path()).unwrap();
        let names: Vec<&str> = out.candidates.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["fp32", "int8", "sparse-50", "structured-50-int8"]);
        assert_eq!(out.chosen, "structured-50-int8");
        let smallest = out.candidates[1..]
            .iter()
            .map(|c| c.onnx_bytes)
            .min()
            .unwrap();
        assert_eq!(out.candidates[3].onnx_bytes, smallest);
        // fp32 holds one zero weight (sin 0) and one zero bias per layer; sparse-50 zeroes
        // half of each layer's weights (1280, 192), the old zero among them
        assert_eq!(out.candidates[0].nonzeros, 1279 + 192 + 63 + 2);
        assert_eq!(out.candidates[2].nonzeros, 640 + 96 + 63 + 2);
        assert_eq!(out.model.spec.layers[0].out_dim, 32);
        assert!(dir.path().join("candidates/sparse-50/spec.json").is_file());
        assert!(dir.path().join("weights.safetensors").is_file());

        // zero budget: everything that changes a prediction is out; the error lists all
        let strict = Config {
            candidates: vec![toml_like("s=0.5")],
            max_accuracy_drop: Some(0.0),
            latency: false,
            ..Default::default()
        };
        let dir2 = tempfile::tempdir().unwrap();
        let r = run(&strict, &m, &valid, &valid, dir2.path());
        let cands = kiln_core::artifact::load::<Candidates>(dir2.path())
            .unwrap()
            .candidates;
        // removing half the hidden units of this fixed model keeps 73 of the 200
        // predictions (fp32's own labels), so it must be out, and with it every candidate
        assert_eq!(cands[1].name, "structured-50");
        assert_eq!(cands[1].valid_accuracy, 0.365, "{cands:?}");
        assert!((cands[1].accuracy_drop - 0.635).abs() < 1e-12, "{cands:?}");
        assert!(!cands[1].chosen && !cands[0].chosen);
        let e = r.unwrap_err().to_string();
        assert!(
            e.contains("no candidate is within") && e.contains("structured-50"),
            "{e}"
        );
        assert!(!dir2.path().join("weights.safetensors").exists());
        assert!(
            dir2.path()
                .join("candidates/structured-50/spec.json")
                .is_file()
        );
    }

    #[test]
    fn problems_name_the_key() {
        let c = Config {
            candidates: vec![CandidateConfig {
                prune: Some(1.0),
                ..Default::default()
            }],
            ..Default::default()
        };
        let p = c.problems();
        assert_eq!(p[0].0, "candidates[0].prune");
        assert!(
            Config::default()
                .problems()
                .iter()
                .any(|(k, _)| k == "candidates")
        );
    }
}
