//! The evaluation stage's configuration: gates and their conditions, `max_drop`,
//! importance, slices and the runtime, with the metric names gates can use.

use crate::analysis;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
    /// Fit baselines on the training split and score them beside the model: the majority
    /// class and logistic regression (classification), the mean and ridge regression
    /// (regression). Default true; never gated.
    #[serde(default = "default_true")]
    pub baselines: bool,
}

fn default_true() -> bool {
    true
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
            baselines: true,
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

impl Config {
    /// Gates that cannot be checked, as (key path, message) pairs.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut p: Vec<(String, String)> = Vec::new();
        if self.top_k == 0 {
            p.push((
                "top_k".into(),
                "top_k = 0 counts no prediction as right; use 1 or more (5 is the default)".into(),
            ));
        }
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
                    let names: Vec<String> = METRICS.iter().map(|s| s.to_string()).collect();
                    let hint = kiln_core::nearest(m, &names)
                        .map(|n| format!("did you mean `{n}`? "))
                        .unwrap_or_default();
                    (
                        format!("gates.{m}"),
                        format!(
                            "gate on unknown metric `{m}`; {hint}gates can use {}",
                            METRICS.join(", ")
                        ),
                    )
                }),
        );
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
