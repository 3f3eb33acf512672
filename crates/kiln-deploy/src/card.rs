//! The model card (`model_card.md`) of a deploy bundle: what the model was trained on, how
//! well it did, what it is for and not for, how it was built, and what it means for
//! privacy. The caller (the pipeline) fills a [`ModelCard`] with what only it knows; the
//! rest (features, classes, parity, baked preprocessing) comes from the deploy stage itself.

use crate::{Config, Output, Result};
use kiln_core::{Schema, Task, Transform};
use std::fmt::Write as _;
use std::path::Path;

/// One raw input column's range on the train split (from profile.json).
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnRange {
    /// Column name.
    pub name: String,
    /// Smallest raw value seen in training.
    pub min: f64,
    /// Largest raw value seen in training.
    pub max: f64,
}

/// Test metrics of one deployed variant, as an evaluate stage measured them.
#[derive(Debug, Clone, PartialEq)]
pub struct VariantMetrics {
    /// Deploy variant (`fp32`, `int8`).
    pub variant: String,
    /// The pipeline stage the variant's model came from.
    pub stage: String,
    /// The evaluate stage that scored it.
    pub evaluated_by: String,
    /// (metric name, value), in the order to show.
    pub metrics: Vec<(String, f64)>,
}

/// What the deploy stage cannot know by itself; every field may be left empty, and the
/// card then says that the information is missing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelCard {
    /// Pipeline name.
    pub pipeline: String,
    /// The pipeline file's name and content hash.
    pub pipeline_file: String,
    /// The pipeline file's `description`.
    pub description: Option<String>,
    /// Where the data came from, e.g. `csv: iris.csv`.
    pub dataset: String,
    /// Rows per split, e.g. `[("train", 90), ("valid", 30), ("test", 30)]`.
    pub rows: Vec<(String, usize)>,
    /// Raw input ranges on the train split.
    pub input_ranges: Vec<ColumnRange>,
    /// Training configuration, as (key, value) lines.
    pub training: Vec<(String, String)>,
    /// Test metrics per deployed variant (empty when no evaluate stage scored them).
    pub metrics: Vec<VariantMetrics>,
}

fn transform_text(t: &Transform) -> String {
    match t {
        Transform::Scale { columns, by } => {
            format!("scale: x / {by} on {}", columns_text(columns))
        }
        Transform::Standardize { columns, .. } => format!(
            "standardize: (x - mean) / std with train-split statistics on {}",
            columns_text(columns)
        ),
        Transform::Impute {
            columns, strategy, ..
        } => format!(
            "impute: missing values filled with the train-split {strategy} on {}",
            columns_text(columns)
        ),
        Transform::Clip { columns, .. } => {
            format!(
                "clip: values limited to fitted bounds on {}",
                columns_text(columns)
            )
        }
        Transform::Log1p { columns } => format!("log1p: ln(1 + x) on {}", columns_text(columns)),
        Transform::MinMax { columns, .. } => format!(
            "min_max: (x - min) / (max - min) with train-split statistics on {}",
            columns_text(columns)
        ),
        Transform::Drop { columns } => format!("drop: removes {}", columns_text(columns)),
        Transform::Select { columns } => format!("select: keeps {}", columns_text(columns)),
        Transform::ImputeCategorical {
            columns, strategy, ..
        } => format!(
            "impute: missing categories filled with the train-split {strategy} on {}",
            columns_text(columns)
        ),
        Transform::OneHot {
            columns,
            categories,
        } => format!(
            "one_hot: one feature per train-split category ({} in all; unseen categories give all zeros) on {}",
            categories.iter().map(Vec::len).sum::<usize>(),
            columns_text(columns)
        ),
        Transform::Ordinal { columns, .. } => format!(
            "ordinal: the index of the category among the train-split categories (unseen: -1) on {}",
            columns_text(columns)
        ),
        Transform::PiecewiseLinear { columns, edges } => format!(
            "piecewise_linear: one feature per bin between train-split quantiles ({} in all) on {}",
            edges.iter().map(|e| e.len() - 1).sum::<usize>(),
            columns_text(columns)
        ),
        Transform::HashText {
            columns,
            n_features,
        } => format!(
            "hash_text: counts of lowercase tokens hashed (FNV-1a) into {n_features} features on {}",
            columns_text(columns)
        ),
    }
}

fn columns_text(columns: &[String]) -> String {
    list_text(columns, "columns")
}

