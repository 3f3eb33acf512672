//! The gates: which apply to the task, each variant's gate and `max_drop` checks, and the
//! verdict they make.

use crate::{
    Config, EvaluateError, GateResult, LOWER_IS_BETTER, METRICS, REGRESSION_METRICS, Result,
    VariantMetrics, Verdict,
};

/// Refuses a gate on a metric the task does not have (a regression gate on a classifier,
/// or the other way round).
pub(crate) fn applicable(config: &Config, regression: bool) -> Result<()> {
    let gates = &config.gates;
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
    Ok(())
}

/// Every gate of every variant, then every `max_drop` limit of every variant but its
/// reference.
pub(crate) fn check(config: &Config, results: &[VariantMetrics]) -> Result<Vec<GateResult>> {
    let mut checked = Vec::new();
    for v in results {
        for (metric, cond) in &config.gates {
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
    Ok(checked)
}

/// Blessed when every checked gate passed (or there are none); else the failures.
pub(crate) fn verdict(checked: &[GateResult]) -> Verdict {
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
    Verdict {
        blessed,
        reason,
        gates: checked.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use crate::{Config, MaxDrop, Output, Result, run};
    use kiln_core::{Dataset, Predictor};

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
}
