//! `kiln predict`: raw rows from a CSV / Parquet / Arrow file — or, for a model trained
//! on images, image files (one file, a folder of them, or a folder of class folders) —
//! through a deployed bundle (`kiln_deploy::Bundle`: the fitted preprocessing of its
//! schema.json applied, batched ONNX Runtime inference) with a progress bar; predicted
//! label (or value) and class probabilities written to CSV or Parquet.

use kiln_core::{Predictor, Progress, Rows, Task};
use kiln_deploy::Bundle;
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

/// The same file, also through a symbolic or hard link or another spelling of its path
/// (same device and inode).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => (x.dev(), x.ino()) == (y.dev(), y.ino()),
        _ => false,
    }
}

/// Runs the request.
pub fn predict(req: &Request, progress: &dyn Progress) -> Result<Summary, String> {
    if req.batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    if same_file(&req.input, &req.output) {
        return Err(format!(
            "--output {} is the --input file; predictions would overwrite the rows they come from: write them elsewhere",
            req.output.display()
        ));
    }
    let bundle = Bundle::open(&req.model).map_err(|e| e.to_string())?;
    let schema = &bundle.schema;
    let input = read_input(&req.input, schema)?;
    let rows = input.rows;
    let features = bundle.features(&rows).map_err(|e| match e {
        kiln_deploy::DeployError::Features(kiln_core::FeatureError::NotFinite { row, column }) => {
            format!(
                "--input {}: row {} column `{column}` is not a finite number after preprocessing (rows count from 1 after the header); fill the cell or drop the row",
                req.input.display(),
                row + 1
            )
        }
        other => format!("--input {}: {other}", req.input.display()),
    })?;
    let n = rows.n_rows;
    let w = features.len().checked_div(n).unwrap_or(0);
    let out_of_range = bundle.out_of_range(&rows);
    let mut model = bundle.session(0).map_err(|e| e.to_string())?;
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
    if let Some(files) = input.files {
        columns.push(("file".to_string(), OutColumn::Text(files)));
    }
    let target = input.target;
    let score;
    match schema.task {
        Task::Classification => {
            let labels = bundle.labels(&all);
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
    table::write_table(&req.output, columns).map_err(|e| format!("--output: {e}"))?;
    Ok(Summary {
        rows: n,
        extra: input
            .extra
            .into_iter()
            .filter(|c| *c != schema.target)
            .collect(),
        out_of_range,
        score,
    })
}

/// What `--input` held: the raw rows, the columns the model does not use, the image
/// files (for image input) and the target as text when the input has it.
struct Input {
    rows: Rows,
    extra: Vec<String>,
    files: Option<Vec<String>>,
    target: Option<Vec<String>>,
}

/// Image file names `--input` takes for a model trained on images.
const IMAGE_EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "gif", "bmp"];

/// Reads `--input`: a table, or image files (a file with an image extension, or a
/// folder) for a model whose schema records an image shape.
fn read_input(path: &Path, schema: &kiln_core::Schema) -> Result<Input, String> {
    let is_image = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)));
    if !path.is_dir() && !is_image {
        let raw = table::read_rows_with_text(path, &schema.input_columns, &schema.text_columns())
            .map_err(|e| format!("--input: {e}"))?;
        let target = read_target(path, &schema.target, &raw.columns);
        return Ok(Input {
            rows: Rows {
                n_rows: raw.n_rows,
                values: raw.values,
                text: raw.text,
            },
            extra: raw.extra,
            files: None,
            target,
        });
    }
    let Some(image) = schema.image else {
        return Err(format!(
            "--input {}: image files, but the model was not trained on images; give it a table (CSV, Parquet or Arrow) of its input columns",
            path.display()
        ));
    };
    // a folder of class folders (scored against their names), a folder of images, or one
    let (files, target): (Vec<std::path::PathBuf>, Option<Vec<String>>) = if path.is_dir() {
        let has_classes = std::fs::read_dir(path)
            .map_err(|e| format!("--input {}: {e}", path.display()))?
            .filter_map(|e| e.ok())
            .any(|e| e.path().is_dir());
        if has_classes {
            let classes =
                kiln_preprocess::images::class_files(path).map_err(|e| format!("--input: {e}"))?;
            let mut files = Vec::new();
            let mut target = Vec::new();
            for (class, paths) in classes {
                target.extend(std::iter::repeat_n(class, paths.len()));
                files.extend(paths);
            }
            (files, Some(target))
        } else {
            let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(path)
                .map_err(|e| format!("--input {}: {e}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| !n.starts_with('.'))
                })
                .collect();
            files.sort();
            if files.is_empty() {
                return Err(format!(
                    "--input {}: the folder holds no image files",
                    path.display()
                ));
            }
            (files, None)
        }
    } else {
        (vec![path.to_path_buf()], None)
    };
    let mut values = Vec::with_capacity(files.len() * image.len());
    for f in &files {
        values.extend(
            kiln_preprocess::images::read_image(f, [image.height, image.width], image.channels)
                .map_err(|e| format!("--input: {e}"))?,
        );
    }
    Ok(Input {
        rows: Rows {
            n_rows: files.len(),
            values,
            text: Vec::new(),
        },
        extra: Vec::new(),
        files: Some(files.iter().map(|f| f.display().to_string()).collect()),
        target,
    })
}

/// The target column as text, when the input holds it (to score the predictions).
fn read_target(input: &Path, target: &str, columns: &[String]) -> Option<Vec<String>> {
    if !columns.iter().any(|c| c == target) {
        return None;
    }
    table::read_text_column(input, target).ok()
}
