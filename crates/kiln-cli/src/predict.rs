//! `kiln predict`: raw rows from a CSV / Parquet / Arrow file, streamed in chunks — or, for a model trained
//! on images, image files (one file, a folder of them, or a folder of class folders) —
//! through a deployed bundle (`kiln_deploy::Bundle`: the fitted preprocessing of its
//! schema.json applied, batched ONNX Runtime inference) with a progress bar; predicted
//! label (or value) and class probabilities appended to CSV or Parquet as they come.

use kiln_core::{Predictor, Progress, Rows, Task};
use kiln_deploy::Bundle;
use kiln_preprocess::Engine;
use kiln_preprocess::stream;
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
    /// Rows of a table read at a time ([`CHUNK_ROWS`] unless asked otherwise).
    pub chunk_rows: usize,
    /// Where the rows are scored.
    pub engine: Engine,
    /// The Ballista scheduler, for `Engine::Ballista`.
    pub scheduler: Option<String>,
    /// The row-id column, for the cluster engines.
    pub row_id: Option<String>,
}

/// `--engine`'s values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineArg {
    /// This process: ONNX Runtime over streamed chunks.
    Local,
    /// DataFusion in this process.
    Datafusion,
    /// A DataFusion Ballista cluster (--scheduler).
    Ballista,
}

impl From<EngineArg> for Engine {
    fn from(e: EngineArg) -> Engine {
        match e {
            EngineArg::Local => Engine::Local,
            EngineArg::Datafusion => Engine::Datafusion,
            EngineArg::Ballista => Engine::Ballista,
        }
    }
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

/// Rows read from a table at a time when `--chunk-rows` is not given: enough to keep
/// ONNX Runtime's calls full, small enough that memory stays flat (about 1 MiB per
/// input column).
pub const CHUNK_ROWS: usize = 65_536;

/// Runs the request: a table streams through in chunks of [`Request::chunk_rows`] rows,
/// read ahead on another thread while ONNX Runtime works (a CSV in blocks, Parquet and
/// Arrow by polars' streaming engine: `kiln_preprocess::stream`), so memory does not grow
/// with the file; image files are read whole.
pub fn predict(req: &Request, progress: &dyn Progress) -> Result<Summary, String> {
    if same_file(&req.input, &req.output) {
        return Err(format!(
            "--output {} is the --input file; predictions would overwrite the rows they come from: write them elsewhere",
            req.output.display()
        ));
    }
    if req.engine != Engine::Local {
        return on_engine(req, progress);
    }
    if req.scheduler.is_some() || req.row_id.is_some() {
        return Err(
            "--scheduler and --row-id go with --engine datafusion or ballista; without --engine the rows are scored here, in order"
                .into(),
        );
    }
    if req.batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    let bundle = Bundle::open(&req.model).map_err(|e| e.to_string())?;
    let mut out = table::TableWriter::create(&req.output).map_err(|e| format!("--output: {e}"))?;
    let mut run = Run {
        bundle: &bundle,
        // ONNX Runtime gets every core but the one that reads and parses ahead
        model: bundle
            .session(
                std::thread::available_parallelism()
                    .map_or(1, |n| n.get())
                    .saturating_sub(1),
            )
            .map_err(|e| e.to_string())?,
        req,
        out: &mut out,
        score: Score::default(),
        out_of_range: Vec::new(),
        progress,
    };
    let (rows, extra) = if is_table(&req.input) {
        let schema = &bundle.schema;
        let text = schema.text_columns();
        let scan = stream::Scan::open(
            &req.input,
            &schema.input_columns,
            &text,
            Some(&schema.target),
            req.chunk_rows.max(1),
        )
        .map_err(|e| format!("--input: {e}"))?;
        let header = scan.header().clone();
        progress.start("predict", header.rows.unwrap_or(0) as u64);
        // the first error of a chunk's prediction, returned as it is
        let mut failed = None;
        let n = scan.for_each(|chunk| {
            let rows = Rows::from(chunk.rows);
            run.chunk(&rows, chunk.first_row, None, chunk.target)
                .map_err(|m| {
                    failed = Some(m);
                    kiln_preprocess::PreprocessError::Invalid("predicting a chunk failed".into())
                })
        });
        let n = match (n, failed) {
            (_, Some(m)) => return Err(m),
            (Err(e), None) => return Err(format!("--input: {e}")),
            (Ok(n), None) => n,
        };
        (n, header.extra)
    } else {
        let input = read_images(&req.input, &bundle.schema)?;
        progress.start("predict", input.rows.n_rows as u64);
        run.chunk(&input.rows, 0, input.files, input.target)?;
        (input.rows.n_rows, Vec::new())
    };
    progress.finish();
    let Run {
        score,
        mut out_of_range,
        ..
    } = run;
    out.finish().map_err(|e| format!("--output: {e}"))?;
    let columns = &bundle.schema.input_columns;
    out_of_range.sort_by_key(|(c, _)| columns.iter().position(|x| x == c));
    Ok(Summary {
        rows,
        extra: extra
            .into_iter()
            .filter(|c| *c != bundle.schema.target)
            .collect(),
        out_of_range,
        score: score.value(bundle.schema.task, rows),
    })
}

/// Scores on DataFusion or a Ballista cluster (kiln-cluster, which names a bad row's
/// file, row and column as a local run does).
#[cfg(feature = "cluster")]
fn on_engine(req: &Request, progress: &dyn Progress) -> Result<Summary, String> {
    let Some(row_id) = req.row_id.as_deref() else {
        return Err(format!(
            "--engine {} needs --row-id COLUMN: the engine reads the files in parallel pieces, so a column that identifies each row keeps predictions and rows together",
            req.engine.name()
        ));
    };
    let cluster = kiln_cluster::score::Request {
        model: &req.model,
        input: &req.input,
        output: &req.output,
        engine: req.engine,
        scheduler: req.scheduler.as_deref(),
        row_id,
    };
    let s = kiln_cluster::score::score(&cluster, progress)?;
    Ok(Summary {
        rows: s.rows,
        extra: s.extra,
        out_of_range: Vec::new(),
        score: s.score,
    })
}

#[cfg(not(feature = "cluster"))]
fn on_engine(req: &Request, _: &dyn Progress) -> Result<Summary, String> {
    Err(format!(
        "--engine {}: this kiln was built without the `cluster` feature; build it with `cargo build --release -p kiln-cli --features cluster` (docs/scale.md)",
        req.engine.name()
    ))
}

/// A table by its extension (anything else is taken as image files).
fn is_table(path: &Path) -> bool {
    let is_image = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)));
    !path.is_dir() && !is_image
}

