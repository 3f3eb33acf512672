//! kiln-evaluate: scores model variants (classifiers or regressors) on the same split
//! through the `Predictor` the caller passes (native forward pass or ONNX Runtime), checks
//! gates, and writes
//! `metrics.json`, `confusion.json`, `verdict.json` and `report.md`.
//!
//! ```
//! use kiln_core::{Activation, Dataset, ModelSpec, NativeModel, Predictor, Task, TensorStore};
//! use kiln_evaluate::{Config, run};
//! let spec = ModelSpec::mlp(2, &[], Activation::Identity, Task::Classification, 2);
//! let mut w = TensorStore::default();
//! w.insert_f32("layers.0.weight", vec![2, 2], vec![1.0, 0.0, 0.0, 1.0]);
//! w.insert_f32("layers.0.bias", vec![2], vec![0.0, 0.0]);
//! let mut model = NativeModel::new(spec, w).unwrap();
//! let test = Dataset { feature_names: vec!["a".into(), "b".into()], target: "y".into(),
//!     features: vec![1.0, 0.0, 0.0, 1.0, 2.0, 3.0], labels: vec![0, 1, 0], values: vec![] };
//! let config = Config { gates: [("accuracy".to_string(), ">= 0.6".parse().unwrap())].into(), ..Default::default() };
//! let labels = vec!["no".to_string(), "yes".to_string()];
//! let mut variants: Vec<(String, &mut dyn Predictor)> = vec![("fp32".into(), &mut model)];
//! let out = run(&config, &mut variants, &test, &labels, &std::env::temp_dir().join("kiln-eval-doc")).unwrap();
//! assert!((out.variants[0].scalars["accuracy"] - 2.0 / 3.0).abs() < 1e-12);
//! assert!(out.verdict.blessed);
//! ```

pub mod analysis;
pub mod metrics;
pub mod plots;

use kiln_core::{Dataset, EVAL_BATCH, Predictor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Errors of the evaluation stage.
#[derive(Debug, thiserror::Error)]
pub enum EvaluateError {
    /// A gate is written wrongly or names an unknown metric.
    #[error("{0}")]
    Config(String),
    /// Predicting or writing artifacts failed.
    #[error(transparent)]
    Core(#[from] kiln_core::CoreError),
}

/// Result alias for this crate.
pub type Result<T, E = EvaluateError> = std::result::Result<T, E>;

/// Configuration of the evaluation stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Thresholds every variant must meet, e.g. `accuracy = ">= 0.97"`.
    #[serde(default)]
    pub gates: BTreeMap<String, Condition>,
    /// k of `top_k_accuracy` (default 5; at most the number of classes minus one).
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    /// The most each variant may lose against another one, e.g.
    /// `{ from = "train", accuracy = 0.005 }` (a loss is a fall for metrics where higher
    /// is better, a rise for log_loss, ece, mse, rmse, mae, mape).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_drop: Option<MaxDrop>,
    /// Permutation feature importance on the validation split, for the first variant:
    /// `{ top = 10, rows = 2000 }` (off when absent; it predicts `rows` rows once per
    /// feature).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub importance: Option<analysis::Importance>,
    /// A feature column whose values (at most 20 distinct) each get their own metrics in
    /// the report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slice_by: Option<String>,
    /// What scores the variants: `onnxruntime` (default; the ONNX graph deploy ships, run
    /// by ONNX Runtime, with the difference to kiln's native forward pass reported) or
    /// `native` (kiln's reference forward pass only).
    #[serde(default)]
    pub runtime: Runtime,
}

/// What runs the variants an evaluate stage scores.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Runtime {
    /// The exported ONNX graph in ONNX Runtime (what deploy ships).
    #[default]
    Onnxruntime,
    /// kiln's reference forward pass.
    Native,
}

/// How a gate compares a metric with its threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `>=`
    Ge,
    /// `>`
    Gt,
    /// `<=`
    Le,
    /// `<`
    Lt,
}

impl Op {
    /// The operator as written.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Ge => ">=",
            Op::Gt => ">",
            Op::Le => "<=",
            Op::Lt => "<",
        }
    }

    /// Whether `value op threshold` holds (never for NaN).
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Op::Ge => value >= threshold,
            Op::Gt => value > threshold,
            Op::Le => value <= threshold,
            Op::Lt => value < threshold,
        }
    }
}

