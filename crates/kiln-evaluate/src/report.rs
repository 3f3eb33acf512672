//! What the stage shows: the plots drawn into its folder (training curves, and per
//! variant a confusion matrix, reliability diagram and ROC / precision-recall curves, or
//! predicted against actual values) and the text of report.md.

use crate::{GateResult, VariantMetrics, Verdict, analysis, plots};
use kiln_core::{Dataset, Predictions};
use std::path::Path;

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

/// The plots drawn into the stage's folder, as (title, PNG file) for the report.
pub(crate) struct Figures<'a> {
    dir: &'a Path,
    /// (title, PNG file name) of every plot drawn, in order.
    pub(crate) list: Vec<(String, String)>,
}

impl<'a> Figures<'a> {
    /// No plots yet; they go into `dir`.
    pub(crate) fn new(dir: &'a Path) -> Self {
        Figures {
            dir,
            list: Vec::new(),
        }
    }

    fn plot(&mut self, title: String, d: &dyn PlotFn) {
        match d.save(self.dir) {
            Ok([_, png]) => self.list.push((title, png)),
            // a plot that cannot be drawn must not cost the evaluation
            Err(e) => tracing::warn!("{title}: {e}"),
        }
    }

    /// The training curves, one plot per history.
    pub(crate) fn curves(&mut self, curves: &[plots::Curves]) {
        for c in curves {
            self.plot(
                format!("Training curves: {}", c.name),
                &Named(c, format!("curves-{}", c.name)),
            );
        }
    }

    /// The plots of one scored variant: predicted against actual values for a
    /// regression; else its confusion matrix, reliability diagram and, for two classes,
    /// ROC and precision-recall curves.
    /// `misclassified` holds the features of the variant's first misclassified test rows
    /// (in row order; only for a model that reads images).
    pub(crate) fn variant(
        &mut self,
        v: &VariantMetrics,
        p: &Predictions,
        data: &Dataset,
        class_labels: &[String],
        image: Option<kiln_core::ImageShape>,
        misclassified: &[Vec<f32>],
    ) {
        let name = v.name.as_str();
        if let Some(image) = image
            && !data.is_regression()
        {
            let label = |c: u32| class_labels.get(c as usize).map_or("?", String::as_str);
            let cells = plots::misclassified(&data.labels, &p.argmax(), plots::GRID * plots::GRID)
                .into_iter()
                .zip(misclassified)
                .map(|((_, truth, predicted), x)| (x.as_slice(), label(truth), label(predicted)))
                .collect::<Vec<_>>();
            if !cells.is_empty() && cells.iter().all(|c| c.0.len() == image.len()) {
                let grid = plots::Misclassified { name, image, cells };
                self.plot(
                    format!("Misclassified test images: {name} (true → predicted)"),
                    &Named(&grid, format!("misclassified-{name}")),
                );
            }
        }
        if data.is_regression() {
            let points = data
                .values
                .iter()
                .zip(&p.logits)
                .map(|(&t, &y)| (f64::from(t), f64::from(y)))
                .collect();
            let sc = plots::Scatter { name, points };
            self.plot(
                format!("Predicted vs actual: {name}"),
                &Named(&sc, format!("scatter-{name}")),
            );
            return;
        }
        let k = class_labels.len();
        let (t, pr) = (&data.labels, &p.probabilities);
        let cf = plots::Confusion {
            name,
            labels: class_labels,
            matrix: &v.confusion,
        };
        self.plot(
            format!("Confusion matrix: {name}"),
            &Named(&cf, format!("confusion-{name}")),
        );
        let rel = plots::Reliability {
            name,
            bins: plots::reliability_bins(t, pr, k),
        };
        self.plot(
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
                roc_auc: v.scalars.get("roc_auc").copied().unwrap_or(f64::NAN),
                pr_auc: v.scalars.get("pr_auc").copied().unwrap_or(f64::NAN),
            };
            self.plot(
                format!("ROC and precision-recall: {name}"),
                &Named(&bc, format!("roc-pr-{name}")),
            );
        }
    }
}

