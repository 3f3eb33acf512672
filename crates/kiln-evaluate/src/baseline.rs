//! Baselines fitted on the training split beside every evaluated model, so a report shows
//! at once whether the network earns its keep: the majority class (the mean for a
//! regressor) and a linear model on the same features — L2-regularized multinomial
//! logistic regression (linfa-logistic) or ridge regression (closed form, linfa-linalg), with scikit-learn's default
//! strength (C = 1, alpha = 1).

use kiln_core::dataset::SplitData;
use kiln_core::{Dataset, Predictions, Predictor, Result as CoreResult};
use linfa::prelude::*;
use ndarray::{Array1, Array2};
use rand::Rng;
use rand::SeedableRng;
use rand::seq::index::sample;

/// Multiply-adds of one pass over the fitting rows (rows × features × outputs) a linear
/// baseline may cost: its rows are a seeded subsample beyond that (MNIST: 637 of 51,000
/// rows, a third of a second for the logistic fit); ridge's system is min(rows,
/// features)² and built in rows × features × min(rows, features) multiply-adds.
pub const BUDGET: usize = 5_000_000;

/// Rows a linear baseline is fitted on: at least this many when the data has them…
pub const MIN_ROWS: usize = 500;

/// …and at most this many.
pub const MAX_ROWS: usize = 20_000;

/// Rows to fit a linear baseline on for `features` inputs and `outputs` outputs.
pub fn fit_rows(n: usize, features: usize, outputs: usize) -> usize {
    (BUDGET / (features * outputs).max(1))
        .clamp(MIN_ROWS, MAX_ROWS)
        .min(n)
}

/// L-BFGS iterations of the logistic fit (scikit-learn's `max_iter` default).
const LOGISTIC_ITERATIONS: u64 = 100;

/// A seeded uniform sample of `max` rows of `split` (all of them when it has fewer), in
/// row order, read shard by shard (reservoir sampling: what a streamed split fits the
/// baselines on).
pub fn sample_rows(split: &SplitData<'_>, max: usize, seed: u64) -> CoreResult<Dataset> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(0xba5e);
    // a later row takes a slot when its draw lands in it
    let mut kept: Vec<Kept> = Vec::new();
    split.for_each_part(&mut |part: &Dataset, first| -> CoreResult<()> {
        for r in 0..part.n_rows() {
            let i = first + r;
            let slot = if i < max {
                kept.len()
            } else {
                rng.gen_range(0..=i)
            };
            if slot < max {
                let row = Kept {
                    row: i,
                    x: part.row(r).to_vec(),
                    label: part.labels.get(r).copied(),
                    value: part.values.get(r).copied(),
                };
                if slot == kept.len() {
                    kept.push(row);
                } else {
                    kept[slot] = row;
                }
            }
        }
        Ok(())
    })?;
    kept.sort_by_key(|k| k.row);
    Ok(Dataset {
        feature_names: split.feature_names().to_vec(),
        target: String::new(),
        features: kept.iter().flat_map(|k| k.x.iter().copied()).collect(),
        labels: kept.iter().filter_map(|k| k.label).collect(),
        values: kept.iter().filter_map(|k| k.value).collect(),
    })
}

/// A row of a sample: its index in the split, features and target.
struct Kept {
    row: usize,
    x: Vec<f32>,
    label: Option<u32>,
    value: Option<f32>,
}

/// A fitted baseline.
pub struct Baseline {
    name: &'static str,
    model: Fitted,
}

enum Fitted {
    /// Every row gets these logits (log class priors) or this value (the mean).
    Constant(Vec<f32>),
    /// Logits = x · w + b (w: features × outputs).
    Linear { w: Array2<f64>, b: Array1<f64> },
}

impl Baseline {
    /// The baseline's name in reports: `majority`, `mean`, `logistic`, `ridge`.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

impl Predictor for Baseline {
    fn name(&self) -> &str {
        self.name
    }

