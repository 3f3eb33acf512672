//! The parity gate: ONNX Runtime's outputs against kiln-core's reference forward pass on
//! the same rows, batched identically (dynamic int8 quantization takes its range from the
//! whole batch, so both sides must see the same batches).

use crate::{DeployError, Result};
pub use kiln_core::artifact::parity::{ParityReport, WorstRow};
use kiln_core::dataset::{Moments, SplitData};
use kiln_core::{Dataset, NativeModel, Predictions, Predictor, tolerance};

/// How many of the most different rows a report keeps.
pub const WORST_ROWS: usize = 5;

/// |a - b|, where a NaN or infinite difference counts as `f32::MAX`.
fn abs_diff(a: f32, b: f32) -> f32 {
    let d = (a - b).abs();
    if d.is_finite() { d } else { f32::MAX }
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| abs_diff(*x, *y))
        .fold(0.0, f32::max)
}

/// Compares two sets of predictions of the same rows (`native` is the reference).
pub fn compare(
    native: &Predictions,
    onnx: &Predictions,
    batch: usize,
    tolerance: f32,
) -> ParityReport {
    compare_with(native, onnx, batch, tolerance, None, &|_, _| false)
}

/// [`compare`], where a row beyond the tolerance still passes when `one_step(row,
/// fits)` finds a one-step move of an int8 activation after which the reference's
/// outputs for that row satisfy `fits` (within the tolerance of the ONNX row). A
/// regressor's differences are relative to `scales` when given (the whole split's, for
/// a part of it), else to those of `native` (`regression_scales`).
#[allow(clippy::type_complexity)] // one callback taking another, spelled out once
pub fn compare_with(
    native: &Predictions,
    onnx: &Predictions,
    batch: usize,
    tolerance: f32,
    scales: Option<&[f32]>,
    one_step: &dyn Fn(usize, &dyn Fn(&[f32]) -> bool) -> bool,
) -> ParityReport {
    let k = native.n_outputs.max(1);
    let same_shape = native.n_rows == onnx.n_rows
        && native.n_outputs == onnx.n_outputs
        && native.logits.len() == onnx.logits.len()
        && native.probabilities.len() == onnx.probabilities.len();
    let has_probs = !native.probabilities.is_empty();
    let scales = match (has_probs, scales) {
        (true, _) => Vec::new(),
        (false, Some(s)) => s.to_vec(),
        (false, None) => regression_scales(native),
    };
    let (na, oa) = (native.argmax(), onnx.argmax());
    let mut rows: Vec<WorstRow> = (0..native.n_rows.min(onnx.n_rows))
        .map(|i| {
            let span = i * k..(i + 1) * k;
            let logit = match (
                native.logits.get(span.clone()),
                onnx.logits.get(span.clone()),
            ) {
                (Some(a), Some(b)) => max_abs(a, b),
                _ => f32::MAX,
            };
            let diff = if has_probs {
                match (
                    native.probabilities.get(span.clone()),
                    onnx.probabilities.get(span),
                ) {
                    (Some(a), Some(b)) => max_abs(a, b),
                    _ => f32::MAX,
                }
            } else {
                match (native.logits.get(span.clone()), onnx.logits.get(span)) {
                    (Some(a), Some(b)) => relative_diff(a, b, &scales),
                    _ => f32::MAX,
                }
            };
            WorstRow {
                row: i,
                diff,
                max_abs_logit: logit,
                native_class: na.get(i).copied().unwrap_or(0),
                onnx_class: oa.get(i).copied().unwrap_or(u32::MAX),
            }
        })
        .collect();
    // rows beyond the tolerance that one rounding step of the reference explains, up to
    // the first one none explains: the gate has failed then, and each search reruns the
    // row's batch (a systematically wrong export would otherwise search every row)
    let mut rounding_rows = Vec::new();
    if same_shape {
        for r in rows.iter().filter(|r| r.diff > tolerance) {
            let span = r.row * k..(r.row + 1) * k;
            let fits = |logits: &[f32]| row_diff(logits, onnx, span.clone(), &scales) <= tolerance;
            if !one_step(r.row, &fits) {
                break;
            }
            rounding_rows.push(r.row);
        }
    }
    let mut max_abs_logit = rows.iter().map(|r| r.max_abs_logit).fold(0.0, f32::max);
    let mut max_abs_prob = if has_probs {
        rows.iter().map(|r| r.diff).fold(0.0, f32::max)
    } else {
        0.0
    };
    if !same_shape {
        max_abs_logit = f32::MAX;
        max_abs_prob = f32::MAX;
    }
    let agree = rows
        .iter()
        .filter(|r| r.native_class == r.onnx_class)
        .count();
    let gated = rows
        .iter()
        .filter(|r| !rounding_rows.contains(&r.row))
        .map(|r| r.diff)
        .fold(0.0, f32::max);
    rows.sort_by(|a, b| b.diff.total_cmp(&a.diff).then(a.row.cmp(&b.row)));
    rows.truncate(WORST_ROWS);
    ParityReport {
        native: String::new(),
        onnx: String::new(),
        n_rows: native.n_rows,
        batch,
        max_abs_logit,
        max_abs_prob,
        argmax_agreement: agree as f64 / native.n_rows.max(1) as f64,
        tolerance,
        passed: same_shape && gated <= tolerance,
        worst_rows: rows,
        rounding_rows,
    }
}

