//! Reading a table in bounded memory: a CSV file block by block (`csv_blocks`), a Parquet
//! or Arrow IPC file through polars' streaming engine, its rows handed over in chunks, in
//! file order, each converted as [`crate::table::read_rows_with_text`] converts a whole
//! table (the same checks, and errors naming the file's own row).
//!
//! The reading runs on its own thread and decodes ahead while the caller works on a
//! chunk; a channel of two chunks bounds what is held, so memory does not grow with the
//! file.

use crate::csv_blocks::{self, Blocks};
use crate::error::{PolarsContext, PreprocessError, Result};
use crate::table::{self, RawRows};
use polars::prelude::*;
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::mpsc;

/// Chunks decoded ahead of the one being used.
const AHEAD: usize = 2;

/// One chunk of rows.
#[derive(Debug)]
pub struct Chunk {
    /// The file's row (0-based, header excluded) where the chunk begins.
    pub first_row: usize,
    /// Its rows (`extra` and `columns` are empty: they are in [`Header`]).
    pub rows: RawRows,
    /// The target column as text (a missing cell as ""), when asked for and present.
    pub target: Option<Vec<String>>,
}

/// What a scan found besides the rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    /// The file's own column names, in file order.
    pub columns: Vec<String>,
    /// Columns that were not asked for (ignored).
    pub extra: Vec<String>,
    /// Rows in the file, known before the first chunk when the format tells (Parquet and
    /// Arrow metadata, the CSV check's own pass).
    pub rows: Option<usize>,
}

/// How a CSV file is read: its delimiter and the cells that are null.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvFormat {
    /// The field delimiter (one ASCII character).
    pub delimiter: u8,
    /// Cells read as null in every column (empty: polars' own rule, an empty cell).
    pub null_values: Vec<String>,
}

impl Default for CsvFormat {
    /// `,`, and `NA` and empty cells null (what `kiln predict` reads).
    fn default() -> Self {
        CsvFormat {
            delimiter: b',',
            null_values: vec!["NA".into(), String::new()],
        }
    }
}

impl CsvFormat {
    fn nulls(&self) -> Option<NullValues> {
        (!self.null_values.is_empty()).then(|| {
            NullValues::AllColumns(self.null_values.iter().map(|s| s.as_str().into()).collect())
        })
    }
}

/// The columns of a table file and their types as polars infers them (a CSV's from its
/// first 10,000 rows), without reading it.
pub(crate) fn infer_types(path: &Path, csv: &CsvFormat) -> Result<Vec<(String, DataType)>> {
    let format = format_of(path)?;
    let mut frame = lazy(path, format, &[], csv)?;
    let schema = schema_of(path, &mut frame, what(format))?;
    Ok(schema
        .iter()
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect())
}

/// The first `rows` rows of a table file (`text` columns read as text), as polars reads
/// a whole table.
pub(crate) fn head(
    path: &Path,
    rows: usize,
    text: &[String],
    csv: &CsvFormat,
) -> Result<DataFrame> {
    let format = format_of(path)?;
    let frame = lazy(path, format, text, csv)?.limit(rows as IdxSize);
    table::guarded(path, what(format), || frame.collect())?
        .ctx(|| format!("{}: could not read as {}", path.display(), what(format)))
}

/// A streaming scan of one table file.
pub struct Scan<'a> {
    path: &'a Path,
    wanted: &'a [String],
    text: &'a [String],
    target: Option<&'a str>,
    chunk_rows: NonZeroUsize,
    source: Source,
    header: Header,
    csv: CsvFormat,
}

/// How a scan reads its file.
enum Source {
    /// A CSV file in blocks, parsed with the file's columns and these types.
    Csv(SchemaRef),
    /// A Parquet or Arrow IPC file through polars' streaming engine.
    Engine(Box<LazyFrame>),
}

/// The formats a table file may have, by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Csv,
    Parquet,
    Ipc,
}

fn invalid(m: String) -> PreprocessError {
    PreprocessError::Invalid(m)
}

fn format_of(path: &Path) -> Result<Format> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "csv" => Ok(Format::Csv),
        "parquet" => Ok(Format::Parquet),
        "arrow" | "ipc" | "feather" => Ok(Format::Ipc),
        other => Err(invalid(format!(
            "{}: unknown table format `.{other}`; use .csv, .parquet or .arrow",
            path.display()
        ))),
    }
}

