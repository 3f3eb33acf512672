//! `kiln predict`: raw rows from a CSV / Parquet / Arrow file, the fitted preprocessing of
//! the model's schema.json applied, batched ONNX Runtime inference with a progress bar,
//! predicted label (or value) and class probabilities written to CSV or Parquet.

use kiln_core::{Predictor, Progress, Schema, Task};
use kiln_preprocess::table::{self, OutColumn};
use std::path::{Path, PathBuf};

/// What `kiln predict` was asked to do.
pub struct Request {
    /// A deploy folder (holding model.onnx and schema.json) or an .onnx file.
    pub model: PathBuf,
    /// Raw rows.
    pub input: PathBuf,
    /// Where the predictions go.
    pub output: PathBuf,
    /// Rows per ONNX Runtime call.
    pub batch: usize,
}

/// A summary of what was predicted, for the command's last lines.
pub struct Summary {
    /// Rows predicted.
    pub rows: usize,
    /// Columns of the input that the model does not use (ignored).
    pub extra: Vec<String>,
    /// (column, values outside the training range) where any are, from profile.json.
    pub out_of_range: Vec<(String, usize)>,
    /// Accuracy (classification) or RMSE (regression) when the input holds the target.
    pub score: Option<(String, f64)>,
}

/// Runs the request.
pub fn predict(req: &Request, progress: &dyn Progress) -> Result<Summary, String> {
    let Bundle {
        dir, onnx, schema, ..
    } = open(&req.model)?;
    if req.batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    let rows =
        table::read_rows_with_text(&req.input, &schema.input_columns, &schema.text_columns())
            .map_err(|e| e.to_string())?;
    let features = features(&schema, &rows.values, rows.text.clone()).map_err(|e| match e {
        FeatureError::Schema(m) => m,
        FeatureError::NotFinite { row, column } => format!(
            "{}: row {} column `{column}` is not a finite number after preprocessing",
            req.input.display(),
            row + 1
        ),
    })?;
    let n = rows.n_rows;
    let w = schema.n_features();
    let out_of_range = out_of_range(&dir.join("profile.json"), &schema, &rows.values);
    let mut model = kiln_deploy::OrtModel::from_file(&onnx, 0).map_err(|e| e.to_string())?;
    progress.start("predict", n as u64);
    let mut all = kiln_core::Predictions {
        n_rows: 0,
        n_outputs: 0,
        logits: Vec::new(),
        probabilities: Vec::new(),
    };
    for start in (0..n).step_by(req.batch) {
        let m = req.batch.min(n - start);
        let p = model
            .predict(&features[start * w..(start + m) * w], m)
            .map_err(|e| e.to_string())?;
        all.extend(p);
        progress.advance(m as u64);
    }
    progress.finish();

    let mut columns = Vec::new();
    let target = read_target(&req.input, &schema, &rows.columns);
    let score;
    match schema.task {
        Task::Classification => {
            let labels = labels(&schema, &all);
            score = target.map(|t| {
                let ok = t.iter().zip(&labels).filter(|(a, b)| a == b).count();
                ("accuracy".to_string(), ok as f64 / n.max(1) as f64)
            });
            columns.push(("prediction".to_string(), OutColumn::Text(labels)));
            let k = all.n_outputs.max(1);
            for (j, label) in schema.class_labels.iter().enumerate() {
                let p = all
                    .probabilities
                    .iter()
                    .skip(j)
                    .step_by(k)
                    .copied()
                    .collect();
                columns.push((format!("p_{label}"), OutColumn::Number(p)));
            }
        }
        Task::Regression => {
            score = target.map(|t| {
                let se: f64 = t
                    .iter()
                    .zip(&all.logits)
                    .map(|(a, p)| (a.parse::<f64>().unwrap_or(f64::NAN) - f64::from(*p)).powi(2))
                    .sum();
                ("rmse".to_string(), (se / n.max(1) as f64).sqrt())
            });
            columns.push((
                "prediction".to_string(),
                OutColumn::Number(all.logits.clone()),
            ));
        }
    }
    table::write_table(&req.output, columns).map_err(|e| e.to_string())?;
    Ok(Summary {
        rows: n,
        extra: rows
            .extra
            .into_iter()
            .filter(|c| *c != schema.target)
            .collect(),
        out_of_range,
        score,
    })
}

