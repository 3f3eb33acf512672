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
//! let config = Config { gates: [("accuracy".to_string(), ">= 0.6".to_string())].into(), ..Default::default() };
//! let labels = vec!["no".to_string(), "yes".to_string()];
//! let mut variants: Vec<(String, &mut dyn Predictor)> = vec![("fp32".into(), &mut model)];
//! let out = run(&config, &mut variants, &test, &labels, &std::env::temp_dir().join("kiln-eval-doc")).unwrap();
//! assert!((out.variants[0].scalars["accuracy"] - 2.0 / 3.0).abs() < 1e-12);
//! assert!(out.verdict.blessed);
//! ```

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
    pub gates: BTreeMap<String, String>,
    /// k of `top_k_accuracy` (default 5; at most the number of classes minus one).
    #[serde(default = "default_top_k")]
    pub top_k: usize,
}

fn default_top_k() -> usize {
    5
}

impl Default for Config {
    fn default() -> Self {
        Config {
            gates: BTreeMap::new(),
            top_k: default_top_k(),
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
}

/// One gate's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct GateResult {
    /// Variant checked.
    pub variant: String,
    /// Metric name.
    pub metric: String,
    /// The condition as written.
    pub condition: String,
    /// The measured value.
    pub value: f64,
    /// Whether it held.
    pub passed: bool,
}

/// verdict.json: whether the evaluated models are blessed for deployment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verdict {
    /// True when every gate passed (or there were none).
    pub blessed: bool,
    /// Human-readable summary.
    pub reason: String,
}

/// What the stage produced.
#[derive(Debug, Clone)]
pub struct Output {
    /// Metrics per variant, in input order.
    pub variants: Vec<VariantMetrics>,
    /// Every gate checked.
    pub gates: Vec<GateResult>,
    /// The verdict written to verdict.json.
    pub verdict: Verdict,
}

impl Config {
    /// Gates that cannot be checked, as (key path, message) pairs.
    pub fn problems(&self) -> Vec<(String, String)> {
        self.gates
            .iter()
            .filter_map(|(m, c)| {
                let err = if !METRICS.contains(&m.as_str()) {
                    Some(format!(
                        "gate on unknown metric `{m}`; gates can use {}",
                        METRICS.join(", ")
                    ))
                } else {
                    parse_gate(m, c).err().map(|e| e.to_string())
                };
                err.map(|e| (format!("gates.{m}"), e))
            })
            .collect()
    }
}

fn parse_gate(metric: &str, cond: &str) -> Result<(String, f64)> {
    let c = cond.trim();
    for op in [">=", "<=", ">", "<"] {
        if let Some(rest) = c.strip_prefix(op) {
            let v: f64 = rest.trim().parse().map_err(|_| {
                EvaluateError::Config(format!(
                    "gate `{metric} = \"{cond}\"`: `{}` is not a number",
                    rest.trim()
                ))
            })?;
            return Ok((op.to_string(), v));
        }
    }
    Err(EvaluateError::Config(format!(
        "gate `{metric} = \"{cond}\"` must start with >=, >, <= or < (e.g. \">= 0.97\")"
    )))
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
    run_report(config, variants, data, class_labels, &[], out_dir)
}

/// [`run`], also drawing the training `curves` of the variants' training stages into the
/// report (`curves-<stage>.svg|png`), beside the per-variant plots.
pub fn run_report(
    config: &Config,
    variants: &mut [(String, &mut dyn Predictor)],
    data: &Dataset,
    class_labels: &[String],
    curves: &[plots::Curves],
    out_dir: &Path,
) -> Result<Output> {
    let _span = tracing::info_span!("evaluate").entered();
    let gates: Vec<(String, String, String, f64)> = config
        .gates
        .iter()
        .map(|(m, c)| {
            if !METRICS.contains(&m.as_str()) {
                return Err(EvaluateError::Config(format!(
                    "gate on unknown metric `{m}`; gates can use {}",
                    METRICS.join(", ")
                )));
            }
            let (op, v) = parse_gate(m, c)?;
            Ok((m.clone(), c.clone(), op, v))
        })
        .collect::<Result<_>>()?;
    let regression = data.is_regression();
    if let Some((m, ..)) = gates
        .iter()
        .find(|(m, ..)| REGRESSION_METRICS.contains(&m.as_str()) != regression)
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
    for (name, predictor) in variants.iter_mut() {
        let p = predictor.predict_batched(&data.features, data.n_rows(), EVAL_BATCH)?;
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
        };
        results.push(m);
    }
    let mut checked = Vec::new();
    for v in &results {
        for (metric, cond, op, thr) in &gates {
            let value = v.scalars.get(metric).copied().unwrap_or(f64::NAN);
            let passed = match op.as_str() {
                ">=" => value >= *thr,
                ">" => value > *thr,
                "<=" => value <= *thr,
                _ => value < *thr,
            };
            checked.push(GateResult {
                variant: v.name.clone(),
                metric: metric.clone(),
                condition: cond.clone(),
                value,
                passed,
            });
        }
    }
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
    let verdict = if gates.is_empty() {
        Verdict {
            blessed: true,
            reason: "no gates".into(),
        }
    } else if failed.is_empty() {
        Verdict {
            blessed: true,
            reason: format!("all {} gates passed", checked.len()),
        }
    } else {
        Verdict {
            blessed: false,
            reason: failed.join("; "),
        }
    };
    std::fs::create_dir_all(out_dir).map_err(|e| kiln_core::CoreError::io(out_dir, e))?;
    let mut metrics_json = BTreeMap::new();
    for v in &results {
        metrics_json.insert(v.name.clone(), v.scalars.clone());
    }
    kiln_core::write_json(
        &out_dir.join("metrics.json"),
        &serde_json::json!({ "variants": metrics_json }),
    )?;
    let details: BTreeMap<_, _> = results.iter().map(|v| (v.name.clone(), v)).collect();
    kiln_core::write_json(&out_dir.join("confusion.json"), &details)?;
    kiln_core::write_json(
        &out_dir.join("verdict.json"),
        &serde_json::json!({ "blessed": verdict.blessed, "reason": verdict.reason, "gates": checked }),
    )?;
    let mut text = report(&results, &checked, &verdict, class_labels);
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
    let mut s = String::from("# Evaluation report\n\n| variant | predictor |");
    for (_, title) in cols {
        s += &format!(" {title} |");
    }
    s += &format!("\n|---|---|{}\n", "---|".repeat(cols.len()));
    for v in results {
        s += &format!("| {} | {} |", v.name, v.predictor);
        for (key, _) in cols {
            match v.scalars.get(*key) {
                Some(x) => s += &format!(" {x:.4} |"),
                None => s += " — |",
            }
        }
        s += "\n";
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

    #[test]
    fn gates_parse_and_reject_nonsense() {
        assert_eq!(
            parse_gate("accuracy", ">= 0.97").unwrap(),
            (">=".to_string(), 0.97)
        );
        assert_eq!(
            parse_gate("accuracy", "<0.5").unwrap(),
            ("<".to_string(), 0.5)
        );
        assert!(
            parse_gate("accuracy", "0.97")
                .unwrap_err()
                .to_string()
                .contains("must start with")
        );
        assert!(
            parse_gate("accuracy", ">= high")
                .unwrap_err()
                .to_string()
                .contains("not a number")
        );
    }
}