/// Per output of a regressor, the scale its differences are measured against besides the
/// prediction itself: `max(1, population std of the reference's predictions)`. A
/// prediction near 0 of a target in the thousands is a difference of large sums, so
/// float rounding is relative to the target's spread, not to that one value.
fn regression_scales(native: &Predictions) -> Vec<f32> {
    let k = native.n_outputs.max(1);
    let n = native.logits.len() / k;
    (0..k)
        .map(|j| {
            let col = || native.logits.iter().skip(j).step_by(k).map(|&v| v as f64);
            let mean = col().sum::<f64>() / n.max(1) as f64;
            let var = col().map(|v| (v - mean).powi(2)).sum::<f64>() / n.max(1) as f64;
            scale_of(var)
        })
        .collect()
}

/// `max(1, std)` of a variance (1 when it is not finite).
fn scale_of(var: f64) -> f32 {
    let std = var.sqrt() as f32;
    if std.is_finite() { std.max(1.0) } else { 1.0 }
}

/// `regression_scales` of `model`'s reference predictions over a whole split, read
/// part by part (batches of `batch` rows): per output, the spread that streamed parity
/// measures differences against.
pub fn split_scales(model: &NativeModel, split: &SplitData<'_>, batch: usize) -> Result<Vec<f32>> {
    let mut native = model.clone();
    // per output, merged part by part
    let mut acc: Vec<Moments> = Vec::new();
    split.for_each_part(&mut |part: &Dataset, _| -> Result<()> {
        let p = native.predict_batched(&part.features, part.n_rows(), batch.max(1))?;
        let k = p.n_outputs.max(1);
        acc.resize(k, Moments::default());
        for (j, a) in acc.iter_mut().enumerate() {
            let col = p.logits.iter().skip(j).step_by(k).map(|&v| f64::from(v));
            *a = a.merge(Moments::of(col));
        }
        Ok(())
    })?;
    Ok(acc.iter().map(|m| scale_of(m.variance())).collect())
}

/// `a` (the rows before) and `b` (the next part, whose first row is row `first` of the
/// split) as one report: the largest differences, the rows' agreement, the worst rows
/// of both (renumbered), and passed only when both passed.
pub fn merge(a: ParityReport, b: ParityReport, first: usize) -> ParityReport {
    let n_rows = a.n_rows + b.n_rows;
    let agree = a.argmax_agreement * a.n_rows as f64 + b.argmax_agreement * b.n_rows as f64;
    let mut worst = a.worst_rows;
    worst.extend(b.worst_rows.into_iter().map(|r| WorstRow {
        row: r.row + first,
        ..r
    }));
    worst.sort_by(|x, y| y.diff.total_cmp(&x.diff).then(x.row.cmp(&y.row)));
    worst.truncate(WORST_ROWS);
    let mut rounding_rows = a.rounding_rows;
    rounding_rows.extend(b.rounding_rows.iter().map(|r| r + first));
    ParityReport {
        native: a.native,
        onnx: a.onnx,
        n_rows,
        batch: a.batch,
        max_abs_logit: a.max_abs_logit.max(b.max_abs_logit),
        max_abs_prob: a.max_abs_prob.max(b.max_abs_prob),
        argmax_agreement: agree / n_rows.max(1) as f64,
        tolerance: a.tolerance,
        passed: a.passed && b.passed,
        worst_rows: worst,
        rounding_rows,
    }
}

