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
pub mod baseline;
mod config;
mod gates;
pub mod metrics;
pub mod plots;
mod report;
mod score;

pub use config::{
    Condition, Config, LOWER_IS_BETTER, METRICS, MaxDrop, Op, REGRESSION_METRICS, Runtime,
};
pub use score::VariantMetrics;

use kiln_core::dataset::SplitData;
use kiln_core::{Dataset, EVAL_BATCH, Predictions, Predictor};
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

/// What the caller knows beyond the variants and the test split.
#[derive(Default)]
pub struct Extras<'a> {
    /// Training histories to draw.
    pub curves: &'a [plots::Curves],
    /// Per variant, in the same order, kiln's native forward pass when the variants run
    /// through ONNX Runtime: the report states the difference on every test row.
    pub reference: Vec<&'a mut dyn Predictor>,
    /// The validation split, for permutation importance (its first rows).
    pub valid: Option<SplitData<'a>>,
    /// The dataset schema, to name slices by raw values.
    pub schema: Option<&'a kiln_core::Schema>,
    /// Seed of the importance shuffles (and of the baselines' subsample).
    pub seed: u64,
    /// The training split, to fit the baselines on (none without it; a seeded sample
    /// of [`baseline::MAX_ROWS`] rows when it is streamed).
    pub train: Option<SplitData<'a>>,
    /// The features' image shape, for a model that reads images: the report then shows
    /// misclassified test images.
    pub image: Option<kiln_core::ImageShape>,
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
    /// The baselines' scores on the same rows (empty when off or without a training
    /// split).
    pub baselines: Vec<VariantMetrics>,
    /// Seconds spent fitting and scoring the baselines.
    pub baseline_seconds: f64,
}

/// Scores every variant on `data` (batches of [`EVAL_BATCH`]
/// rows), checks the gates and writes the stage's artifacts into `out_dir`. A failed gate
/// is not an error here: it is recorded in the verdict, which the caller acts on.
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

/// [`run`] with what the pipeline knows besides:  training curves to draw
/// (`curves-<stage>.svg|png`), the native forward pass of variants that run through ONNX
/// Runtime, the validation split for permutation importance, and the schema for slices.
pub fn run_report(
    config: &Config,
    variants: &mut [(String, &mut dyn Predictor)],
    data: &Dataset,
    class_labels: &[String],
    extras: Extras<'_>,
    out_dir: &Path,
) -> Result<Output> {
    run_split(
        config,
        variants,
        SplitData::Memory(data),
        class_labels,
        extras,
        out_dir,
    )
}

/// What one pass over the test rows gathers: every variant's predictions (and the
/// native pass's, and the baselines'), the targets and the `slice_by` column, so that
/// the features are held one part at a time.
struct Scored {
    /// The targets, with the `slice_by` column as the only feature when one is set.
    targets: Dataset,
    variants: Vec<Predictions>,
    reference: Vec<Predictions>,
    baselines: Vec<Predictions>,
    /// Per variant, the features of its first misclassified rows (image models).
    misclassified: Vec<Vec<Vec<f32>>>,
}