/// The lazy scan of `path` (no glob expansion: the path is one file); a CSV's `text`
/// columns are read as text.
fn lazy(path: &Path, format: Format, text: &[String], csv: &CsvFormat) -> Result<LazyFrame> {
    let shown = || path.display().to_string();
    let p = PlRefPath::try_from_path(path).ctx(shown)?;
    match format {
        Format::Csv => {
            let overwrite = Schema::from_iter(
                text.iter()
                    .map(|c| Field::new(c.as_str().into(), DataType::String)),
            );
            LazyCsvReader::new(p)
                .with_has_header(true)
                .with_glob(false)
                .with_separator(csv.delimiter)
                .with_infer_schema_length(Some(10_000))
                .with_null_values(csv.nulls())
                .with_dtype_overwrite((!overwrite.is_empty()).then(|| Arc::new(overwrite)))
                .finish()
                .ctx(shown)
        }
        Format::Parquet => LazyFrame::scan_parquet(
            p,
            ScanArgsParquet {
                glob: false,
                ..Default::default()
            },
        )
        .ctx(shown),
        Format::Ipc => LazyFrame::scan_ipc(
            p,
            Default::default(),
            UnifiedScanArgs {
                glob: false,
                ..Default::default()
            },
        )
        .ctx(shown),
    }
}

/// The lazy frame's schema (a panic inside polars becomes an error).
fn schema_of(path: &Path, frame: &mut LazyFrame, what: &str) -> Result<SchemaRef> {
    table::guarded(path, what, || frame.collect_schema())?
        .ctx(|| format!("{}: could not read as {what}", path.display()))
}

fn what(format: Format) -> &'static str {
    match format {
        Format::Csv => "csv",
        Format::Parquet => "parquet",
        Format::Ipc => "Arrow IPC",
    }
}