/// A regressor row's largest difference, each output's relative to `max(|reference|,
/// its scale)` (`regression_scales`).
fn relative_diff(reference: &[f32], onnx: &[f32], scales: &[f32]) -> f32 {
    reference
        .iter()
        .zip(onnx)
        .enumerate()
        .map(|(j, (x, y))| {
            if !x.is_finite() {
                // an infinite reference would make any difference relative 0
                return f32::MAX;
            }
            let scale = scales.get(j).copied().unwrap_or(1.0);
            abs_diff(*x, *y) / x.abs().max(scale)
        })
        .fold(0.0, f32::max)
}

/// The gated difference between `reference` (one row's logits) and the ONNX side's row
/// at `span`: the largest probability difference (softmax of the logits against ONNX
/// Runtime's probabilities) for classifiers, [`relative_diff`] for regressors.
fn row_diff(
    reference: &[f32],
    onnx: &Predictions,
    span: std::ops::Range<usize>,
    scales: &[f32],
) -> f32 {
    if onnx.probabilities.is_empty() {
        relative_diff(reference, &onnx.logits[span], scales)
    } else {
        let p = kiln_core::forward::softmax_rows(reference, reference.len());
        max_abs(&p, &onnx.probabilities[span])
    }
}

/// Runs both predictors on `n_rows` rows of `features` with `predict_batched` and the same
/// `batch`, and compares them; `passed` is `max_abs_prob <= tol`.
pub fn check_parity(
    native: &mut dyn Predictor,
    onnx: &mut dyn Predictor,
    features: &[f32],
    n_rows: usize,
    batch: usize,
    tol: f32,
) -> Result<ParityReport> {
    check_rows(features, features, n_rows, batch)?;
    let a = native.predict_batched(features, n_rows, batch)?;
    let b = onnx.predict_batched(features, n_rows, batch)?;
    let mut report = compare(&a, &b, batch, tol);
    report.native = native.name().to_string();
    report.onnx = onnx.name().to_string();
    Ok(report)
}

/// The deploy gate: [`check_parity`] of kiln's reference `model` against `onnx`, where
/// the ONNX side gets `onnx_features` (raw rows for a model with baked preprocessing)
/// and, for an int8 model with smooth activations or layer norm, a row one rounding step
/// of the reference explains passes ([`ParityReport::rounding_rows`]). Also returns the
/// reference predictions.
pub fn check_model_parity(
    model: &NativeModel,
    onnx: &mut dyn Predictor,
    features: (&[f32], &[f32]),
    n_rows: usize,
    batch: usize,
    tol: f32,
) -> Result<(ParityReport, Predictions)> {
    check_model_parity_scaled(model, onnx, features, n_rows, batch, tol, None)
}

