//! Looking inside the scores: permutation feature importance (how much the main metric
//! falls when one feature's values are shuffled across rows) and slices (metrics per
//! value of one feature column).

use kiln_core::{Dataset, EVAL_BATCH, Predictor, Schema, Transform};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// `importance = { top = 10, rows = 2000 }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Importance {
    /// Features listed in the report (default 10).
    #[serde(default = "default_top")]
    pub top: usize,
    /// Validation rows used, the first ones (default 2000).
    #[serde(default = "default_rows")]
    pub rows: usize,
}

fn default_top() -> usize {
    10
}
fn default_rows() -> usize {
    2000
}

/// One feature's importance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureImportance {
    /// Feature name.
    pub feature: String,
    /// Main metric with the data as it is minus with this feature shuffled (positive =
    /// the model relies on it).
    pub drop: f64,
}

/// The main metric of a task: accuracy for class labels, R² for regression values.
pub fn main_metric(data: &Dataset, logits: &[f32], k: usize) -> f64 {
    if data.is_regression() {
        return data.r2(logits);
    }
    let pred = logits.chunks_exact(k.max(1)).map(|r| {
        r.iter()
            .enumerate()
            .fold((0, f32::MIN), |b, (j, &v)| if v > b.1 { (j, v) } else { b })
            .0 as u32
    });
    let ok = pred.zip(&data.labels).filter(|(p, t)| p == *t).count();
    ok as f64 / data.n_rows().max(1) as f64
}

/// Permutation importance of every feature on the first `cfg.rows` rows of `data`,
/// largest drop first. Each feature's column is shuffled with its own seeded stream, so
/// the result does not depend on the order features are visited.
pub fn permutation_importance(
    model: &mut dyn Predictor,
    data: &Dataset,
    cfg: &Importance,
    seed: u64,
) -> kiln_core::Result<Vec<FeatureImportance>> {
    let n = data.n_rows().min(cfg.rows);
    let w = data.n_features();
    let sub = Dataset {
        features: data.features[..n * w].to_vec(),
        labels: data.labels.iter().take(n).copied().collect(),
        values: data.values.iter().take(n).copied().collect(),
        ..data.clone()
    };
    let base_p = model.predict_batched(&sub.features, n, EVAL_BATCH)?;
    let k = base_p.n_outputs;
    let base = main_metric(&sub, &base_p.logits, k);
    let mut out = Vec::with_capacity(w);
    let mut x = sub.features.clone();
    for j in 0..w {
        let mut order: Vec<usize> = (0..n).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(j as u64);
        order.shuffle(&mut rng);
        for (r, &src) in order.iter().enumerate() {
            x[r * w + j] = sub.features[src * w + j];
        }
        let p = model.predict_batched(&x, n, EVAL_BATCH)?;
        out.push(FeatureImportance {
            feature: data.feature_names[j].clone(),
            drop: base - main_metric(&sub, &p.logits, k),
        });
        for r in 0..n {
            x[r * w + j] = sub.features[r * w + j];
        }
    }
    out.sort_by(|a, b| b.drop.total_cmp(&a.drop).then(a.feature.cmp(&b.feature)));
    Ok(out)
}

/// Most distinct values a slice column may have.
pub const MAX_SLICES: usize = 20;

/// The index and name of the feature `column` of `feature_names`, or the `slice_by`
/// error naming the nearest one.
pub fn slice_column(feature_names: &[String], column: &str) -> Result<(usize, String), String> {
    let j = feature_names
        .iter()
        .position(|f| f == column)
        .ok_or_else(|| {
            format!(
                "slice_by: no feature column `{column}`{}",
                kiln_core::nearest(column, feature_names)
                    .map(|n| format!(" (did you mean `{n}`?)"))
                    .unwrap_or_default()
            )
        })?;
    Ok((j, column.to_string()))
}

