//! Batch scoring on DataFusion or a Ballista cluster (`kiln predict --engine …`): the
//! input files registered as a table, the bundle's fitted transforms lowered into the
//! query ([`crate::lower`]), the model run where the rows are (`kiln_predict`,
//! [`crate::predict_udf`]), and the rows, ordered by the row id, written by kiln beside
//! their id as `kiln predict` writes them (prediction, then one probability per class).

use crate::lower::{Columns, LowerError};
use crate::predict_udf::NOT_FINITE;
use crate::query::{Failure, Query, classify};
use crate::session::Table;
use datafusion::arrow::array::{Array, AsArray, ListArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Float32Type};
use datafusion::logical_expr::{Expr, cast, col};
use datafusion::prelude::ident;
use futures_util::StreamExt;
use kiln_core::{FeatureError, Progress, Rows, Task};
use kiln_deploy::{Bundle, DeployError};
use kiln_preprocess::stream::Scan;
use kiln_preprocess::table::{OutColumn, TableWriter};
use kiln_preprocess::{ColumnType, Engine, Source};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What to score, where.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// A deploy folder or an .onnx file with schema.json beside it.
    pub model: &'a Path,
    /// The rows: a CSV or Parquet file, a folder of them, or a glob.
    pub input: &'a Path,
    /// Where the predictions go: .csv or .parquet.
    pub output: &'a Path,
    /// `datafusion` or `ballista`.
    pub engine: Engine,
    /// The Ballista scheduler (`df://host:port`).
    pub scheduler: Option<&'a str>,
    /// The column that identifies each row: written beside its prediction, and the
    /// order of the output.
    pub row_id: &'a str,
}

/// What was scored.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// Rows predicted.
    pub rows: usize,
    /// Input files read.
    pub files: usize,
    /// Columns of the input the model does not use (besides the id and the target).
    pub extra: Vec<String>,
    /// Accuracy (classification) or RMSE (regression) when the input holds the target.
    pub score: Option<(String, f64)>,
}

/// The table files of `input`: a file, the CSV or Parquet files of a folder (not its
/// hidden ones), or the files a glob matches; all of one format.
pub fn input_files(input: &Path) -> Result<Vec<PathBuf>, String> {
    let shown = input.display();
    let files = if input.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(input)
            .map_err(|e| format!("--input {shown}: {e}"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && !p
                        .file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with('.'))
                    && format_of(p).is_some()
            })
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(format!(
                "--input {shown}: the folder holds no .csv or .parquet file"
            ));
        }
        files
    } else {
        let source = Source::Csv {
            path: Some(input.to_path_buf()),
            train: None,
            test: None,
            delimiter: ',',
            has_header: true,
            null_values: Vec::new(),
        };
        kiln_preprocess::source_files(&source).map_err(|e| format!("--input: {e}"))?
    };
    let first = format_of(&files[0]);
    for f in &files {
        if !f.is_file() {
            return Err(format!("--input {}: no such file", f.display()));
        }
        match format_of(f) {
            None => {
                return Err(format!(
                    "--input {}: the cluster engines read .csv and .parquet files; score other formats without --engine",
                    f.display()
                ));
            }
            k if k != first => {
                return Err(format!(
                    "--input {shown}: mixes CSV and Parquet files ({} and {}); give one format",
                    files[0].display(),
                    f.display()
                ));
            }
            _ => {}
        }
    }
    Ok(files)
}

/// Whether `p` is CSV (false) or Parquet (true) by its extension.
fn format_of(p: &Path) -> Option<bool> {
    match p.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("csv") => Some(false),
        Some(e) if e.eq_ignore_ascii_case("parquet") => Some(true),
        _ => None,
    }
}

/// Scores `req.input` on `req.engine`. A failure on a row's data is located by
/// reading the input here as `kiln predict` does, so the message names the file, row and
/// column as a local run's does.
pub fn score(req: &Request, progress: &dyn Progress) -> Result<Scored, String> {
    let bundle = kiln_deploy::Bundle::open(req.model).map_err(|e| e.to_string())?;
    match score_bundle(req, &bundle, progress) {
        Err(e) if classify(&e) == Failure::Data => {
            tracing::info!("the engine failed on the data; reading the input here to name the row");
            let files = input_files(req.input).unwrap_or_default();
            Err(locate(&bundle, &files, e))
        }
        other => other,
    }
}

/// The local reader's error for the row behind the engine's data error `e`: each file
/// scanned as `kiln predict` scans it and its rows preprocessed, until one fails; `e`
/// when none does.
fn locate(bundle: &Bundle, files: &[PathBuf], e: String) -> String {
    let schema = &bundle.schema;
    let text = schema.text_columns();
    for f in files {
        let scan = match Scan::open(f, &schema.input_columns, &text, None, CHUNK_ROWS) {
            Ok(s) => s,
            Err(local) => return format!("--input: {local} (the engine said: {e})"),
        };
        let mut found = None;
        let read = scan.for_each(|chunk| {
            let rows = Rows::from(chunk.rows);
            if let Err(DeployError::Features(FeatureError::NotFinite { row, column })) =
                bundle.features(&rows)
            {
                found = Some(format!(
                    "--input {}: row {} column `{column}` is {NOT_FINITE} (rows count from 1 after the header); fill the cell or drop the row",
                    f.display(),
                    chunk.first_row + row + 1
                ));
                return Err(kiln_preprocess::PreprocessError::Invalid("found".into()));
            }
            Ok(())
        });
        match (found, read) {
            (Some(m), _) => return format!("{m} (the engine said: {e})"),
            (None, Err(local)) => return format!("--input: {local} (the engine said: {e})"),
            (None, Ok(_)) => {}
        }
    }
    e
}

