//! Raw rows in and prediction tables out, for `kiln predict`: CSV, Parquet or Arrow IPC
//! chosen by the file extension, read and written with polars. Reading checks the columns
//! a model needs and names the row and column of every bad cell.

use crate::error::{PolarsContext, PreprocessError, Result};
use polars::prelude::*;
use std::path::Path;

/// Raw feature rows read from a table, in the order of the columns asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct RawRows {
    /// Number of rows.
    pub n_rows: usize,
    /// `n_rows * wanted.len()` values, row after row.
    pub values: Vec<f32>,
    /// Columns of the file that were not asked for (ignored).
    pub extra: Vec<String>,
    /// The file's own column names, in file order.
    pub columns: Vec<String>,
    /// The cells of the text columns asked for (their places in `values` are NaN).
    pub text: Vec<(String, kiln_core::TextColumn)>,
}

impl From<RawRows> for kiln_core::Rows {
    /// The rows as a schema applies them (the file's column lists dropped).
    fn from(r: RawRows) -> kiln_core::Rows {
        kiln_core::Rows {
            n_rows: r.n_rows,
            values: r.values,
            text: r.text,
        }
    }
}

fn invalid(m: String) -> PreprocessError {
    PreprocessError::Invalid(m)
}

fn extension(path: &Path) -> String {
    path.extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// Reads a whole table: `.csv` (header row, `NA` and empty cells are null), `.parquet`,
/// or `.arrow` / `.ipc` / `.feather` (Arrow IPC).
pub fn read_table(path: &Path) -> Result<DataFrame> {
    if !path.is_file() {
        return Err(PreprocessError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        });
    }
    let shown = path.display().to_string();
    let df = match extension(path).as_str() {
        "csv" => {
            return crate::read_csv(path, ',', true, &["NA".to_string(), String::new()], &[]);
        }
        "parquet" => read_parquet(path)?,
        "arrow" | "ipc" | "feather" => read_ipc(path)?,
        other => {
            return Err(invalid(format!(
                "{shown}: unknown table format `.{other}`; use .csv, .parquet or .arrow"
            )));
        }
    };
    if df.height() == 0 {
        return Err(invalid(format!("{shown}: the table has no rows")));
    }
    Ok(df)
}

fn open(path: &Path) -> Result<std::fs::File> {
    std::fs::File::open(path).map_err(|source| PreprocessError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn nonempty(df: DataFrame, path: &Path) -> Result<DataFrame> {
    if df.height() == 0 {
        return Err(invalid(format!(
            "{}: the table has no rows",
            path.display()
        )));
    }
    Ok(df)
}

/// Reads a whole Parquet file (at least one row).
pub fn read_parquet(path: &Path) -> Result<DataFrame> {
    let file = open(path)?;
    let df = guarded(path, "parquet", || ParquetReader::new(file).finish())?
        .ctx(|| format!("{}: could not read as parquet", path.display()))?;
    nonempty(df, path)
}

/// Runs a polars reader of `path`; a panic inside polars (not every corrupt file is
/// caught by its checks) becomes an error naming the file.
pub(crate) fn guarded<T>(path: &Path, what: &str, f: impl FnOnce() -> T) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        invalid(format!(
            "{}: the file is not valid {what} (reading it failed: {})",
            path.display(),
            kiln_core::panic_message(&p)
        ))
    })
}

/// Reads a whole Arrow IPC file (at least one row).
pub fn read_ipc(path: &Path) -> Result<DataFrame> {
    let file = open(path)?;
    let df = guarded(path, "Arrow IPC", || IpcReader::new(file).finish())?
        .ctx(|| format!("{}: could not read as Arrow IPC", path.display()))?;
    nonempty(df, path)
}

/// Reads `path` and returns the `wanted` columns as row-major f32, an empty cell as NaN
/// (which the schema's `impute` steps fill). A missing column is an error naming the
/// nearest existing one; a cell that is not a number is an error naming its row (1-based,
/// header excluded) and column.
pub fn read_rows(path: &Path, wanted: &[String]) -> Result<RawRows> {
    read_rows_with_text(path, wanted, &[])
}

/// [`read_rows`] where the `text` columns (a subset of `wanted`, e.g. a schema's
/// `text_columns()`) hold text cells: read as text (a number as its text), an empty
/// cell as missing.
pub fn read_rows_with_text(path: &Path, wanted: &[String], text: &[String]) -> Result<RawRows> {
    let df = read_table(path)?;
    let columns = crate::load::column_names(&df);
    let extra = check_columns(path, &columns, wanted)?;
    let mut rows = rows_of(&df, wanted, text, 0, path)?;
    rows.extra = extra;
    rows.columns = columns;
    Ok(rows)
}