impl<'a> Scan<'a> {
    /// Opens `path` (`.csv` with a header row, `NA` and empty cells null; `.parquet`;
    /// `.arrow` / `.ipc` / `.feather`) and checks that it holds every `wanted` column
    /// (`text` ones, a subset, read as text). `target`, when the file has it, comes with
    /// each chunk as text.
    pub fn open(
        path: &'a Path,
        wanted: &'a [String],
        text: &'a [String],
        target: Option<&'a str>,
        chunk_rows: usize,
    ) -> Result<Scan<'a>> {
        Self::open_with(path, wanted, text, target, chunk_rows, CsvFormat::default())
    }

    /// [`Scan::open`] with a CSV file read as `csv` says.
    pub fn open_with(
        path: &'a Path,
        wanted: &'a [String],
        text: &'a [String],
        target: Option<&'a str>,
        chunk_rows: usize,
        csv: CsvFormat,
    ) -> Result<Scan<'a>> {
        Self::open_checked(path, wanted, text, target, chunk_rows, csv, None)
    }

    /// [`Scan::open_with`] of a file whose CSV shape was checked already (`rows`: the
    /// rows the check counted; None checks it now).
    pub(crate) fn open_checked(
        path: &'a Path,
        wanted: &'a [String],
        text: &'a [String],
        target: Option<&'a str>,
        chunk_rows: usize,
        csv: CsvFormat,
        rows: Option<usize>,
    ) -> Result<Scan<'a>> {
        if !path.is_file() {
            return Err(PreprocessError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        let format = format_of(path)?;
        let rows = match (format, rows) {
            (Format::Csv, None) => Some(crate::load::check_csv(
                path,
                char::from(csv.delimiter),
                true,
            )?),
            (_, rows) => rows,
        };
        let mut frame = lazy(path, format, text, &csv)?;
        let schema = schema_of(path, &mut frame, what(format))?;
        let columns: Vec<String> = schema.iter_names().map(|n| n.to_string()).collect();
        let extra = table::check_columns(path, &columns, wanted)?;
        let source = match format {
            // the types inferred from the first rows, but the model's number columns that
            // hold numbers there are read as f64 (a later bad cell is an error naming it,
            // not a column turned text) and the target as text
            Format::Csv => Source::Csv(Arc::new(
                schema
                    .iter()
                    .map(|(name, t)| {
                        let n = name.as_str();
                        let t = if target == Some(n) && !wanted.iter().any(|w| w == n) {
                            DataType::String
                        } else if wanted.iter().any(|w| w == n)
                            && !text.iter().any(|w| w == n)
                            && t.is_primitive_numeric()
                        {
                            DataType::Float64
                        } else {
                            t.clone()
                        };
                        Field::new(name.clone(), t)
                    })
                    .collect(),
            )),
            _ => Source::Engine(Box::new(frame)),
        };
        let rows = match (&source, rows) {
            (_, Some(n)) => Some(n),
            (Source::Engine(frame), None) => count(path, (**frame).clone(), what(format)),
            (Source::Csv(_), None) => None,
        };
        let target = target.filter(|t| columns.iter().any(|c| c == t));
        Ok(Scan {
            path,
            wanted,
            text,
            target,
            chunk_rows: NonZeroUsize::new(chunk_rows).unwrap_or(NonZeroUsize::MIN),
            source,
            header: Header {
                columns,
                extra,
                rows,
            },
            csv,
        })
    }

    /// The file's columns, the ones not asked for, and its row count when known.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Runs the scan, calling `each` with every chunk in file order; the first error
    /// (`each`'s, a bad cell's or the file's) stops it. An empty table is an error.
    /// Returns the number of rows.
    pub fn for_each(self, mut each: impl FnMut(Chunk) -> Result<()>) -> Result<usize> {
        let format = format_of(self.path)?;
        let mut names: Vec<String> = self.wanted.to_vec();
        if let Some(t) = self.target
            && !names.iter().any(|n| n == t)
        {
            names.push(t.to_string());
        }
        let mut first_row = 0usize;
        let handle = |df: DataFrame| -> Result<()> {
            let rows = table::rows_of(&df, self.wanted, self.text, first_row, self.path)?;
            let target = match self.target {
                Some(t) => Some(table::column_text(&df, t)?),
                None => None,
            };
            let n = rows.n_rows;
            each(Chunk {
                first_row,
                rows,
                target,
            })?;
            first_row += n;
            Ok(())
        };
        let outcome = match &self.source {
            Source::Csv(schema) => self.read_csv(schema, &names, handle),
            Source::Engine(frame) => {
                let plan = (**frame)
                    .clone()
                    .select(names.iter().map(|n| col(n.as_str())).collect::<Vec<_>>());
                run(self.path, plan, self.chunk_rows, what(format), handle)
            }
        };
        match outcome {
            Err(Failure::Engine(e) | Failure::Caller(e)) => Err(e),
            Ok(()) if first_row == 0 => Err(invalid(format!(
                "{}: {}",
                self.path.display(),
                if format == Format::Csv {
                    "the file has a header but no rows"
                } else {
                    "the table has no rows"
                }
            ))),
            Ok(()) => Ok(first_row),
        }
    }

    /// Reads the CSV file block by block on another thread (each block parsed into the
    /// `names` columns of `schema`, cut into chunks) and calls `each` with the chunks, in
    /// order, on this one.
    fn read_csv(
        &self,
        schema: &SchemaRef,
        names: &[String],
        mut each: impl FnMut(DataFrame) -> Result<()>,
    ) -> std::result::Result<(), Failure> {
        let (send, recv) = mpsc::sync_channel::<Result<DataFrame>>(AHEAD);
        let path = self.path;
        let chunk = self.chunk_rows.get();
        std::thread::scope(|s| {
            s.spawn(move || {
                let mut blocks = match Blocks::open(path, csv_blocks::BLOCK_BYTES) {
                    Ok(b) => b,
                    Err(source) => {
                        let _ = send.send(Err(PreprocessError::Io {
                            path: path.to_path_buf(),
                            source,
                        }));
                        return;
                    }
                };
                let mut first_row = 0usize;
                loop {
                    let df = match blocks.next_block() {
                        Ok(None) => return,
                        Ok(Some(bytes)) => self.parse_block(&bytes, schema, names, first_row),
                        Err(source) => Err(PreprocessError::Io {
                            path: path.to_path_buf(),
                            source,
                        }),
                    };
                    let df = match df {
                        Ok(df) => df,
                        Err(e) => {
                            let _ = send.send(Err(e));
                            return;
                        }
                    };
                    first_row += df.height();
                    let mut start = 0;
                    while start < df.height() {
                        let piece = df.slice(start as i64, chunk);
                        start += piece.height();
                        // a closed channel: the chunks' user stopped
                        if send.send(Ok(piece)).is_err() {
                            return;
                        }
                    }
                }
            });
            let mut outcome = Ok(());
            for df in recv.iter() {
                outcome = match df {
                    Ok(df) => each(df).map_err(Failure::Caller),
                    Err(e) => Err(Failure::Engine(e)),
                };
                if outcome.is_err() {
                    break;
                }
            }
            // closed before the scope waits for the reader: a reader blocked on a full
            // channel then stops
            drop(recv);
            outcome
        })
    }

    /// Parses one CSV block whose first record is the file's row `first_row`; when polars
    /// cannot (a cell that is not a number in a number column), the block is parsed again
    /// with those columns as text to name the cell by its row.
    fn parse_block(
        &self,
        bytes: &[u8],
        schema: &SchemaRef,
        names: &[String],
        first_row: usize,
    ) -> Result<DataFrame> {
        let path = self.path;
        let failed = match table::guarded(path, "csv", || {
            csv_blocks::parse(bytes, schema, names, &self.csv)
        })? {
            Ok(df) => return Ok(df),
            Err(e) => e,
        };
        let as_text: SchemaRef = Arc::new(
            schema
                .iter()
                .map(|(n, t)| {
                    let t = if t.is_primitive_numeric() {
                        DataType::String
                    } else {
                        t.clone()
                    };
                    Field::new(n.clone(), t)
                })
                .collect(),
        );
        if let Ok(Ok(df)) = table::guarded(path, "csv", || {
            csv_blocks::parse(bytes, &as_text, names, &self.csv)
        }) {
            table::rows_of(&df, self.wanted, self.text, first_row, path)?;
        }
        Err(invalid(format!(
            "{}: could not parse rows {}… as csv: {failed}",
            path.display(),
            first_row + 1
        )))
    }
}