/// A gate's condition, e.g. `">= 0.97"`: parsed when the pipeline file is read, so a
/// malformed one is an error located at its value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schemars(with = "String")]
pub struct Condition {
    /// The comparison.
    pub op: Op,
    /// The threshold (finite).
    pub threshold: f64,
}

impl std::fmt::Display for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.op.as_str(), self.threshold)
    }
}

impl From<Condition> for String {
    fn from(c: Condition) -> String {
        c.to_string()
    }
}

impl std::str::FromStr for Condition {
    type Err = String;

    fn from_str(cond: &str) -> std::result::Result<Self, String> {
        let c = cond.trim();
        for (text, op) in [(">=", Op::Ge), ("<=", Op::Le), (">", Op::Gt), ("<", Op::Lt)] {
            if let Some(rest) = c.strip_prefix(text) {
                let threshold: f64 = rest
                    .trim()
                    .parse()
                    .ok()
                    .filter(|v: &f64| v.is_finite())
                    .ok_or_else(|| {
                        format!("gate \"{cond}\": `{}` is not a finite number", rest.trim())
                    })?;
                return Ok(Condition { op, threshold });
            }
        }
        Err(format!(
            "gate \"{cond}\" must start with >=, >, <= or < (e.g. \">= 0.97\")"
        ))
    }
}

impl TryFrom<String> for Condition {
    type Error = String;

    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

/// `max_drop`: limits on the loss of metrics against the variant `from`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MaxDrop {
    /// The variant (input stage id) the others are compared with.
    pub from: String,
    /// Metric name -> largest allowed loss (absolute).
    #[serde(flatten)]
    pub limits: BTreeMap<String, f64>,
}

/// Metrics where lower is better.
pub const LOWER_IS_BETTER: &[&str] = &["log_loss", "ece", "mse", "rmse", "mae", "mape"];

fn default_top_k() -> usize {
    5
}

impl Default for Config {
    fn default() -> Self {
        Config {
            gates: BTreeMap::new(),
            top_k: default_top_k(),
            max_drop: None,
            importance: None,
            slice_by: None,
            runtime: Runtime::Onnxruntime,
        }
    }
}

/// Metric names gates can use (the keys of metrics.json): the classification ones, then
/// the regression ones.
pub const METRICS: &[&str] = &[
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "weighted_f1",
    "log_loss",
    "top_k_accuracy",
    "roc_auc",
    "pr_auc",
    "ece",
    "mse",
    "rmse",
    "mae",
    "r2",
    "mape",
];

/// The metrics of a regression model (the rest of [`METRICS`] are for classifiers).
pub const REGRESSION_METRICS: &[&str] = &["mse", "rmse", "mae", "r2", "mape"];

/// Scores of one variant.
#[derive(Debug, Clone, Serialize)]
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

/// What the caller knows beyond the variants and the test split.
#[derive(Default)]
pub struct Extras<'a> {
    /// Training histories to draw.
    pub curves: &'a [plots::Curves],
    /// Per variant, in the same order, kiln's native forward pass when the variants run
    /// through ONNX Runtime: the report states the difference on every test row.
    pub reference: Vec<&'a mut dyn Predictor>,
    /// The validation split, for permutation importance.
    pub valid: Option<&'a Dataset>,
    /// The dataset schema, to name slices by raw values.
    pub schema: Option<&'a kiln_core::Schema>,
    /// Seed of the importance shuffles.
    pub seed: u64,
}

pub use kiln_core::artifact::metrics::Metrics;
pub use kiln_core::artifact::verdict::{GateResult, Verdict};

/// What the stage produced.
#[derive(Debug, Clone)]
pub struct Output {
    /// Metrics per variant, in input order.
    pub variants: Vec<VariantMetrics>,
    /// Every gate checked.
    pub gates: Vec<GateResult>,
    /// The verdict written to verdict.json.
    pub verdict: Verdict,
    /// Permutation importance of the first variant's features, largest drop first
    /// (empty unless `importance` is set and a validation split was given).
    pub importance: Vec<analysis::FeatureImportance>,
}