/// Checks that a table with `columns` holds every `wanted` one (a missing column is an
/// error naming the nearest unused one) and returns the columns it does not take.
pub(crate) fn check_columns(
    path: &Path,
    columns: &[String],
    wanted: &[String],
) -> Result<Vec<String>> {
    // suggest only columns the model does not already take
    let unused: Vec<String> = columns
        .iter()
        .filter(|c| !wanted.contains(c))
        .cloned()
        .collect();
    let missing: Vec<String> = wanted
        .iter()
        .filter(|w| !columns.contains(w))
        .map(|w| match kiln_core::nearest(w, &unused) {
            Some(n) => format!("`{w}` (did you mean `{n}`?)"),
            None => format!("`{w}`"),
        })
        .collect();
    if !missing.is_empty() {
        return Err(invalid(format!(
            "{}: the model needs column(s) {} that the file lacks; its columns are: {}",
            path.display(),
            missing.join(", "),
            crate::preview(columns)
        )));
    }
    Ok(unused)
}

/// The `wanted` columns of `df` (rows `first_row`… of the file at `path`) as row-major
/// f32 (an empty cell as NaN), the `text` ones as text cells; a cell that is not a number
/// is an error naming its row of the file (1-based, header excluded) and column.
/// `extra` and `columns` are left empty.
pub(crate) fn rows_of(
    df: &DataFrame,
    wanted: &[String],
    text: &[String],
    first_row: usize,
    path: &Path,
) -> Result<RawRows> {
    let shown = path.display();
    let n = df.height();
    let w = wanted.len();
    let mut values = vec![0.0f32; n * w];
    let mut cells = Vec::new();
    for (j, name) in wanted.iter().enumerate() {
        let c = df.column(name).ctx(|| name.clone())?;
        if text.contains(name) {
            let t = c.cast(&DataType::String).ctx(|| name.clone())?;
            let col = kiln_core::TextColumn::from_cells(t.str().ctx(|| name.clone())?.iter());
            for i in 0..n {
                values[i * w + j] = f32::NAN;
            }
            cells.push((name.clone(), col));
            continue;
        }
        let as_f32 = c.cast(&DataType::Float32).ok();
        let ok = as_f32
            .as_ref()
            .is_some_and(|f| f.null_count() == c.null_count());
        if !ok {
            // Find the first bad cell to name it.
            let text = c.cast(&DataType::String).ctx(|| name.clone())?;
            let bad = text
                .str()
                .ctx(|| name.clone())?
                .iter()
                .enumerate()
                .find_map(|(i, v)| match v {
                    None => None,
                    Some(s) if s.trim().parse::<f32>().is_err() => {
                        Some((i, format!("holds `{s}`, not a number")))
                    }
                    _ => None,
                });
            let (row, what) = bad.unwrap_or((0, format!("has type {}", c.dtype())));
            return Err(invalid(format!(
                "{shown}: row {} column `{name}` {what}; the model takes numbers in this column",
                first_row + row + 1
            )));
        }
        let f = as_f32.ok_or_else(|| invalid(format!("column `{name}` is not numeric")))?;
        let mut beyond = false;
        for (i, v) in f.f32().ctx(|| name.clone())?.iter().enumerate() {
            let x = v.unwrap_or(f32::NAN);
            beyond |= x.is_infinite();
            values[i * w + j] = x;
        }
        // a finite number beyond f32's range would become ±inf and pass unnoticed
        if beyond {
            let wide = c.cast(&DataType::Float64).ctx(|| name.clone())?;
            if let Some((i, v)) = wide
                .f64()
                .ctx(|| name.clone())?
                .iter()
                .enumerate()
                .find_map(|(i, v)| v.filter(|v| crate::frame::beyond_f32(*v)).map(|v| (i, v)))
            {
                return Err(crate::frame::beyond_f32_error(
                    &format!("{shown}: row {}", first_row + i + 1),
                    name,
                    &format!("{v:e}"),
                ));
            }
        }
    }
    Ok(RawRows {
        n_rows: n,
        values,
        extra: Vec::new(),
        columns: Vec::new(),
        text: cells,
    })
}

/// One column of a table as text (nulls as empty strings), e.g. the target column of
/// rows whose predictions are to be scored.
pub fn read_text_column(path: &Path, name: &str) -> Result<Vec<String>> {
    column_text(&read_table(path)?, name)
}

/// A column of `df` as text (a missing cell as an empty string).
pub(crate) fn column_text(df: &DataFrame, name: &str) -> Result<Vec<String>> {
    let c = df
        .column(name)
        .ctx(|| name.to_string())?
        .cast(&DataType::String)
        .ctx(|| name.to_string())?;
    Ok(c.str()
        .ctx(|| name.to_string())?
        .iter()
        .map(|v| v.unwrap_or("").to_string())
        .collect())
}