/// The running score against the input's target.
#[derive(Default)]
struct Score {
    /// Correct labels (classification) or the sum of squared errors (regression).
    sum: f64,
    /// Whether any chunk had the target.
    seen: bool,
}

impl Score {
    fn value(&self, task: Task, rows: usize) -> Option<(String, f64)> {
        let n = rows.max(1) as f64;
        self.seen.then(|| match task {
            Task::Classification => ("accuracy".to_string(), self.sum / n),
            Task::Regression => ("rmse".to_string(), (self.sum / n).sqrt()),
        })
    }
}

/// What predicting chunk after chunk keeps.
struct Run<'a> {
    bundle: &'a Bundle,
    model: kiln_deploy::OrtModel,
    req: &'a Request,
    out: &'a mut table::TableWriter,
    score: Score,
    out_of_range: Vec<(String, usize)>,
    progress: &'a dyn Progress,
}

impl Run<'_> {
    /// Predicts `rows` (the input's rows `first_row`…) and appends their predictions
    /// (after the `files` they came from, for images) to the output.
    fn chunk(
        &mut self,
        rows: &Rows,
        first_row: usize,
        files: Option<Vec<String>>,
        target: Option<Vec<String>>,
    ) -> Result<(), String> {
        let bundle = self.bundle;
        let schema = &bundle.schema;
        let input = &self.req.input;
        let features = bundle.features(rows).map_err(|e| match e {
            kiln_deploy::DeployError::Features(kiln_core::FeatureError::NotFinite {
                row,
                column,
            }) => {
                format!(
                    "--input {}: row {} column `{column}` is not a finite number after preprocessing (rows count from 1 after the header); fill the cell or drop the row",
                    input.display(),
                    first_row + row + 1
                )
            }
            other => format!("--input {}: {other}", input.display()),
        })?;
        let n = rows.n_rows;
        let w = features.len().checked_div(n).unwrap_or(0);
        for (c, k) in bundle.out_of_range(rows) {
            match self.out_of_range.iter_mut().find(|(x, _)| *x == c) {
                Some((_, total)) => *total += k,
                None => self.out_of_range.push((c, k)),
            }
        }
        let mut all = kiln_core::Predictions {
            n_rows: 0,
            n_outputs: 0,
            logits: Vec::new(),
            probabilities: Vec::new(),
        };
        for start in (0..n).step_by(self.req.batch) {
            let m = self.req.batch.min(n - start);
            let p = self
                .model
                .predict(&features[start * w..(start + m) * w], m)
                .map_err(|e| e.to_string())?;
            all.extend(p);
            self.progress.advance(m as u64);
        }
        let mut columns = Vec::new();
        if let Some(files) = files {
            columns.push(("file".to_string(), OutColumn::Text(files)));
        }
        match schema.task {
            Task::Classification => {
                let labels = bundle.labels(&all);
                if let Some(t) = target {
                    self.score.seen = true;
                    self.score.sum += t.iter().zip(&labels).filter(|(a, b)| a == b).count() as f64;
                }
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
                if let Some(t) = target {
                    self.score.seen = true;
                    self.score.sum += t
                        .iter()
                        .zip(&all.logits)
                        .map(|(a, p)| {
                            (a.parse::<f64>().unwrap_or(f64::NAN) - f64::from(*p)).powi(2)
                        })
                        .sum::<f64>();
                }
                columns.push(("prediction".to_string(), OutColumn::Number(all.logits)));
            }
        }
        self.out
            .write(columns)
            .map_err(|e| format!("--output: {e}"))
    }
}

/// Image input: the images' rows, the files they came from and, for a folder of class
/// folders, the class of each.
struct Images {
    rows: Rows,
    files: Option<Vec<String>>,
    target: Option<Vec<String>>,
}

/// Image file names `--input` takes for a model trained on images.
const IMAGE_EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "gif", "bmp"];

/// Reads image `--input` (a file with an image extension, or a folder) for a model whose
/// schema records an image shape.
fn read_images(path: &Path, schema: &kiln_core::Schema) -> Result<Images, String> {
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
    Ok(Images {
        rows: Rows {
            n_rows: files.len(),
            values,
            text: Vec::new(),
        },
        files: Some(files.iter().map(|f| f.display().to_string()).collect()),
        target,
    })
}