/// Everything report.md shows.
pub(crate) struct Report<'a> {
    /// Metrics per variant, in input order.
    pub(crate) results: &'a [VariantMetrics],
    /// The baselines' scores on the same rows.
    pub(crate) baselines: &'a [VariantMetrics],
    /// Every gate checked.
    pub(crate) gates: &'a [GateResult],
    /// The verdict.
    pub(crate) verdict: &'a Verdict,
    /// Class labels (the confusion matrices' rows and columns).
    pub(crate) labels: &'a [String],
    /// Whether the test split is a regression's (main metric R², else accuracy).
    pub(crate) regression: bool,
    /// Permutation importance: the variant, how many features to list, the features.
    pub(crate) importance: Option<(&'a str, usize, &'a [analysis::FeatureImportance])>,
    /// The `slice_by` column, when set.
    pub(crate) slice_by: Option<&'a str>,
    /// Its slices: (raw value, rows).
    pub(crate) slices: &'a [(f64, Vec<usize>)],
    /// The plots drawn: (title, PNG file).
    pub(crate) figures: &'a [(String, String)],
}

impl Report<'_> {
    /// The text of report.md.
    pub(crate) fn render(&self) -> String {
        let (results, regression, slices) = (self.results, self.regression, self.slices);
        let mut text = summary(results, self.gates, self.verdict, self.labels);
        text += &baselines(results, self.baselines);
        if let Some((first, top, importance)) = self.importance {
            text += &format!(
                "\n## Permutation feature importance ({first}, validation split)\n\nThe fall of the main metric ({}) when one feature's values are shuffled across rows.\n\n| feature | drop |\n|---|---|\n",
                if regression { "R²" } else { "accuracy" }
            );
            for f in importance.iter().take(top) {
                text += &format!("| {} | {:.4} |\n", f.feature, f.drop);
            }
        }
        if let Some(col) = self.slice_by {
            text += &format!(
                "\n## Slices by `{col}` (test split, {})\n\n| {col} | rows |",
                if regression { "R²" } else { "accuracy" }
            );
            for v in results {
                text += &format!(" {} |", v.name);
            }
            text += &format!("\n|---|---|{}\n", "---|".repeat(results.len()));
            for (i, (value, _)) in slices.iter().enumerate() {
                text += &format!("| {value} | {} |", slices[i].1.len());
                for v in results {
                    text += &format!(" {:.4} |", v.slices[i].2);
                }
                text += "\n";
            }
        }
        if !self.figures.is_empty() {
            text += "\n## Plots\n\n(each also as SVG beside the PNG)\n";
            for (title, png) in self.figures {
                text += &format!("\n### {title}\n\n![{title}]({png})\n");
            }
        }
        text
    }
}

/// The baselines beside the first variant, and what the model gains over the best one.
fn baselines(results: &[VariantMetrics], baselines: &[VariantMetrics]) -> String {
    let Some(model) = results.first() else {
        return String::new();
    };
    if baselines.is_empty() {
        return String::new();
    }
    let regression = model.scalars.contains_key("mse");
    let cols: &[(&str, &str)] = if regression {
        &[("rmse", "RMSE"), ("mae", "MAE"), ("r2", "R²")]
    } else {
        &[
            ("accuracy", "accuracy"),
            ("macro_f1", "macro F1"),
            ("log_loss", "log loss"),
        ]
    };
    let mut s = String::from(
        "\n## Baselines (fitted on the training split, scored on the same test rows)\n\n| model |",
    );
    for (_, title) in cols {
        s += &format!(" {title} |");
    }
    s += &format!("\n|---|{}\n", "---|".repeat(cols.len()));
    for v in std::iter::once(model).chain(baselines) {
        s += &format!("| {} |", v.name);
        for (key, _) in cols {
            match v.scalars.get(*key) {
                Some(x) => s += &format!(" {x:.4} |"),
                None => s += " — |",
            }
        }
        s += "\n";
    }
    let main = if regression { "r2" } else { "accuracy" };
    let best = baselines
        .iter()
        .filter_map(|b| Some((b.name.as_str(), *b.scalars.get(main)?)))
        .max_by(|a, b| a.1.total_cmp(&b.1));
    if let (Some((name, b)), Some(m)) = (best, model.scalars.get(main)) {
        let gain = m - b;
        s += &if gain > 0.0 {
            format!(
                "\n{} is {gain:+.4} {main} over the best baseline ({name}).\n",
                model.name
            )
        } else {
            format!(
                "\n**{} does not beat the {name} baseline** ({gain:+.4} {main}): a simpler model does as well on these features.\n",
                model.name
            )
        };
    }
    s
}

/// The variants' main metrics, the verdict with its gates and the confusion matrices.
fn summary(
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