fn list_text(columns: &[String], noun: &str) -> String {
    if columns.len() > 8 {
        format!(
            "{} {noun} ({}, …, {})",
            columns.len(),
            columns[0],
            columns[columns.len() - 1]
        )
    } else {
        columns
            .iter()
            .map(|c| format!("`{c}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Renders the card as Markdown.
pub fn render(
    card: &ModelCard,
    schema: &Schema,
    config: &Config,
    output: &Output,
    stage_hash: &str,
) -> String {
    let mut s = String::new();
    let name = if card.pipeline.is_empty() {
        "kiln model"
    } else {
        &card.pipeline
    };
    let task = match schema.task {
        Task::Classification => format!("a {}-class classifier", schema.n_classes()),
        Task::Regression => "a regressor".to_string(),
    };
    let _ = writeln!(s, "# Model card: {name}\n");
    let _ = writeln!(
        s,
        "{} predicting `{}` from {}, exported to ONNX by kiln {}.",
        capitalise(&task),
        schema.target,
        match schema.image {
            Some(image) => format!("a {image} image (channels x height x width)"),
            None => format!("{} numeric features", schema.n_features()),
        },
        kiln_core::KILN_VERSION
    );
    if let Some(d) = &card.description {
        let _ = writeln!(s, "\n{d}");
    }

    // Data
    let _ = writeln!(s, "\n## Data\n");
    let dataset = if card.dataset.is_empty() {
        "not recorded"
    } else {
        &card.dataset
    };
    let _ = writeln!(s, "- Source: {dataset}");
    if card.rows.is_empty() {
        let _ = writeln!(s, "- Rows per split: not recorded");
    } else {
        let rows: Vec<String> = card.rows.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(s, "- Rows per split: {}", rows.join(", "));
    }
    let _ = writeln!(
        s,
        "- Features ({}, in input order): {}",
        schema.input_columns.len(),
        columns_text(&schema.input_columns)
    );
    let _ = writeln!(s, "- Target: `{}`", schema.target);
    if schema.task == Task::Classification {
        let _ = writeln!(
            s,
            "- Classes: {}",
            list_text(&schema.class_labels, "classes")
        );
    }

    // Metrics
    let _ = writeln!(s, "\n## Metrics\n");
    if card.metrics.is_empty() {
        let _ = writeln!(
            s,
            "No evaluate stage scored the deployed variants (add one to the deploy stage's `requires` to get test metrics here)."
        );
    } else {
        let mut keys: Vec<&str> = Vec::new();
        for m in &card.metrics {
            for (k, _) in &m.metrics {
                if !keys.contains(&k.as_str()) {
                    keys.push(k);
                }
            }
        }
        let _ = writeln!(
            s,
            "On the test split, each variant scored through ONNX Runtime as shipped unless the evaluate stage says `runtime = \"native\"`.\n"
        );
        let _ = writeln!(
            s,
            "| variant | from | evaluated by | {} |",
            keys.join(" | ")
        );
        let _ = writeln!(s, "|---|---|---|{}", "---|".repeat(keys.len()));
        for m in &card.metrics {
            let vals: Vec<String> = keys
                .iter()
                .map(|k| {
                    m.metrics
                        .iter()
                        .find(|(n, _)| n == k)
                        .map(|(_, v)| format!("{v:.4}"))
                        .unwrap_or_else(|| "-".into())
                })
                .collect();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                m.variant,
                m.stage,
                m.evaluated_by,
                vals.join(" | ")
            );
        }
    }

    // Intended use
    let _ = writeln!(s, "\n## Intended use\n");
    let _ = writeln!(
        s,
        "Predicting `{}` for new rows drawn from the same population and measured the same way as the training data ({dataset}). Feed the raw input columns in the order above to `kiln predict --model <this folder>` or `kiln serve --model <this folder>`, or run `model.onnx` in any ONNX runtime{}.",
        schema.target,
        if config.include_preprocessing {
            " (its input `features` takes the raw columns: the preprocessing is in the graph)"
        } else {
            " after applying schema.json's transforms yourself (they are not in the graph)"
        }
    );
    let _ = writeln!(
        s,
        "It is not meant for decisions about people or for any use the data was not collected for; nobody has assessed it for fairness or robustness."
    );

    // Limits
    let _ = writeln!(s, "\n## Limits\n");
    let train_rows = card.rows.iter().find(|(k, _)| k == "train").map(|r| r.1);
    match train_rows {
        Some(n) => {
            let _ = writeln!(
                s,
                "- Trained on {n} rows; its metrics come from {} test rows and carry their sampling error.",
                card.rows
                    .iter()
                    .find(|(k, _)| k == "test")
                    .map_or("an unknown number of".to_string(), |r| r.1.to_string())
            );
        }
        None => {
            let _ = writeln!(s, "- The number of training rows was not recorded.");
        }
    }
    if card.input_ranges.is_empty() {
        let _ = writeln!(s, "- Training input ranges were not recorded.");
    } else {
        let _ = writeln!(
            s,
            "- Inputs outside the training range are extrapolation (`kiln predict` warns about them). Raw train-split ranges:\n"
        );
        let _ = writeln!(s, "  | column | min | max |\n  |---|---|---|");
        for r in card.input_ranges.iter().take(20) {
            let _ = writeln!(s, "  | {} | {} | {} |", r.name, r.min, r.max);
        }
        if card.input_ranges.len() > 20 {
            let _ = writeln!(
                s,
                "  | … {} more in profile.json | | |",
                card.input_ranges.len() - 20
            );
        }
        let _ = writeln!(s);
    }
    for v in &output.variants {
        if let Some(a) = v.agreement_with_fp32 {
            let _ = write!(
                s,
                "- `{}` ({}) gives the same class as fp32 on {:.2} % of the test rows",
                v.name,
                v.file,
                a * 100.0
            );
            let main = |variant: &str| {
                card.metrics
                    .iter()
                    .find(|m| m.variant == variant)
                    .and_then(|m| {
                        m.metrics
                            .iter()
                            .find(|(k, _)| k == "accuracy" || k == "r2")
                            .cloned()
                    })
            };
            if let (Some((k, f)), Some((_, q))) = (main("fp32"), main(&v.name)) {
                let _ = write!(s, "; its test {k} differs from fp32's by {:+.4}", q - f);
            }
            let _ = writeln!(s, ".");
        }
    }
    let _ = writeln!(
        s,
        "- Only numeric inputs; a missing or non-finite value is refused, not imputed."
    );

    // How it was built
    let _ = writeln!(s, "\n## How it was built\n");
    let _ = writeln!(s, "- kiln {}", kiln_core::KILN_VERSION);
    let _ = writeln!(s, "- Pipeline `{name}`, deploy stage hash `{stage_hash}`");
    if !card.pipeline_file.is_empty() {
        let _ = writeln!(s, "- Pipeline file: {}", card.pipeline_file);
    }
    for (k, v) in &card.training {
        let _ = writeln!(s, "- {k}: {v}");
    }
    let _ = writeln!(
        s,
        "- ONNX opset {}; parity of ONNX Runtime vs kiln's reference forward pass on the test split (tolerance {:.0e}, batches of {}):",
        config.opset, config.parity_tolerance, config.parity_batch
    );
    for v in &output.variants {
        let _ = writeln!(
            s,
            "  - `{}` ({}, {} bytes): max |Δ probability| {:.2e}, max |Δ logit| {:.2e}, argmax agreement {:.4}, {}",
            v.name,
            v.file,
            v.bytes,
            v.parity.max_abs_prob,
            v.parity.max_abs_logit,
            v.parity.argmax_agreement,
            if v.parity.passed { "passed" } else { "FAILED" }
        );
    }

    // Preprocessing
    let _ = writeln!(s, "\n## Preprocessing\n");
    if schema.transforms.is_empty() {
        let _ = writeln!(
            s,
            "None: the model takes the raw input columns as they are."
        );
    } else {
        let _ = writeln!(
            s,
            "{}",
            if config.include_preprocessing {
                "Baked into the ONNX graph (`include_preprocessing = true`; metadata `preprocessing = baked`), in front of the first layer, with the same float operations as kiln's `Schema::apply`:"
            } else {
                "NOT in the ONNX graph (`include_preprocessing = false`): `kiln predict` and `kiln serve` apply these from schema.json, other runtimes must apply them before calling the model:"
            }
        );
        for t in &schema.transforms {
            let _ = writeln!(s, "- {}", transform_text(t));
        }
    }
    let _ = writeln!(
        s,
        "\nNever in the graph: reading CSV / Parquet / JSON, column selection by name, the check that every value is finite, and mapping output indices to class labels (the labels are in the metadata `class_labels` and in schema.json)."
    );

    // Privacy and security
    let _ = writeln!(s, "\n## Privacy and security\n");
    let _ = writeln!(
        s,
        "- kiln does not inspect the training data for personal information. Whether {dataset} holds personal or sensitive data, and on what legal basis it may be used, must be declared here by the data owner before this model is shared."
    );
    let _ = writeln!(
        s,
        "- A model can leak facts about its training rows (membership inference); treat the ONNX files as being as sensitive as the data. profile.json in this folder holds per-column minima, maxima and means of the training split."
    );
    let _ = writeln!(
        s,
        "- Who sees the model's inputs: `kiln predict` reads them locally. `kiln serve` binds 127.0.0.1 by default (reachable from this machine only unless `--addr` says otherwise), logs no request or response bodies (only start-up, shutdown and server-side errors), and keeps nothing after answering; its `/metrics` hold counts and latencies only. It has no authentication or TLS: put it behind a proxy that provides them before exposing it."
    );
    s
}

fn capitalise(t: &str) -> String {
    let mut c = t.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Renders the card and writes it to `dir/model_card.md` (atomically).
pub fn write(
    dir: &Path,
    card: &ModelCard,
    schema: &Schema,
    config: &Config,
    output: &Output,
    stage_hash: &str,
) -> Result<()> {
    let text = render(card, schema, config, output, stage_hash);
    kiln_core::atomic_write(&dir.join("model_card.md"), text.as_bytes())?;
    Ok(())
}