/// [`check_model_parity`] of a part of a split: a regressor's differences are relative
/// to the whole split's `scales` ([`split_scales`]) when given.
pub fn check_model_parity_scaled(
    model: &NativeModel,
    onnx: &mut dyn Predictor,
    (features, onnx_features): (&[f32], &[f32]),
    n_rows: usize,
    batch: usize,
    tol: f32,
    scales: Option<&[f32]>,
) -> Result<(ParityReport, Predictions)> {
    check_rows(features, onnx_features, n_rows, batch)?;
    let mut native = model.clone();
    let a = native.predict_batched(features, n_rows, batch)?;
    let b = onnx.predict_batched(onnx_features, n_rows, batch)?;
    let w = features.len() / n_rows;
    let one_step = |row: usize, fits: &dyn Fn(&[f32]) -> bool| {
        // the row's batch, which fixes the dynamic quantization ranges
        let start = row / batch * batch;
        let rows = batch.min(n_rows - start);
        let x = &features[start * w..(start + rows) * w];
        tolerance::one_rounding_step(&model.spec, &model.weights, x, rows, row - start, fits)
            .is_ok_and(|s| s.is_some())
    };
    let mut report = if tolerance::rounding_may_differ(&model.spec, &model.weights)? {
        compare_with(&a, &b, batch, tol, scales, &one_step)
    } else {
        compare_with(&a, &b, batch, tol, scales, &|_, _| false)
    };
    report.native = native.name().to_string();
    report.onnx = onnx.name().to_string();
    Ok((report, a))
}