impl Config {
    /// Gates that cannot be checked, as (key path, message) pairs.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut p: Vec<(String, String)> = Vec::new();
        if let Some(d) = &self.max_drop {
            if d.limits.is_empty() {
                p.push((
                    "max_drop".into(),
                    "max_drop names no metric; e.g. { from = \"train\", accuracy = 0.005 }".into(),
                ));
            }
            for (m, v) in &d.limits {
                if !METRICS.contains(&m.as_str()) {
                    p.push((
                        format!("max_drop.{m}"),
                        format!(
                            "unknown metric `{m}`; max_drop can use {}",
                            METRICS.join(", ")
                        ),
                    ));
                } else if !(*v >= 0.0 && v.is_finite()) {
                    p.push((
                        format!("max_drop.{m}"),
                        format!("{v} must be a number >= 0"),
                    ));
                }
            }
        }
        if let Some(i) = &self.importance
            && (i.top == 0 || i.rows == 0)
        {
            p.push((
                "importance".into(),
                "importance needs top >= 1 and rows >= 1".into(),
            ));
        }
        p.extend(
            self.gates
                .keys()
                .filter(|m| !METRICS.contains(&m.as_str()))
                .map(|m| {
                    (
                        format!("gates.{m}"),
                        format!(
                            "gate on unknown metric `{m}`; gates can use {}",
                            METRICS.join(", ")
                        ),
                    )
                }),
        );
        p
    }
}

/// Scores every variant on `data` (batches of [`EVAL_BATCH`] rows), checks the gates and
/// writes the stage's artifacts into `out_dir`. A failed gate is not an error here: it
/// is recorded in the verdict, which the caller acts on.
pub fn run(
    config: &Config,
    variants: &mut [(String, &mut dyn Predictor)],
    data: &Dataset,
    class_labels: &[String],
    out_dir: &Path,
) -> Result<Output> {
    run_report(
        config,
        variants,
        data,
        class_labels,
        Extras::default(),
        out_dir,
    )
}