/// MiB DataFusion's sort may hold in kiln's process before it spills (`--engine
/// datafusion`): the output's row-id order is one sort of the whole table.
const MEMORY_MB: u64 = 1024;

/// Rows of a file read at a time when a failure is located.
const CHUNK_ROWS: usize = 65_536;

fn score_bundle(req: &Request, bundle: &Bundle, progress: &dyn Progress) -> Result<Scored, String> {
    match (req.engine, req.scheduler) {
        (Engine::Local, _) => {
            return Err("--engine local is `kiln predict` without --engine".into());
        }
        (Engine::Ballista, None) => {
            return Err(
                "--engine ballista needs --scheduler df://host:port (a running `kiln-scheduler`, docs/scale.md)"
                    .into(),
            );
        }
        (Engine::Datafusion, Some(_)) => {
            return Err("--scheduler goes with --engine ballista".into());
        }
        _ => {}
    }
    let schema = &bundle.schema;
    if schema.image.is_some() {
        return Err(format!(
            "--model {}: a model of images scores image files, which the cluster engines do not read; predict without --engine",
            req.model.display()
        ));
    }
    let onnx = std::path::absolute(&bundle.onnx)
        .map_err(|e| format!("--model {}: {e}", bundle.onnx.display()))?;
    let files = input_files(req.input)?;
    let source = match format_of(&files[0]) {
        Some(true) => Source::Parquet {
            path: Some(req.input.to_path_buf()),
            train: None,
            test: None,
        },
        _ => Source::Csv {
            path: Some(req.input.to_path_buf()),
            train: None,
            test: None,
            delimiter: ',',
            has_header: true,
            null_values: Vec::new(),
        },
    };
    let text = schema.text_columns();
    let column_types: BTreeMap<String, ColumnType> = schema
        .input_columns
        .iter()
        .map(|c| {
            let t = if text.contains(c) {
                ColumnType::Text
            } else {
                ColumnType::Number
            };
            (c.clone(), t)
        })
        .collect();
    let table = Table {
        source: &source,
        column_types: &column_types,
        keep: vec![req.row_id, schema.target.as_str()],
    };
    let q = Query::new(req.engine, req.scheduler).map_err(|e| e.to_string())?;
    let ctx = q
        .block_on(crate::session::context(
            req.engine,
            req.scheduler,
            MEMORY_MB,
        ))
        .map_err(|e| e.to_string())?;
    let inferred = q
        .block_on(crate::session::register_source(&ctx, &table, &files))
        .map_err(|e| e.to_string())?;
    let names: Vec<String> = inferred.fields().iter().map(|f| f.name().clone()).collect();
    let input = req.input.display();
    if !names.iter().any(|n| n == req.row_id) {
        return Err(format!(
            "--input {input}: {}",
            kiln_preprocess::engine::not_found("the --row-id column", req.row_id, &names)
        ));
    }
    let missing: Vec<&String> = schema
        .input_columns
        .iter()
        .filter(|c| !names.contains(c))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "--input {input}: the model's input column(s) {} are missing; it takes {}",
            missing
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", "),
            kiln_preprocess::engine::preview(&schema.input_columns)
        ));
    }
    let has_target = names.contains(&schema.target);
    let extra: Vec<String> = names
        .iter()
        .filter(|n| {
            !schema.input_columns.contains(n) && **n != schema.target && n.as_str() != req.row_id
        })
        .cloned()
        .collect();

    // the raw columns as kiln reads them, then every fitted transform lowered
    let mut columns = Columns::default();
    for c in &schema.input_columns {
        let e = if text.contains(c) {
            columns.text.insert(c.clone());
            cast(ident(c), DataType::Utf8)
        } else {
            cast(cast(ident(c), DataType::Float64), DataType::Float32)
        };
        columns.cols.push((c.clone(), e));
    }
    for t in &schema.transforms {
        columns.apply(t).map_err(|e| match e {
            LowerError::Unsupported(op) => format!(
                "--model {}: its preprocessing uses {op}, which has no DataFusion form yet; predict without --engine",
                req.model.display()
            ),
            other => format!("--model {}: schema.json: {other}", req.model.display()),
        })?;
    }
    if let Some(c) = columns.text.iter().next() {
        return Err(format!(
            "--model {}: schema.json leaves column `{c}` as text after its transforms; the bundle is inconsistent, re-export it",
            req.model.display()
        ));
    }
    let features: Vec<Expr> = columns
        .cols
        .iter()
        .map(|(_, e)| cast(e.clone(), DataType::Float32))
        .collect();
    let mut select = vec![
        cast(ident(req.row_id), DataType::Utf8).alias("__id"),
        ident(req.row_id).alias("__key"),
        crate::predict_udf::predict_expr(&onnx, features).alias("__p"),
    ];
    if has_target {
        select.push(cast(ident(&schema.target), DataType::Utf8).alias("__t"));
    }
    let df = q
        .run(ctx.table("source"))
        .map_err(|e| e.to_string())?
        .select(select)
        .and_then(|d| d.sort(vec![col("__key").sort(true, false)]))
        .map_err(|e| format!("DataFusion could not plan the scoring query: {e}"))?;

    let mut out = TableWriter::create(req.output).map_err(|e| format!("--output: {e}"))?;
    progress.start("predict", 0);
    let mut stream = q.run(df.execute_stream()).map_err(|e| e.to_string())?;
    let mut rows = 0usize;
    let (mut sum, mut seen) = (0f64, false);
    while let Some(batch) = q.block_on(stream.next()) {
        let b = batch.map_err(|e| q.error(&e.to_string()).to_string())?;
        let (cols, correct) = batch_columns(&b, schema.task, &schema.class_labels, req.row_id)?;
        if let Some(c) = correct {
            seen = true;
            sum += c;
        }
        out.write(cols).map_err(|e| format!("--output: {e}"))?;
        rows += b.num_rows();
        progress.advance(b.num_rows() as u64);
    }
    progress.finish();
    out.finish().map_err(|e| format!("--output: {e}"))?;
    let n = rows.max(1) as f64;
    let score = seen.then(|| match schema.task {
        Task::Classification => ("accuracy".to_string(), sum / n),
        Task::Regression => ("rmse".to_string(), (sum / n).sqrt()),
    });
    tracing::info!(
        rows,
        files = files.len(),
        engine = req.engine.name(),
        "scored"
    );
    Ok(Scored {
        rows,
        files: files.len(),
        extra,
        score,
    })
}