/// A deployed model as `kiln predict` and `kiln serve` open it.
pub struct Bundle {
    /// The folder holding schema.json (and profile.json).
    pub dir: PathBuf,
    /// The ONNX file to run.
    pub onnx: PathBuf,
    /// The model's schema: input columns, task, class labels, and the fitted transforms
    /// callers must apply — none when the model has them in its graph (`baked`).
    pub schema: Schema,
    /// The ONNX graph holds the preprocessing (metadata `preprocessing = baked`): it takes
    /// raw values, and `schema.transforms` is emptied so they are not applied twice.
    pub baked: bool,
}

/// Opens `--model`: a deploy folder (its model.onnx) or an .onnx file with schema.json
/// beside it.
pub fn open(model: &Path) -> Result<Bundle, String> {
    let (dir, onnx) = if model.is_dir() {
        (model.to_path_buf(), model.join("model.onnx"))
    } else {
        let dir = model.parent().unwrap_or(Path::new(".")).to_path_buf();
        (dir, model.to_path_buf())
    };
    let mut schema: Schema = kiln_core::read_json(&dir.join("schema.json")).map_err(|e| {
        format!("{e}; --model takes a deploy folder (runs/<pipeline>/latest/<deploy stage>) or an .onnx file with schema.json beside it")
    })?;
    let bytes = std::fs::read(&onnx).map_err(|e| {
        format!(
            "{}: {e}; --model takes a deploy folder holding model.onnx or an .onnx file",
            onnx.display()
        )
    })?;
    let baked = kiln_deploy::decode(&bytes)
        .map(|m| kiln_deploy::is_baked(&m))
        .map_err(|e| format!("{}: {e}", onnx.display()))?;
    if baked {
        // the graph applies them to the raw values itself
        schema.transforms.clear();
    }
    Ok(Bundle {
        dir,
        onnx,
        schema,
        baked,
    })
}

/// Why raw rows could not become model features.
#[derive(Debug)]
pub enum FeatureError {
    /// The schema cannot be applied (a corrupt schema.json, a wrong row width).
    Schema(String),
    /// A feature is NaN or infinite after preprocessing (`row` counts from 0).
    NotFinite {
        /// The row, counted from 0.
        row: usize,
        /// The feature's name.
        column: String,
    },
}

/// Model features from raw rows (row-major, `input_columns` order) and the cells of the
/// schema's text columns: the fitted preprocessing of the schema applied, every feature
/// checked to be finite.
pub fn features(
    schema: &Schema,
    raw: &[f32],
    text: Vec<(String, kiln_core::TextColumn)>,
) -> Result<Vec<f32>, FeatureError> {
    let features = schema
        .apply_with_text(raw, text)
        .map_err(|e| FeatureError::Schema(e.to_string()))?;
    let w = schema.n_features().max(1);
    if let Some(i) = features.iter().position(|v| !v.is_finite()) {
        return Err(FeatureError::NotFinite {
            row: i / w,
            column: schema.feature_names.get(i % w).cloned().unwrap_or_default(),
        });
    }
    Ok(features)
}

/// The predicted class label of each row (classification): the largest output's label.
pub fn labels(schema: &Schema, p: &kiln_core::Predictions) -> Vec<String> {
    p.argmax()
        .iter()
        .map(|&c| {
            schema
                .class_labels
                .get(c as usize)
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

/// The target column as text, when the input holds it (to score the predictions).
fn read_target(input: &Path, schema: &Schema, columns: &[String]) -> Option<Vec<String>> {
    if !columns.contains(&schema.target) {
        return None;
    }
    table::read_text_column(input, &schema.target).ok()
}

/// Per raw column, how many values fall outside the train split's [min, max] recorded in
/// profile.json (none when the file is absent).
fn out_of_range(profile: &Path, schema: &Schema, raw: &[f32]) -> Vec<(String, usize)> {
    let Ok(p) = kiln_core::read_json::<serde_json::Value>(profile) else {
        return Vec::new();
    };
    let w = schema.input_columns.len().max(1);
    let mut out = Vec::new();
    for col in p["columns"].as_array().into_iter().flatten() {
        let (Some(name), Some(lo), Some(hi)) = (
            col["name"].as_str(),
            col["min"].as_f64(),
            col["max"].as_f64(),
        ) else {
            continue;
        };
        let Some(j) = schema.input_columns.iter().position(|c| c == name) else {
            continue;
        };
        let count = raw
            .iter()
            .skip(j)
            .step_by(w)
            .filter(|&&v| f64::from(v) < lo || f64::from(v) > hi)
            .count();
        if count > 0 {
            out.push((name.to_string(), count));
        }
    }
    out
}