/// The row count of a Parquet / Arrow scan from its metadata (None when it fails: the
/// progress bar then has no total).
fn count(path: &Path, frame: LazyFrame, what: &str) -> Option<usize> {
    let df = table::guarded(path, what, || frame.select([len()]).collect())
        .ok()?
        .ok()?;
    let c = df.column("len").ok()?.cast(&DataType::UInt64).ok()?;
    let n = c.u64().ok()?.get(0)?;
    usize::try_from(n).ok()
}

/// Why a streaming run stopped early.
enum Failure {
    /// The engine (reading or decoding the file).
    Engine(PreprocessError),
    /// The code the chunks were handed to.
    Caller(PreprocessError),
}

/// Runs `plan` on polars' streaming engine on another thread and calls `each` with its
/// chunks of at most `chunk_rows` rows, in order, on this one.
fn run(
    path: &Path,
    plan: LazyFrame,
    chunk_rows: NonZeroUsize,
    what: &str,
    mut each: impl FnMut(DataFrame) -> Result<()>,
) -> std::result::Result<(), Failure> {
    let (send, recv) = mpsc::sync_channel::<DataFrame>(AHEAD);
    let sink = plan
        .sink_batches(
            // true stops the engine: the receiver is gone (an error on this side)
            PlanCallback::new(move |df| Ok(send.send(df).is_err())),
            true,
            Some(chunk_rows),
        )
        .ctx(|| path.display().to_string())
        .map_err(Failure::Engine)?;
    let shown = path.display().to_string();
    let what = what.to_string();
    std::thread::scope(|s| {
        let engine = s.spawn(move || {
            table::guarded(std::path::Path::new(&shown), &what, || {
                sink.collect_with_engine(Engine::Streaming)
            })
            .and_then(|r| r.ctx(|| format!("{shown}: could not read as {what}")))
        });
        let mut failed = None;
        for df in recv.iter() {
            if let Err(e) = each(df) {
                failed = Some(e);
                break;
            }
        }
        // a failure here drops the receiver, and the engine stops at its next chunk
        drop(recv);
        let engine = engine.join();
        if let Some(e) = failed {
            return Err(Failure::Caller(e));
        }
        match engine {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(Failure::Engine(e)),
            Err(p) => Err(Failure::Engine(invalid(format!(
                "{}: reading it failed: {}",
                path.display(),
                kiln_core::panic_message(&p)
            )))),
        }
    })
}