/// Rows grouped by the raw value of feature `column`: (raw value, row indices), in
/// ascending value order. Raw values undo the schema's fitted transforms, so a slice is
/// named by the value the user's data holds.
pub fn slice_rows(
    data: &Dataset,
    schema: Option<&Schema>,
    column: &str,
) -> Result<Vec<(f64, Vec<usize>)>, String> {
    let (j, _) = slice_column(&data.feature_names, column)?;
    let w = data.n_features();
    let mut groups: Vec<(f32, Vec<usize>)> = Vec::new();
    for r in 0..data.n_rows() {
        let v = data.features[r * w + j];
        match groups.iter_mut().find(|g| g.0 == v) {
            Some(g) => g.1.push(r),
            None => {
                if groups.len() == MAX_SLICES {
                    return Err(format!(
                        "slice_by: column `{column}` has more than {MAX_SLICES} distinct values; slice by a categorical column"
                    ));
                }
                groups.push((v, vec![r]));
            }
        }
    }
    let mut out: Vec<(f64, Vec<usize>)> = groups
        .into_iter()
        .map(|(v, rows)| (raw_value(schema, column, v), rows))
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(out)
}

/// Undoes the fitted transforms on one value of `column` (last transform first).
fn raw_value(schema: Option<&Schema>, column: &str, v: f32) -> f64 {
    let mut x = f64::from(v);
    for t in schema
        .map(|s| s.transforms.as_slice())
        .unwrap_or(&[])
        .iter()
        .rev()
    {
        match t {
            Transform::Scale { columns, by } if columns.iter().any(|c| c == column) => {
                x *= f64::from(*by);
            }
            Transform::Standardize { columns, mean, std } => {
                if let Some(i) = columns.iter().position(|c| c == column) {
                    x = x * f64::from(std[i]) + f64::from(mean[i]);
                }
            }
            Transform::MinMax { columns, min, max } => {
                if let Some(i) = columns.iter().position(|c| c == column) {
                    x = x * f64::from(kiln_core::min_max_range(min[i], max[i])) + f64::from(min[i]);
                }
            }
            Transform::Log1p { columns } if columns.iter().any(|c| c == column) => {
                x = x.exp_m1();
            }
            // impute and clip keep the values they leave; drop / select keep columns
            _ => {}
        }
    }
    // transforms run in f32: round away their noise for display
    (x * 1e4).round() / 1e4
}