    fn predict(&mut self, features: &[f32], n_rows: usize) -> CoreResult<Predictions> {
        let logits: Vec<f32> = match &self.model {
            Fitted::Constant(c) => c.iter().copied().cycle().take(n_rows * c.len()).collect(),
            Fitted::Linear { w, b } => {
                let x = Array2::from_shape_fn((n_rows, w.nrows()), |(i, j)| {
                    f64::from(features[i * w.nrows() + j])
                });
                (x.dot(w) + b).iter().map(|&v| v as f32).collect()
            }
        };
        let k = logits.len() / n_rows.max(1);
        let probabilities = match self.name {
            "mean" | "ridge" => Vec::new(),
            _ => kiln_core::forward::softmax_rows(&logits, k),
        };
        Ok(Predictions {
            n_rows,
            n_outputs: k,
            logits,
            probabilities,
        })
    }
}

/// Rows of `data` to fit on: all of them, or a seeded sample of [`fit_rows`].
fn rows(data: &Dataset, outputs: usize, seed: u64) -> Vec<usize> {
    let n = data.n_rows();
    let m = fit_rows(n, data.n_features(), outputs);
    if n <= m {
        return (0..n).collect();
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut r = sample(&mut rng, n, m).into_vec();
    r.sort_unstable();
    r
}

fn matrix(data: &Dataset, rows: &[usize]) -> Array2<f64> {
    let w = data.n_features();
    Array2::from_shape_fn((rows.len(), w), |(i, j)| {
        f64::from(data.features[rows[i] * w + j])
    })
}

/// The baselines of a classifier with `n_classes` outputs, fitted on `train`: the
/// majority class (log priors as logits) and logistic regression. A fit that fails is
/// left out with a warning; it never fails the stage.
pub fn fit(train: &Dataset, n_classes: usize, seed: u64) -> Vec<Baseline> {
    let _span = tracing::info_span!("baselines").entered();
    let mut out = Vec::new();
    if train.is_regression() {
        let n = train.values.len().max(1) as f64;
        let mean = train.values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        out.push(Baseline {
            name: "mean",
            model: Fitted::Constant(vec![mean as f32]),
        });
        match ridge(train, seed) {
            Ok(model) => out.push(Baseline {
                name: "ridge",
                model,
            }),
            Err(e) => tracing::warn!("ridge baseline left out: {e}"),
        }
    } else {
        let k = n_classes.max(1);
        let mut counts = vec![0usize; k];
        for &l in &train.labels {
            if let Some(c) = counts.get_mut(l as usize) {
                *c += 1;
            }
        }
        let n = train.labels.len().max(1) as f64;
        // log priors, with an absent class at the log of half a row
        let priors = counts
            .iter()
            .map(|&c| ((c as f64).max(0.5) / n).ln() as f32)
            .collect();
        out.push(Baseline {
            name: "majority",
            model: Fitted::Constant(priors),
        });
        match logistic(train, k, seed) {
            Ok(model) => out.push(Baseline {
                name: "logistic",
                model,
            }),
            Err(e) => tracing::warn!("logistic baseline left out: {e}"),
        }
    }
    out
}

/// Multinomial logistic regression, L2 strength 1 (scikit-learn's C = 1).
fn logistic(train: &Dataset, k: usize, seed: u64) -> Result<Fitted, String> {
    let r = rows(train, k, seed);
    let x = matrix(train, &r);
    let y: Array1<usize> = r.iter().map(|&i| train.labels[i] as usize).collect();
    let fitted = linfa_logistic::MultiLogisticRegression::default()
        .alpha(1.0)
        .max_iterations(LOGISTIC_ITERATIONS)
        .fit(&linfa::Dataset::new(x, y))
        .map_err(|e| e.to_string())?;
    // the fit knows only the classes it saw; the others get a very low logit
    let d = train.n_features();
    let mut w = Array2::zeros((d, k));
    let mut b = Array1::from_elem(k, -30.0);
    for (j, &c) in fitted.classes().iter().enumerate() {
        if c < k {
            w.column_mut(c).assign(&fitted.params().column(j));
            b[c] = fitted.intercept()[j];
        }
    }
    Ok(Fitted::Linear { w, b })
}

/// Ridge regression, alpha 1 on the summed squared error (scikit-learn's `Ridge()`):
/// features and target centred, then the normal equations solved by linfa-linalg's
/// Cholesky decomposition (symmetric positive definite for alpha > 0): `(XᵀX + I) w = Xᵀy`
/// when there are more rows than features, else the same solution through the rows'
/// Gram matrix, `(XXᵀ + I) a = y`, `w = Xᵀa`, so the system is never larger than
/// min(rows, features)². Exact in one pass, where coordinate descent took 15 s on 96
/// correlated piecewise-linear features of 32k rows.
fn ridge(train: &Dataset, seed: u64) -> Result<Fitted, String> {
    use linfa_linalg::cholesky::SolveC;
    let r = rows(train, 1, seed);
    let mut x = matrix(train, &r);
    let mut y: Array1<f64> = r.iter().map(|&i| f64::from(train.values[i])).collect();
    let means = x.mean_axis(ndarray::Axis(0)).ok_or("no training rows")?;
    let y_mean = y.mean().ok_or("no training rows")?;
    x -= &means;
    y -= y_mean;
    let plus_identity = |mut a: Array2<f64>| {
        a.diag_mut().mapv_inplace(|v| v + 1.0);
        a
    };
    let w = if x.nrows() >= x.ncols() {
        let xty = x.t().dot(&y).insert_axis(ndarray::Axis(1));
        plus_identity(x.t().dot(&x))
            .solvec(&xty)
            .map_err(|e| e.to_string())?
    } else {
        let a = plus_identity(x.dot(&x.t()))
            .solvec(&y.insert_axis(ndarray::Axis(1)))
            .map_err(|e| e.to_string())?;
        x.t().dot(&a)
    };
    let b = y_mean - means.dot(&w.column(0));
    Ok(Fitted::Linear {
        w,
        b: Array1::from_elem(1, b),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table of golden/sklearn_baselines.py.
    fn table(labels: Vec<u32>, values: Vec<f32>) -> Dataset {
        let x = [
            [0.0, 0.0],
            [0.5, 0.2],
            [1.0, 0.1],
            [0.2, 0.9],
            [0.1, 1.4],
            [0.7, 1.1],
            [1.5, 1.6],
            [1.2, 1.9],
            [2.0, 1.3],
            [0.9, 0.8],
            [1.1, 0.4],
            [0.3, 1.8],
        ];
        Dataset {
            feature_names: vec!["a".into(), "b".into()],
            target: "y".into(),
            features: x.iter().flatten().copied().collect(),
            labels,
            values,
        }
    }

    const TEST: [f32; 8] = [0.4, 0.4, 0.6, 1.3, 1.6, 1.5, 1.0, 1.0];

    fn close(got: &[f32], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((f64::from(*g) - w).abs() < tol, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn logistic_and_majority_match_scikit_learn() {
        let train = table(vec![0, 0, 0, 1, 1, 1, 2, 2, 2, 1, 0, 2], vec![]);
        let mut b = fit(&train, 3, 7);
        assert_eq!(
            b.iter().map(|b| b.name()).collect::<Vec<_>>(),
            ["majority", "logistic"]
        );
        // scikit-learn 1.9.1, LogisticRegression() (golden/sklearn_baselines.py)
        let p = b[1].predict(&TEST, 4).unwrap();
        close(
            &p.probabilities,
            &[
                0.540_871_519_327_177_8,
                0.361_935_484_587_770_03,
                0.097_192_996_085_052_22,
                0.185_306_854_447_418_07,
                0.445_491_749_739_327_54,
                0.369_201_395_813_254_4,
                0.100_719_461_664_213_25,
                0.201_105_866_570_416_13,
                0.698_174_671_765_370_6,
                0.284_658_310_344_204_14,
                0.355_203_348_133_364_9,
                0.360_138_341_522_430_96,
            ],
            2e-3,
        );
        // 4, 4 and 4 rows: the priors are equal, the first class wins ties
        let m = b[0].predict(&TEST, 4).unwrap();
        close(&m.probabilities, &[1.0 / 3.0; 12], 1e-6);
        assert_eq!(m.argmax(), [0, 0, 0, 0]);
    }

    #[test]
    fn a_class_absent_from_training_gets_no_probability() {
        let train = table(vec![0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1], vec![]);
        let mut b = fit(&train, 3, 7);
        let p = b[1].predict(&TEST, 4).unwrap();
        assert_eq!(p.n_outputs, 3);
        assert!(p.probabilities.chunks(3).all(|r| r[2] < 1e-9), "{p:?}");
        // the majority: 7 and 5 of 12 rows, the absent class counted as half a row
        let p = b[0].predict(&TEST[..2], 1).unwrap();
        close(
            &p.probabilities,
            &[7.0 / 12.5, 5.0 / 12.5, 0.5 / 12.5],
            1e-6,
        );
    }

    #[test]
    fn ridge_and_mean_match_scikit_learn() {
        let t = vec![0.3, 0.9, 1.2, 1.0, 1.5, 1.9, 3.2, 3.0, 3.4, 1.8, 1.4, 2.0];
        let mean = t.iter().map(|&v: &f32| f64::from(v)).sum::<f64>() / 12.0;
        let mut b = fit(&table(vec![], t), 1, 7);
        assert_eq!(
            b.iter().map(|b| b.name()).collect::<Vec<_>>(),
            ["mean", "ridge"]
        );
        close(&b[0].predict(&TEST, 4).unwrap().logits, &[mean; 4], 1e-6);
        // scikit-learn 1.9.1, Ridge() (golden/sklearn_baselines.py)
        let p = b[1].predict(&TEST, 4).unwrap();
        assert!(p.probabilities.is_empty());
        close(
            &p.logits,
            &[
                1.039_040_049_319_668_3,
                1.900_295_784_490_115_4,
                2.901_082_569_708_895_3,
                2.008_497_248_761_209,
            ],
            // the closed form is exact: only the f32 features and output remain
            1e-6,
        );
    }

    /// With more features than rows the fit goes through the rows' Gram matrix; its
    /// weights must still solve the normal equations `(XᵀX + I) w = Xᵀy` of the centred
    /// data, and the intercept put the mean prediction at the mean target.
    #[test]
    fn wide_ridge_solves_the_same_normal_equations() {
        let (n, d) = (5usize, 8usize);
        let features: Vec<f32> = (0..n * d)
            .map(|k| ((k * 7 % 11) as f32 - 5.0) / 3.0 + (k / d) as f32 * 0.1)
            .collect();
        let values = vec![1.0, -2.0, 0.5, 3.0, 0.25];
        let data = Dataset {
            feature_names: (0..d).map(|j| format!("f{j}")).collect(),
            target: "y".into(),
            features,
            labels: vec![],
            values: values.clone(),
        };
        let Fitted::Linear { w, b } = ridge(&data, 1).unwrap() else {
            panic!("ridge is linear")
        };
        assert_eq!(w.dim(), (d, 1));
        let x = Array2::from_shape_fn((n, d), |(i, j)| f64::from(data.features[i * d + j]));
        let means = x.mean_axis(ndarray::Axis(0)).unwrap();
        let xc = &x - &means;
        let y: Array1<f64> = values.iter().map(|&v| f64::from(v)).collect();
        let yc = &y - y.mean().unwrap();
        let lhs = xc.t().dot(&xc).dot(&w.column(0)) + w.column(0);
        let rhs = xc.t().dot(&yc);
        for (l, r) in lhs.iter().zip(&rhs) {
            assert!((l - r).abs() < 1e-9, "{lhs} vs {rhs}");
        }
        let mean_pred = (x.dot(&w.column(0)) + b[0]).mean().unwrap();
        assert!((mean_pred - y.mean().unwrap()).abs() < 1e-9);
        // not the zero solution: the fit explains part of the target
        assert!(w.iter().any(|v| v.abs() > 1e-3), "{w}");
    }

    #[test]
    fn wide_data_is_fitted_on_a_subsample_within_the_budget() {
        assert_eq!(fit_rows(51_000, 784, 10), 637);
        assert_eq!(fit_rows(500, 784, 10), 500);
        assert_eq!(fit_rows(1_000_000, 4, 3), MAX_ROWS);
        assert_eq!(fit_rows(1_000_000, 100_000, 10), MIN_ROWS);
    }
}