fn check_rows(features: &[f32], onnx_features: &[f32], n_rows: usize, batch: usize) -> Result<()> {
    if batch == 0 {
        return Err(DeployError::Parity(
            "the parity batch size is 0; set parity_batch to 1 or more".into(),
        ));
    }
    if n_rows == 0
        || !features.len().is_multiple_of(n_rows)
        || onnx_features.len() != features.len()
    {
        return Err(DeployError::Parity(format!(
            "cannot compare {} feature values as {n_rows} rows; pass a non-empty split",
            features.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preds(logits: Vec<f32>, probabilities: Vec<f32>, k: usize) -> Predictions {
        Predictions {
            n_rows: logits.len() / k,
            n_outputs: k,
            logits,
            probabilities,
        }
    }

    #[test]
    fn compare_reports_max_diffs_agreement_and_worst_rows() {
        let a = preds(
            vec![1.0, 0.0, 0.0, 1.0, 2.0, 0.0],
            vec![0.7, 0.3, 0.3, 0.7, 0.9, 0.1],
            2,
        );
        let b = preds(
            vec![1.0, 0.5, 0.0, 1.0, 0.0, 2.0],
            vec![0.6, 0.4, 0.3, 0.7, 0.1, 0.9],
            2,
        );
        let r = compare(&a, &b, 2, 1e-5);
        assert_eq!(r.max_abs_logit, 2.0);
        assert!((r.max_abs_prob - 0.8).abs() < 1e-6);
        assert!((r.argmax_agreement - 2.0 / 3.0).abs() < 1e-12);
        assert!(!r.passed);
        assert_eq!(
            r.worst_rows.iter().map(|w| w.row).collect::<Vec<_>>(),
            [2, 0, 1]
        );
        assert_eq!(
            (r.worst_rows[0].native_class, r.worst_rows[0].onnx_class),
            (0, 1)
        );
        assert!((r.worst_rows[1].diff - 0.1).abs() < 1e-6);
        assert_eq!(r.worst_rows[2].diff, 0.0);
        assert!(
            r.worst_rows_text(kiln_core::Task::Classification)
                .starts_with("row 2 (|dp| 8.000e-1, class 0 vs 1)")
        );

        let same = compare(&a, &a, 2, 0.0);
        assert!(same.passed);
        assert_eq!((same.max_abs_prob, same.argmax_agreement), (0.0, 1.0));
    }

    #[test]
    fn nan_and_shape_mismatch_never_pass_and_stay_valid_json() {
        let a = preds(vec![1.0, 0.0], vec![0.7, 0.3], 2);
        let b = preds(vec![f32::NAN, 0.0], vec![f32::NAN, f32::NAN], 2);
        let r = compare(&a, &b, 1, 1.0);
        assert!(!r.passed);
        assert_eq!(r.max_abs_prob, f32::MAX);
        let json = serde_json::to_string(&r).unwrap();
        let back: ParityReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);

        let short = preds(vec![1.0, 0.0, 1.0], vec![0.5, 0.2, 0.3], 3);
        let r = compare(&a, &short, 1, 1.0);
        assert!(!r.passed);
        assert_eq!(r.max_abs_logit, f32::MAX);
    }

    #[test]
    fn regression_is_gated_on_relative_prediction_difference() {
        // 2.0 vs 2.5: |Δ| = 0.5, relative to max(1, 2) = 0.25
        let a = preds(vec![0.5, 2.0], vec![], 1);
        let b = preds(vec![0.75, 2.5], vec![], 1);
        let r = compare(&a, &b, 2, 0.2);
        assert_eq!((r.max_abs_prob, r.max_abs_logit), (0.0, 0.5));
        // row 0: 0.25 / max(1, 0.5) = 0.25; row 1: 0.5 / 2 = 0.25; ties keep row order
        assert_eq!((r.worst_rows[0].row, r.worst_rows[0].diff), (0, 0.25));
        assert!(!r.passed);
        assert!(compare(&a, &b, 2, 0.25).passed);
        // a large target is held to relative precision: 1000 vs 1000.001 passes, 1000.1 not
        let big = preds(vec![1000.0], vec![], 1);
        let near = preds(vec![1000.001], vec![], 1);
        assert!(compare(&big, &near, 1, 1e-5).passed);
        assert!(!compare(&big, &preds(vec![1000.1], vec![], 1), 1, 1e-5).passed);
        // a prediction near 0 of a target spread over thousands is held to that spread
        // (the population std of the reference's predictions, about 3266): 4e-3 off is
        // about 1e-6 of it and passes, 0.08 off (2.4e-5) does not
        let spread = preds(vec![4000.0, -4000.0, 0.25], vec![], 1);
        let std = regression_scales(&spread)[0];
        let mean = (4000.0f64 - 4000.0 + 0.25) / 3.0;
        let var = [4000.0f64, -4000.0, 0.25]
            .iter()
            .map(|v| (v - mean).powi(2))
            .sum::<f64>()
            / 3.0;
        assert_eq!(std, var.sqrt() as f32);
        let close = preds(vec![4000.0, -4000.0, 0.254], vec![], 1);
        let r = compare(&spread, &close, 3, 1e-5);
        assert!(r.passed, "{r:?}");
        assert!((r.worst_rows[0].diff - 0.004 / std).abs() < 1e-9);
        assert!(
            r.worst_rows_text(kiln_core::Task::Regression)
                .starts_with("row 2 (relative 1.2")
        );
        let off = preds(vec![4000.0, -4000.0, 0.33], vec![], 1);
        assert!(!compare(&spread, &off, 3, 1e-5).passed);
        // an infinite reference never passes, whatever the ONNX side says
        let inf = preds(vec![f32::INFINITY], vec![], 1);
        assert!(!compare(&inf, &inf, 1, 1e-5).passed);
    }

    /// Adds `offset` to every logit of rows at or after `from` (a stand-in for ONNX).
    struct Shifted {
        inner: kiln_core::NativeModel,
        from: usize,
        offset: f32,
        calls: Vec<usize>,
    }

    impl Predictor for Shifted {
        fn name(&self) -> &str {
            "shifted"
        }
        fn predict(&mut self, x: &[f32], n: usize) -> kiln_core::Result<Predictions> {
            let start: usize = self.calls.iter().sum();
            self.calls.push(n);
            let mut p = self.inner.predict(x, n)?;
            let k = p.n_outputs;
            for r in 0..n {
                if start + r >= self.from {
                    p.logits[r * k] += self.offset;
                }
            }
            p.probabilities = kiln_core::forward::softmax_rows(&p.logits, k);
            Ok(p)
        }
    }

    #[test]
    fn check_parity_batches_both_sides_alike_and_finds_the_bad_rows() {
        use kiln_core::{Activation, ModelSpec, Task, TensorStore};
        let spec = ModelSpec::mlp(2, &[], Activation::Identity, Task::Classification, 2);
        let mut w = TensorStore::default();
        w.insert_f32("layers.0.weight", vec![2, 2], vec![1.0, 0.0, 0.0, 1.0]);
        w.insert_f32("layers.0.bias", vec![2], vec![0.0, 0.0]);
        let model = kiln_core::NativeModel::new(spec, w).unwrap();
        let x: Vec<f32> = (0..14).map(|i| i as f32 * 0.1).collect();
        let mut onnx = Shifted {
            inner: model.clone(),
            from: 5,
            offset: 1.0,
            calls: vec![],
        };
        let r = check_parity(&mut model.clone(), &mut onnx, &x, 7, 3, 1e-5).unwrap();
        assert_eq!(onnx.calls, [3, 3, 1]);
        assert_eq!(
            (r.native.as_str(), r.onnx.as_str(), r.n_rows, r.batch),
            ("native", "shifted", 7, 3)
        );
        assert!(!r.passed);
        assert_eq!(r.max_abs_logit, 1.0);
        let mut bad: Vec<usize> = r.worst_rows.iter().take(2).map(|w| w.row).collect();
        bad.sort();
        assert_eq!(bad, [5, 6]);
        assert!(r.worst_rows[2..].iter().all(|w| w.diff == 0.0));

        let e = check_parity(&mut model.clone(), &mut onnx, &x, 7, 0, 1e-5)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("the parity batch size is 0; set parity_batch to 1 or more"),
            "{e}"
        );
        let e = check_parity(&mut model.clone(), &mut onnx, &[], 0, 1, 1e-5)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot compare 0 feature values as 0 rows; pass a non-empty split"),
            "{e}"
        );
    }

    /// The spread of a regressor's predictions over a split read shard by shard equals
    /// the spread over the split at once; merged reports renumber the second part's rows.
    #[test]
    fn split_scales_and_merged_reports_cover_the_whole_split() {
        use kiln_core::dataset::shards;
        use kiln_core::{Activation, ModelSpec, Task, TensorStore};
        let spec = ModelSpec::mlp(2, &[], Activation::Identity, Task::Regression, 1);
        let mut w = TensorStore::default();
        w.insert_f32("layers.0.weight", vec![2, 1], vec![30.0, -4.0]);
        w.insert_f32("layers.0.bias", vec![1], vec![7.0]);
        let model = NativeModel::new(spec, w).unwrap();
        let n = 101;
        let data = Dataset {
            feature_names: vec!["a".into(), "b".into()],
            target: "y".into(),
            features: (0..n * 2).map(|i| ((i * 37) % 23) as f32 / 7.0).collect(),
            labels: vec![],
            values: (0..n).map(|i| i as f32).collect(),
        };
        let dir = tempfile::tempdir().unwrap();
        let empty = Dataset {
            features: vec![],
            values: vec![],
            ..data.clone()
        };
        shards::write(dir.path(), [&empty, &empty, &data], 13).unwrap();
        let s = shards::Shards::open(dir.path()).unwrap();
        let streamed =
            split_scales(&model, &SplitData::Shards(&s, shards::Split::Test), 8).unwrap();
        let whole = regression_scales(&model.clone().predict(&data.features, n).unwrap());
        assert!(whole[0] > 10.0, "{whole:?}");
        assert!(
            (streamed[0] - whole[0]).abs() <= 1e-5 * whole[0],
            "{streamed:?} {whole:?}"
        );

        let p = |logits: Vec<f32>, probabilities: Vec<f32>| Predictions {
            n_rows: logits.len() / 2,
            n_outputs: 2,
            logits,
            probabilities,
        };
        let a = compare(
            &p(vec![1.0, 0.0], vec![0.7, 0.3]),
            &p(vec![1.0, 0.0], vec![0.7, 0.3]),
            1,
            0.01,
        );
        let b = compare(
            &p(vec![1.0, 0.0, 0.0, 1.0], vec![0.7, 0.3, 0.3, 0.7]),
            &p(vec![1.0, 0.0, 1.0, 0.0], vec![0.7, 0.3, 0.6, 0.4]),
            1,
            0.01,
        );
        let m = merge(a, b, 1);
        assert_eq!(m.n_rows, 3);
        assert!(!m.passed);
        assert!((m.argmax_agreement - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.max_abs_prob - 0.3).abs() < 1e-6);
        assert_eq!(m.worst_rows[0].row, 2);
        assert_eq!(
            m.worst_rows.iter().map(|r| r.row).collect::<Vec<_>>(),
            [2, 0, 1]
        );
    }
}