/// The rows of `data` at `rows`.
pub fn subset(data: &Dataset, rows: &[usize]) -> Dataset {
    let w = data.n_features();
    Dataset {
        features: rows
            .iter()
            .flat_map(|&r| data.features[r * w..(r + 1) * w].iter().copied())
            .collect(),
        labels: if data.labels.is_empty() {
            vec![]
        } else {
            rows.iter().map(|&r| data.labels[r]).collect()
        },
        values: if data.values.is_empty() {
            vec![]
        } else {
            rows.iter().map(|&r| data.values[r]).collect()
        },
        ..data.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::{Activation, ModelSpec, NativeModel, Task, TensorStore};

    /// class = (x0 > 0); x1 is noise the model ignores.
    fn setup() -> (NativeModel, Dataset) {
        let spec = ModelSpec::mlp(2, &[], Activation::Identity, Task::Classification, 2);
        let mut w = TensorStore::default();
        w.insert_f32("layers.0.weight", vec![2, 2], vec![-1.0, 1.0, 0.0, 0.0]);
        w.insert_f32("layers.0.bias", vec![2], vec![0.0, 0.0]);
        let mut features = Vec::new();
        let mut labels = Vec::new();
        for i in 0..200 {
            let x0 = if i % 2 == 0 { 1.0 } else { -1.0 };
            features.extend([x0, (i % 7) as f32]);
            labels.push(u32::from(x0 > 0.0));
        }
        let data = Dataset {
            feature_names: vec!["signal".into(), "noise".into()],
            target: "y".into(),
            features,
            labels,
            values: vec![],
        };
        (NativeModel::new(spec, w).unwrap(), data)
    }

    #[test]
    fn importance_finds_the_signal_and_ignores_the_noise() {
        let (mut m, data) = setup();
        let cfg = Importance { top: 2, rows: 200 };
        let imp = permutation_importance(&mut m, &data, &cfg, 1).unwrap();
        assert_eq!(imp[0].feature, "signal");
        // shuffling a balanced ±1 column leaves about half the rows right
        assert!(imp[0].drop > 0.3 && imp[0].drop < 0.7, "{}", imp[0].drop);
        // exactly: the model is right on a row whose shuffled signal keeps the row's own
        // sign, so the drop is the share of rows whose sign changed; the shuffle of
        // feature 0 is ChaCha8 seeded 1 on stream 0
        let mut order: Vec<usize> = (0..200).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        rng.set_stream(0);
        order.shuffle(&mut rng);
        let kept = order.iter().enumerate().filter(|(r, s)| *r % 2 == *s % 2);
        let want = 1.0 - kept.count() as f64 / 200.0;
        assert_eq!(imp[0].drop, want);
        // measured: 116 of the 200 rows change sign
        assert!((imp[0].drop - 0.58).abs() < 1e-12, "{}", imp[0].drop);
        assert_eq!((imp[1].feature.as_str(), imp[1].drop), ("noise", 0.0));
        // seeded: the same numbers again
        assert_eq!(permutation_importance(&mut m, &data, &cfg, 1).unwrap(), imp);
        // `rows` takes the first rows only: rows = 50 is the call on those 50 rows, and
        // not the call on all 200
        let capped = Importance { top: 2, rows: 50 };
        let first50 = subset(&data, &(0..50).collect::<Vec<_>>());
        let got = permutation_importance(&mut m, &data, &capped, 1).unwrap();
        assert_eq!(
            got,
            permutation_importance(&mut m, &first50, &cfg, 1).unwrap()
        );
        assert_ne!(got[0].drop, imp[0].drop, "{got:?}");
    }

    #[test]
    fn slices_group_rows_by_raw_value() {
        let (_, data) = setup();
        let schema = Schema {
            version: 1,
            input_columns: data.feature_names.clone(),
            feature_names: data.feature_names.clone(),
            target: "y".into(),
            task: Task::Classification,
            image: None,
            class_labels: vec!["0".into(), "1".into()],
            transforms: vec![Transform::Scale {
                columns: vec!["noise".into()],
                by: 0.5,
            }],
        };
        let s = slice_rows(&data, Some(&schema), "noise").unwrap();
        assert_eq!(s.len(), 7);
        // stored values 0..6 are raw values 0, 0.5, ..., 3 (x / 0.5 was applied), and
        // slice k holds exactly the rows i with i % 7 == k, in row order
        for (k, (value, rows)) in s.iter().enumerate() {
            assert_eq!(*value, k as f64 * 0.5);
            let want: Vec<usize> = (0..200).filter(|i| i % 7 == k).collect();
            assert_eq!(rows, &want, "slice {k}");
        }
        assert!(
            slice_rows(&data, None, "nois")
                .unwrap_err()
                .contains("did you mean `noise`")
        );
        // subset: the rows asked for, in that order, features and labels together
        let sub = subset(&data, &[5, 0, 199]);
        assert_eq!(sub.features, vec![-1.0, 5.0, 1.0, 0.0, -1.0, 3.0]);
        assert_eq!(sub.labels, vec![0, 1, 0]);
        assert!(sub.values.is_empty());
        assert_eq!(sub.feature_names, data.feature_names);
        // min_max then log1p undone: stored k -> e^k - 1 -> (e^k - 1) * 2 + 1
        let mut schema = schema;
        schema.transforms = vec![
            Transform::MinMax {
                columns: vec!["noise".into()],
                min: vec![1.0],
                max: vec![3.0],
            },
            Transform::Log1p {
                columns: vec!["noise".into()],
            },
        ];
        let s = slice_rows(&data, Some(&schema), "noise").unwrap();
        assert_eq!(s[0].0, 1.0);
        assert_eq!(s[1].0, ((1f64.exp_m1() * 2.0 + 1.0) * 1e4).round() / 1e4);
    }
}