/// Named output columns, as `TableWriter::write` takes them.
type OutColumns = Vec<(String, OutColumn)>;

/// The `k` values of row `i` of a list column.
fn row(list: &ListArray, i: usize) -> Vec<f32> {
    let v = list.value(i);
    v.as_primitive::<Float32Type>().values().to_vec()
}

/// A result batch as output columns (the id, the prediction, a probability per class),
/// and the correct labels (classification) or squared errors (regression) summed when
/// the batch has the target.
fn batch_columns(
    b: &RecordBatch,
    task: Task,
    labels: &[String],
    row_id: &str,
) -> Result<(OutColumns, Option<f64>), String> {
    let n = b.num_rows();
    let ids = b.column(0).as_string::<i32>();
    let ids: Vec<String> = (0..n).map(|i| ids.value(i).to_string()).collect();
    let Some(p) = b.column(2).as_struct_opt() else {
        return Err(format!(
            "{}: returned {}, not a struct",
            crate::predict_udf::NAME,
            b.column(2).data_type()
        ));
    };
    let (logits, probs) = (p.column(0).as_list::<i32>(), p.column(1).as_list::<i32>());
    let target = (b.num_columns() > 3).then(|| b.column(3).as_string::<i32>());
    let mut cols = vec![(row_id.to_string(), OutColumn::Text(ids))];
    let mut correct = target.map(|_| 0f64);
    match task {
        Task::Classification => {
            let mut predicted = Vec::with_capacity(n);
            let mut p_by_class = vec![Vec::with_capacity(n); labels.len()];
            for i in 0..n {
                let z = row(logits, i);
                let mut best = 0;
                for (j, v) in z.iter().enumerate() {
                    if *v > z[best] {
                        best = j;
                    }
                }
                let label = labels.get(best).cloned().unwrap_or_default();
                if let (Some(t), Some(c)) = (target, correct.as_mut())
                    && t.is_valid(i)
                    && t.value(i) == label
                {
                    *c += 1.0;
                }
                predicted.push(label);
                for (j, p) in row(probs, i).into_iter().enumerate() {
                    if let Some(col) = p_by_class.get_mut(j) {
                        col.push(p);
                    }
                }
            }
            cols.push(("prediction".to_string(), OutColumn::Text(predicted)));
            for (label, p) in labels.iter().zip(p_by_class) {
                cols.push((format!("p_{label}"), OutColumn::Number(p)));
            }
        }
        Task::Regression => {
            let mut values = Vec::with_capacity(n);
            for i in 0..n {
                let v = row(logits, i).first().copied().unwrap_or(f32::NAN);
                if let (Some(t), Some(c)) = (target, correct.as_mut()) {
                    let actual: f64 = t.value(i).parse().unwrap_or(f64::NAN);
                    *c += (actual - f64::from(v)).powi(2);
                }
                values.push(v);
            }
            cols.push(("prediction".to_string(), OutColumn::Number(values)));
        }
    }
    Ok((cols, correct))
}