/// One output column.
#[derive(Debug, Clone, PartialEq)]
pub enum OutColumn {
    /// Text (predicted labels).
    Text(Vec<String>),
    /// Numbers (probabilities, regression predictions).
    Number(Vec<f32>),
}

/// An output table written batch by batch, `.csv` or `.parquet` by its extension, and
/// atomically: into a temporary file beside it (`<name>.<ext>.partial`), renamed over
/// `path` by [`TableWriter::finish`]. Dropped unfinished (an error on the way), the
/// temporary file is removed and `path` is untouched.
pub struct TableWriter {
    path: std::path::PathBuf,
    tmp: std::path::PathBuf,
    /// A second handle of the temporary file, to flush it to disk at the end.
    file: std::fs::File,
    /// The format's writer, created at the first batch (it needs the schema).
    writer: Option<Batched>,
    /// The writer's file handle until then.
    pending: Option<std::fs::File>,
    csv: bool,
}

enum Batched {
    Csv(polars::io::csv::write::BatchedWriter<std::fs::File>),
    Parquet(Box<polars::io::parquet::write::BatchedWriter<std::fs::File>>),
}

impl TableWriter {
    /// Creates the temporary file; an extension other than `.csv` / `.parquet` is an
    /// error.
    pub fn create(path: &Path) -> Result<TableWriter> {
        let ext = extension(path);
        if ext != "csv" && ext != "parquet" {
            return Err(invalid(format!(
                "{}: unknown output format `.{ext}`; use .csv or .parquet",
                path.display()
            )));
        }
        let tmp = path.with_extension(format!("{ext}.partial"));
        let io = |source| PreprocessError::Io {
            path: tmp.clone(),
            source,
        };
        let pending = std::fs::File::create(&tmp).map_err(io)?;
        let file = pending.try_clone().map_err(io)?;
        Ok(TableWriter {
            path: path.to_path_buf(),
            tmp,
            file,
            writer: None,
            pending: Some(pending),
            csv: ext == "csv",
        })
    }

    /// Appends rows: named columns of one length (the same names every time).
    pub fn write(&mut self, columns: Vec<(String, OutColumn)>) -> Result<()> {
        let n = columns.first().map_or(0, |(_, c)| match c {
            OutColumn::Text(v) => v.len(),
            OutColumn::Number(v) => v.len(),
        });
        let cols: Vec<Column> = columns
            .into_iter()
            .map(|(name, c)| match c {
                OutColumn::Text(v) => Column::new(name.into(), v),
                OutColumn::Number(v) => Column::new(name.into(), v),
            })
            .collect();
        let df = DataFrame::new(n, cols).ctx(|| "building the output table".into())?;
        let shown = || self.path.display().to_string();
        if let Some(file) = self.pending.take() {
            let schema = df.schema();
            self.writer = Some(if self.csv {
                Batched::Csv(CsvWriter::new(file).batched(schema).ctx(shown)?)
            } else {
                Batched::Parquet(Box::new(
                    ParquetWriter::new(file).batched(schema).ctx(shown)?,
                ))
            });
        }
        match &mut self.writer {
            Some(Batched::Csv(w)) => w.write_batch(&df).ctx(shown),
            Some(Batched::Parquet(w)) => w.write_batch(&df).ctx(shown),
            None => Ok(()),
        }
    }

    /// Ends the file (a table with no batch is an error: it would have no columns),
    /// flushes it to disk and renames it over `path`.
    pub fn finish(mut self) -> Result<()> {
        let shown = || self.path.display().to_string();
        match &mut self.writer {
            Some(Batched::Csv(w)) => w.finish().ctx(shown)?,
            Some(Batched::Parquet(w)) => {
                w.finish().ctx(shown)?;
            }
            None => {
                return Err(invalid(format!(
                    "{}: no rows to write",
                    self.path.display()
                )));
            }
        }
        self.writer = None;
        self.file.sync_all().map_err(|source| PreprocessError::Io {
            path: self.tmp.clone(),
            source,
        })?;
        std::fs::rename(&self.tmp, &self.path).map_err(|source| PreprocessError::Io {
            path: self.path.clone(),
            source,
        })?;
        // renamed: nothing left for `drop` to remove
        self.tmp = std::path::PathBuf::new();
        Ok(())
    }
}

impl Drop for TableWriter {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            std::fs::remove_file(&self.tmp).ok();
        }
    }
}

/// Writes named columns to `path` (`.csv` or `.parquet`) in one batch, atomically.
pub fn write_table(path: &Path, columns: Vec<(String, OutColumn)>) -> Result<()> {
    let mut w = TableWriter::create(path)?;
    w.write(columns)?;
    w.finish()
}