/// [`run`] with what the pipeline knows besides: training curves to draw
/// (`curves-<stage>.svg|png`), the native forward pass of variants that run through ONNX
/// Runtime, the validation split for permutation importance, and the schema for slices.
pub fn run_report(
    config: &Config,
    variants: &mut [(String, &mut dyn Predictor)],
    data: &Dataset,
    class_labels: &[String],
    mut extras: Extras<'_>,
    out_dir: &Path,
) -> Result<Output> {
    let curves = extras.curves;
    let _span = tracing::info_span!("evaluate").entered();
    if let Some((key, msg)) = config.problems().into_iter().next() {
        return Err(EvaluateError::Config(format!("{key}: {msg}")));
    }
    let gates = &config.gates;
    let regression = data.is_regression();
    if let Some(m) = gates
        .keys()
        .find(|m| REGRESSION_METRICS.contains(&m.as_str()) != regression)
    {
        let (this, other) = if regression {
            ("a regression", REGRESSION_METRICS.join(", "))
        } else {
            (
                "a classification",
                METRICS
                    .iter()
                    .filter(|x| !REGRESSION_METRICS.contains(x))
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", "),
            )
        };
        return Err(EvaluateError::Config(format!(
            "gate on `{m}` does not apply to {this} model; its gates can use {other}"
        )));
    }
    let k = class_labels.len();
    let mut results = Vec::new();
    std::fs::create_dir_all(out_dir).map_err(|e| kiln_core::CoreError::io(out_dir, e))?;
    let mut figures: Vec<(String, String)> = Vec::new(); // (title, png file)
    let plot = |figures: &mut Vec<(String, String)>, title: String, d: &dyn PlotFn| {
        match d.save(out_dir) {
            Ok([_, png]) => figures.push((title, png)),
            // a plot that cannot be drawn must not cost the evaluation
            Err(e) => tracing::warn!("{title}: {e}"),
        }
    };
    for c in curves {
        plot(
            &mut figures,
            format!("Training curves: {}", c.name),
            &Named(c, format!("curves-{}", c.name)),
        );
    }
    let slices = match &config.slice_by {
        Some(col) => {
            analysis::slice_rows(data, extras.schema, col).map_err(EvaluateError::Config)?
        }
        None => Vec::new(),
    };
    for (i, (name, predictor)) in variants.iter_mut().enumerate() {
        let p = predictor.predict_batched(&data.features, data.n_rows(), EVAL_BATCH)?;
        let vs_native = match extras.reference.get_mut(i) {
            Some(native) => {
                let r = native.predict_batched(&data.features, data.n_rows(), EVAL_BATCH)?;
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
                Some((diff, agree as f64 / data.n_rows().max(1) as f64))
            }
            None => None,
        };
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
        if regression {
            let points = data
                .values
                .iter()
                .zip(&p.logits)
                .map(|(&t, &y)| (f64::from(t), f64::from(y)))
                .collect();
            let sc = plots::Scatter { name, points };
            plot(
                &mut figures,
                format!("Predicted vs actual: {name}"),
                &Named(&sc, format!("scatter-{name}")),
            );
            let r = metrics::regression(&data.values, &p.logits);
            let mut scalars = BTreeMap::from([
                ("mse".to_string(), r.mse),
                ("rmse".to_string(), r.rmse),
                ("mae".to_string(), r.mae),
                ("mape".to_string(), r.mape),
            ]);
            let mut notes = Vec::new();
            match r.r2 {
                Ok(v) => {
                    scalars.insert("r2".into(), v);
                }
                Err(why) => {
                    tracing::warn!(variant = %name, "{why}");
                    notes.push(why);
                }
            }
            tracing::info!(variant = %name, rmse = r.rmse, mae = r.mae, "scored");
            results.push(VariantMetrics {
                name: name.clone(),
                predictor: predictor.name().to_string(),
                scalars,
                per_class: Vec::new(),
                confusion: Vec::new(),
                notes,
                vs_native,
                slices: slice_scores,
            });
            continue;
        }
        let pred = p.argmax();
        let cm = metrics::confusion_matrix(&data.labels, &pred, k);
        let per_class = metrics::per_class(&cm, class_labels);
        let (t, pr) = (&data.labels, &p.probabilities);
        let top = config.top_k.clamp(1, k.saturating_sub(1).max(1));
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
        if let Some(v) = metrics::one_vs_rest(t, pr, k, metrics::roc_auc) {
            scalars.insert("roc_auc".into(), v);
        }
        if let Some(v) = metrics::one_vs_rest(t, pr, k, metrics::average_precision) {
            scalars.insert("pr_auc".into(), v);
        }
        let cf = plots::Confusion {
            name,
            labels: class_labels,
            matrix: &cm,
        };
        plot(
            &mut figures,
            format!("Confusion matrix: {name}"),
            &Named(&cf, format!("confusion-{name}")),
        );
        let rel = plots::Reliability {
            name,
            bins: plots::reliability_bins(t, pr, k),
        };
        plot(
            &mut figures,
            format!("Reliability: {name}"),
            &Named(&rel, format!("reliability-{name}")),
        );
        if k == 2 {
            let positive: Vec<bool> = t.iter().map(|&l| l == 1).collect();
            let scores: Vec<f64> = pr.chunks_exact(2).map(|r| f64::from(r[1])).collect();
            let (roc, prc) = plots::BinaryCurves::points(&positive, &scores);
            let bc = plots::BinaryCurves {
                name,
                positive: &class_labels[1],
                roc,
                pr: prc,
                roc_auc: scalars.get("roc_auc").copied().unwrap_or(f64::NAN),
                pr_auc: scalars.get("pr_auc").copied().unwrap_or(f64::NAN),
            };
            plot(
                &mut figures,
                format!("ROC and precision-recall: {name}"),
                &Named(&bc, format!("roc-pr-{name}")),
            );
        }
        tracing::info!(variant = %name, accuracy = scalars["accuracy"], macro_f1 = scalars["macro_f1"], "scored");
        let m = VariantMetrics {
            name: name.clone(),
            predictor: predictor.name().to_string(),
            scalars,
            per_class,
            confusion: cm,
            notes: Vec::new(),
            vs_native,
            slices: slice_scores,
        };
        results.push(m);
    }
    let mut checked = Vec::new();
    for v in &results {
        for (metric, cond) in gates {
            let value = v.scalars.get(metric).copied().unwrap_or(f64::NAN);
            checked.push(GateResult {
                variant: v.name.clone(),
                metric: metric.clone(),
                condition: cond.to_string(),
                value,
                passed: cond.op.holds(value, cond.threshold),
            });
        }
    }
    if let Some(d) = &config.max_drop {
        let base = results.iter().find(|v| v.name == d.from).ok_or_else(|| {
            EvaluateError::Config(format!(
                "max_drop.from = `{}` is not one of this stage's inputs ({})",
                d.from,
                results
                    .iter()
                    .map(|v| v.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        for v in results.iter().filter(|v| v.name != d.from) {
            for (m, limit) in &d.limits {
                let (Some(b), Some(x)) = (base.scalars.get(m), v.scalars.get(m)) else {
                    return Err(EvaluateError::Config(format!(
                        "max_drop.{m}: the variants have no `{m}` (it does not apply to this task)"
                    )));
                };
                let loss = if LOWER_IS_BETTER.contains(&m.as_str()) {
                    x - b
                } else {
                    b - x
                };
                checked.push(GateResult {
                    variant: v.name.clone(),
                    metric: format!("{m} drop vs {}", d.from),
                    condition: format!("<= {limit}"),
                    value: loss,
                    passed: loss <= *limit,
                });
            }
        }
    }
    let importance = match (&config.importance, extras.valid, variants.first_mut()) {
        (Some(cfg), Some(valid), Some((name, model))) => {
            tracing::info!(variant = %name, rows = cfg.rows.min(valid.n_rows()), "permutation importance");
            analysis::permutation_importance(&mut **model, valid, cfg, extras.seed)?
        }
        _ => Vec::new(),
    };
    let failed: Vec<String> = checked
        .iter()
        .filter(|g| !g.passed)
        .map(|g| {
            format!(
                "{} {} = {:.4} fails {}",
                g.variant, g.metric, g.value, g.condition
            )
        })
        .collect();
    let (blessed, reason) = if checked.is_empty() {
        (true, "no gates".to_string())
    } else if failed.is_empty() {
        (true, format!("all {} gates passed", checked.len()))
    } else {
        (false, failed.join("; "))
    };
    let verdict = Verdict {
        blessed,
        reason,
        gates: checked.clone(),
    };
    std::fs::create_dir_all(out_dir).map_err(|e| kiln_core::CoreError::io(out_dir, e))?;
    let metrics = Metrics {
        variants: results
            .iter()
            .map(|v| (v.name.clone(), v.scalars.clone()))
            .collect(),
    };
    kiln_core::artifact::save(out_dir, &metrics)?;
    let details: BTreeMap<_, _> = results.iter().map(|v| (v.name.clone(), v)).collect();
    kiln_core::write_json(&out_dir.join("confusion.json"), &details)?;
    kiln_core::artifact::save(out_dir, &verdict)?;
    let mut text = report(&results, &checked, &verdict, class_labels);
    if let (Some(cfg), Some((first, _))) = (&config.importance, variants.first()) {
        text += &format!(
            "\n## Permutation feature importance ({first}, validation split)\n\nThe fall of the main metric ({}) when one feature's values are shuffled across rows.\n\n| feature | drop |\n|---|---|\n",
            if regression { "R²" } else { "accuracy" }
        );
        for f in importance.iter().take(cfg.top) {
            text += &format!("| {} | {:.4} |\n", f.feature, f.drop);
        }
        kiln_core::write_json(&out_dir.join("importance.json"), &importance)?;
    }
    if let Some(col) = &config.slice_by {
        text += &format!(
            "\n## Slices by `{col}` (test split, {})\n\n| {col} | rows |",
            if regression { "R²" } else { "accuracy" }
        );
        for v in &results {
            text += &format!(" {} |", v.name);
        }
        text += &format!("\n|---|---|{}\n", "---|".repeat(results.len()));
        for (i, (value, _)) in slices.iter().enumerate() {
            text += &format!("| {value} | {} |", slices[i].1.len());
            for v in &results {
                text += &format!(" {:.4} |", v.slices[i].2);
            }
            text += "\n";
        }
    }
    if !figures.is_empty() {
        text += "\n## Plots\n\n(each also as SVG beside the PNG)\n";
        for (title, png) in &figures {
            text += &format!("\n### {title}\n\n![{title}]({png})\n");
        }
    }
    kiln_core::atomic_write(&out_dir.join("report.md"), text.as_bytes())?;
    Ok(Output {
        variants: results,
        gates: checked,
        verdict,
        importance,
    })
}

/// A plot with its file stem; object-safe, so plots of different kinds share a list.
trait PlotFn {
    fn save(&self, dir: &Path) -> std::result::Result<[String; 2], String>;
}

struct Named<'a, T: plots::Draw>(&'a T, String);

impl<T: plots::Draw> PlotFn for Named<'_, T> {
    fn save(&self, dir: &Path) -> std::result::Result<[String; 2], String> {
        plots::save(self.0, dir, &self.1)
    }
}

fn report(
    results: &[VariantMetrics],
    gates: &[GateResult],
    verdict: &Verdict,
    labels: &[String],
) -> String {
    let regression = results.iter().any(|v| v.scalars.contains_key("mse"));
    let cols: &[(&str, &str)] = if regression {
        &[
            ("rmse", "RMSE"),
            ("mae", "MAE"),
            ("r2", "R²"),
            ("mape", "MAPE"),
        ]
    } else {
        &[("accuracy", "accuracy"), ("macro_f1", "macro F1")]
    };
    let native = results.iter().any(|v| v.vs_native.is_some());
    let mut s = String::from("# Evaluation report\n\n| variant | predictor |");
    for (_, title) in cols {
        s += &format!(" {title} |");
    }
    if native {
        s += " vs native: max |Δ| | vs native: argmax agreement |";
    }
    let n_cols = cols.len() + if native { 2 } else { 0 };
    s += &format!("\n|---|---|{}\n", "---|".repeat(n_cols));
    for v in results {
        s += &format!("| {} | {} |", v.name, v.predictor);
        for (key, _) in cols {
            match v.scalars.get(*key) {
                Some(x) => s += &format!(" {x:.4} |"),
                None => s += " — |",
            }
        }
        match (native, v.vs_native) {
            (true, Some((d, a))) => s += &format!(" {d:.1e} | {a:.4} |"),
            (true, None) => s += " — | — |",
            _ => {}
        }
        s += "\n";
    }
    if native {
        s += "\nThe variants ran through ONNX Runtime from the ONNX files deploy ships; the last columns compare them with kiln's native forward pass on every test row.\n";
    }
    for v in results {
        for n in &v.notes {
            s += &format!("\n*{}: {n}*\n", v.name);
        }
    }
    s += &format!(
        "\n**Verdict:** {} — {}\n",
        if verdict.blessed {
            "blessed"
        } else {
            "NOT blessed"
        },
        verdict.reason
    );
    if !gates.is_empty() {
        s += "\n| variant | gate | value | passed |\n|---|---|---|---|\n";
        for g in gates {
            s += &format!(
                "| {} | {} {} | {:.4} | {} |\n",
                g.variant, g.metric, g.condition, g.value, g.passed
            );
        }
    }
    for v in results.iter().filter(|v| !v.confusion.is_empty()) {
        s += &format!("\n## Confusion matrix: {} (rows = truth)\n\n| |", v.name);
        for l in labels {
            s += &format!(" {l} |");
        }
        s += "\n|---|";
        s += &"---|".repeat(labels.len());
        s += "\n";
        for (i, row) in v.confusion.iter().enumerate() {
            s += &format!(
                "| **{}** |",
                labels.get(i).map(String::as_str).unwrap_or("?")
            );
            for c in row {
                s += &format!(" {c} |");
            }
            s += "\n";
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two 2-class variants on 4 rows: `good` right on all, `bad` right on 3.
    fn two_variants(config: &Config) -> Result<Output> {
        use kiln_core::{Activation, ModelSpec, NativeModel, Task, TensorStore};
        let model = |flip: f32| {
            let spec = ModelSpec::mlp(1, &[], Activation::Identity, Task::Classification, 2);
            let mut w = TensorStore::default();
            w.insert_f32("layers.0.weight", vec![1, 2], vec![-1.0, 1.0]);
            w.insert_f32("layers.0.bias", vec![2], vec![flip, -flip]);
            NativeModel::new(spec, w).unwrap()
        };
        let (mut good, mut bad) = (model(0.0), model(2.5));
        let data = Dataset {
            feature_names: vec!["x".into()],
            target: "y".into(),
            features: vec![-2.0, -1.0, 1.0, 3.0],
            labels: vec![0, 0, 1, 1],
            values: vec![],
        };
        let mut variants: Vec<(String, &mut dyn Predictor)> =
            vec![("good".into(), &mut good), ("bad".into(), &mut bad)];
        let dir = tempfile::tempdir().unwrap();
        let labels = ["0".to_string(), "1".to_string()];
        run(config, &mut variants, &data, &labels, dir.path())
    }

    #[test]
    fn max_drop_compares_each_variant_with_its_reference() {
        let limits = |m: &str, v: f64| MaxDrop {
            from: "good".into(),
            limits: [(m.to_string(), v)].into(),
        };
        // bad predicts 1 only for x > 2.5: right on 3 of 4 rows, a drop of 0.25
        let out = two_variants(&Config {
            max_drop: Some(limits("accuracy", 0.3)),
            ..Config::default()
        })
        .unwrap();
        assert_eq!(out.gates.len(), 1);
        let g = &out.gates[0];
        assert_eq!(
            (g.variant.as_str(), g.metric.as_str()),
            ("bad", "accuracy drop vs good")
        );
        assert!((g.value - 0.25).abs() < 1e-12 && g.passed);
        assert!(out.verdict.blessed);
        let out = two_variants(&Config {
            max_drop: Some(limits("accuracy", 0.2)),
            ..Config::default()
        })
        .unwrap();
        assert!(!out.verdict.blessed);
        assert!(
            out.verdict
                .reason
                .contains("bad accuracy drop vs good = 0.2500 fails <= 0.2")
        );
        // lower-is-better metrics count a rise as the loss
        let out = two_variants(&Config {
            max_drop: Some(limits("log_loss", 10.0)),
            ..Config::default()
        })
        .unwrap();
        // good: p(true) = sigmoid(2|x|) -> mean ln(1 + e^-z) over z = 4, 2, 2, 6 = 0.0686204;
        // bad: sigmoid(2x - 5) -> z = 9, 7, -3, 1, mean 0.8407210: a rise of 0.7721006
        let g = &out.gates[0];
        assert_eq!(
            (g.variant.as_str(), g.metric.as_str()),
            ("bad", "log_loss drop vs good")
        );
        assert!((g.value - 0.772_100_568).abs() < 1e-6, "{}", g.value);
        assert!(g.passed);
        assert!(out.verdict.blessed);
        let out = two_variants(&Config {
            max_drop: Some(limits("log_loss", 0.77)),
            ..Config::default()
        })
        .unwrap();
        assert!(!out.gates[0].passed);
        assert!(!out.verdict.blessed);
        // an unknown reference or metric is a clear error
        let e = two_variants(&Config {
            max_drop: Some(MaxDrop {
                from: "trian".into(),
                limits: [("accuracy".to_string(), 0.1)].into(),
            }),
            ..Config::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("max_drop.from = `trian` is not one of this stage's inputs (good, bad)"),
            "{e}"
        );
        let c = Config {
            max_drop: Some(limits("acuracy", 0.1)),
            ..Config::default()
        };
        let p = c.problems();
        assert!(
            p.iter()
                .any(|(k, m)| k == "max_drop.acuracy" && m.contains("unknown metric"))
        );
    }

    #[test]
    fn gates_parse_and_reject_nonsense() {
        let c = |s: &str| s.parse::<Condition>();
        assert_eq!(
            c(">= 0.97").unwrap(),
            Condition {
                op: Op::Ge,
                threshold: 0.97
            }
        );
        assert_eq!(
            c("<0.5").unwrap(),
            Condition {
                op: Op::Lt,
                threshold: 0.5
            }
        );
        assert_eq!(c(" > 1e-3 ").unwrap().to_string(), "> 0.001");
        assert!(
            c("0.97")
                .unwrap_err()
                .contains("must start with >=, >, <= or <")
        );
        assert!(
            c(">= high")
                .unwrap_err()
                .contains("`high` is not a finite number")
        );
        for bad in [">= nan", "<= inf", "> -inf", ">= NaN"] {
            assert!(
                c(bad).unwrap_err().contains("is not a finite number"),
                "{bad}"
            );
        }
        // NaN never passes, whatever the operator
        for op in [Op::Ge, Op::Gt, Op::Le, Op::Lt] {
            assert!(!op.holds(f64::NAN, 0.5));
        }
        assert!(Op::Ge.holds(0.5, 0.5) && !Op::Gt.holds(0.5, 0.5));
        assert!(Op::Le.holds(0.5, 0.5) && !Op::Lt.holds(0.5, 0.5));
    }
}