/// [`run_report`] over a split held in memory or streamed shard by shard
/// ([`SplitData`]): each part is predicted by every variant and then dropped.
pub fn run_split(
    config: &Config,
    variants: &mut [(String, &mut dyn Predictor)],
    data: SplitData<'_>,
    class_labels: &[String],
    mut extras: Extras<'_>,
    out_dir: &Path,
) -> Result<Output> {
    let curves = extras.curves;
    let _span = tracing::info_span!("evaluate").entered();
    if let Some((key, msg)) = config.problems().into_iter().next() {
        return Err(EvaluateError::Config(format!("{key}: {msg}")));
    }
    let regression = data.is_regression();
    gates::applicable(config, regression)?;
    std::fs::create_dir_all(out_dir).map_err(|e| kiln_core::CoreError::io(out_dir, e))?;
    let mut figures = report::Figures::new(out_dir);
    figures.curves(curves);
    let slice_col = match &config.slice_by {
        Some(col) => {
            Some(analysis::slice_column(data.feature_names(), col).map_err(EvaluateError::Config)?)
        }
        None => None,
    };
    let started = std::time::Instant::now();
    let mut fitted = Vec::new();
    if let (true, Some(train)) = (config.baselines, &extras.train) {
        let train = match train {
            SplitData::Memory(d) => std::borrow::Cow::Borrowed(*d),
            SplitData::Shards(..) => std::borrow::Cow::Owned(baseline::sample_rows(
                train,
                baseline::MAX_ROWS,
                extras.seed,
            )?),
        };
        fitted = baseline::fit(&train, class_labels.len(), extras.seed);
    }
    let mut baseline_seconds = started.elapsed().as_secs_f64();
    let grid = plots::GRID * plots::GRID;
    let mut s = Scored {
        targets: Dataset {
            feature_names: slice_col.iter().map(|(_, c)| c.clone()).collect(),
            target: String::new(),
            ..Dataset::default()
        },
        variants: vec![Predictions::default(); variants.len()],
        reference: vec![Predictions::default(); extras.reference.len()],
        baselines: vec![Predictions::default(); fitted.len()],
        misclassified: vec![Vec::new(); variants.len()],
    };
    let _pass = tracing::info_span!("score", rows = data.n_rows()).entered();
    data.for_each_part(&mut |part: &Dataset, _| -> Result<()> {
        let n = part.n_rows();
        let x = &part.features;
        s.targets.labels.extend_from_slice(&part.labels);
        s.targets.values.extend_from_slice(&part.values);
        if let Some((j, _)) = &slice_col {
            s.targets
                .features
                .extend(x.iter().skip(*j).step_by(part.n_features().max(1)));
        }
        for (i, (_, predictor)) in variants.iter_mut().enumerate() {
            let p = predictor.predict_batched(x, n, EVAL_BATCH)?;
            if extras.image.is_some() && !regression {
                for (r, (&t, &y)) in part.labels.iter().zip(&p.argmax()).enumerate() {
                    if t != y && s.misclassified[i].len() < grid {
                        s.misclassified[i].push(part.row(r).to_vec());
                    }
                }
            }
            s.variants[i].extend(p);
        }
        for (i, r) in extras.reference.iter_mut().enumerate() {
            s.reference[i].extend(r.predict_batched(x, n, EVAL_BATCH)?);
        }
        let t = std::time::Instant::now();
        for (i, b) in fitted.iter_mut().enumerate() {
            s.baselines[i].extend(b.predict_batched(x, n, EVAL_BATCH)?);
        }
        baseline_seconds += t.elapsed().as_secs_f64();
        Ok(())
    })?;
    drop(_pass);
    let slices = match &slice_col {
        Some((_, col)) => {
            analysis::slice_rows(&s.targets, extras.schema, col).map_err(EvaluateError::Config)?
        }
        None => Vec::new(),
    };
    let against = score::Against {
        data: &s.targets,
        slices: &slices,
        class_labels,
        top_k: config.top_k,
    };
    let mut results = Vec::new();
    for (i, (name, predictor)) in variants.iter().enumerate() {
        let p = &s.variants[i];
        let v = score::variant(name, predictor.name(), p, s.reference.get(i), &against);
        figures.variant(
            &v,
            p,
            &s.targets,
            class_labels,
            extras.image,
            &s.misclassified[i],
        );
        score::log_scored(&v, regression);
        results.push(v);
    }
    let baselines: Vec<VariantMetrics> = fitted
        .iter()
        .zip(&s.baselines)
        .map(|(b, p)| {
            let whole = score::Against {
                slices: &[],
                ..against
            };
            score::variant(b.name(), b.name(), p, None, &whole)
        })
        .collect();
    if !baselines.is_empty() {
        tracing::info!(seconds = baseline_seconds, "baselines fitted and scored");
    }
    let checked = gates::check(config, &results)?;
    let importance = match (&config.importance, extras.valid, variants.first_mut()) {
        (Some(cfg), Some(valid), Some((name, model))) => {
            tracing::info!(variant = %name, rows = cfg.rows.min(valid.n_rows()), "permutation importance");
            analysis::permutation_importance(
                &mut **model,
                &*valid.head(cfg.rows)?,
                cfg,
                extras.seed,
            )?
        }
        _ => Vec::new(),
    };
    let verdict = gates::verdict(&checked);
    std::fs::create_dir_all(out_dir).map_err(|e| kiln_core::CoreError::io(out_dir, e))?;
    let metrics = Metrics {
        variants: results
            .iter()
            .map(|v| (v.name.clone(), v.scalars.clone()))
            .collect(),
        baselines: baselines
            .iter()
            .map(|v| (v.name.clone(), v.scalars.clone()))
            .collect(),
    };
    kiln_core::artifact::save(out_dir, &metrics)?;
    let details: BTreeMap<_, _> = results.iter().map(|v| (v.name.clone(), v)).collect();
    kiln_core::write_json(&out_dir.join("confusion.json"), &details)?;
    kiln_core::artifact::save(out_dir, &verdict)?;
    let importance_shown = match (&config.importance, variants.first()) {
        (Some(cfg), Some((first, _))) => {
            kiln_core::write_json(&out_dir.join("importance.json"), &importance)?;
            Some((first.as_str(), cfg.top, importance.as_slice()))
        }
        _ => None,
    };
    let text = report::Report {
        results: &results,
        baselines: &baselines,
        gates: &checked,
        verdict: &verdict,
        labels: class_labels,
        regression,
        importance: importance_shown,
        slice_by: config.slice_by.as_deref(),
        slices: &slices,
        figures: &figures.list,
    }
    .render();
    kiln_core::atomic_write(&out_dir.join("report.md"), text.as_bytes())?;
    Ok(Output {
        variants: results,
        gates: checked,
        verdict,
        importance,
        baselines,
        baseline_seconds,
    })
}
