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
    let (dir, onnx) = if req.model.is_dir() {
        (req.model.clone(), req.model.join("model.onnx"))
    } else {
        let dir = req.model.parent().unwrap_or(Path::new(".")).to_path_buf();
        (dir, req.model.clone())
    };
    let schema_path = dir.join("schema.json");
    let schema: Schema = kiln_core::read_json(&schema_path).map_err(|e| {
        format!("{e}; --model takes a deploy folder (runs/<pipeline>/latest/<deploy stage>) or an .onnx file with schema.json beside it")
    })?;
    if req.batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    let rows = table::read_rows(&req.input, &schema.input_columns).map_err(|e| e.to_string())?;
    let features = schema.apply(&rows.values).map_err(|e| e.to_string())?;
    let n = rows.n_rows;
    let w = schema.n_features();
    if let Some(i) = features.iter().position(|v| !v.is_finite()) {
        return Err(format!(
            "{}: row {} column `{}` is not a finite number after preprocessing",
            req.input.display(),
            i / w + 1,
            schema.feature_names[i % w]
        ));
    }
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
            let pred = all.argmax();
            let labels: Vec<String> = pred
                .iter()
                .map(|&c| {
                    schema
                        .class_labels
                        .get(c as usize)
                        .cloned()
                        .unwrap_or_default()
                })
                .collect();
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
