//! Loading a source into a `Frame`: one file, a glob of files stacked in name order, or
//! MNIST IDX files (pixels straight into rows), with the files a source reads listed for
//! the stage's cache key.

use crate::error::{PolarsContext, PreprocessError, Result};
use crate::{ColumnType, Config, Source, frame::*, idx, table};
use polars::prelude::*;
use std::path::{Path, PathBuf};

/// The main source, the test source if any, and the image layout an IDX source gives.
pub(crate) type Loaded = (Frame, Option<Frame>, Option<[usize; 2]>);

pub(crate) fn load(config: &Config) -> Result<Loaded> {
    let tabular = |path: &Option<PathBuf>,
                   train: &Option<PathBuf>,
                   test: &Option<PathBuf>,
                   read: &dyn Fn(&Path) -> Result<DataFrame>|
     -> Result<Loaded> {
        let read = |p: &Path| -> Result<Frame> {
            let files = expand(p)?;
            let _span = tracing::info_span!("read", files = files.len()).entered();
            Frame::stack(
                files
                    .into_iter()
                    .map(|f| Ok((read(&f)?, f)))
                    .collect::<Result<Vec<_>>>()?,
            )
        };
        match (path, train, test) {
            (Some(p), None, None) => Ok((read(p)?, None, None)),
            (None, Some(tr), te) => Ok((read(tr)?, te.as_deref().map(read).transpose()?, None)),
            _ => Err(PreprocessError::Invalid(
                "source: give either `path`, or `train` (and optionally `test`)".into(),
            )),
        }
    };
    match &config.source {
        Source::Csv {
            path,
            train,
            test,
            delimiter,
            has_header,
            null_values,
        } => {
            let text: Vec<&str> = config
                .column_types
                .iter()
                .filter(|(_, t)| **t == ColumnType::Text)
                .map(|(c, _)| c.as_str())
                .collect();
            tabular(path, train, test, &|p| {
                read_csv(p, *delimiter, *has_header, null_values, &text)
            })
        }
        Source::Parquet { path, train, test } => tabular(path, train, test, &table::read_parquet),
        Source::Arrow { path, train, test } => tabular(path, train, test, &table::read_ipc),
        Source::Images {
            path,
            train,
            test,
            image,
            channels,
            skip_unreadable,
        } => {
            let read =
                |d: &Path| crate::images::read_images_frame(d, *image, *channels, *skip_unreadable);
            let (main, test) = match (path, train, test) {
                (Some(p), None, None) => (read(p)?, None),
                (None, Some(tr), Some(te)) => (read(tr)?, Some(read(te)?)),
                _ => {
                    return Err(PreprocessError::Invalid(
                        "an images source takes `path` (one folder to split) or `train` and `test` folders".into(),
                    ));
                }
            };
            // augmentation shifts and turns one plane of [height, width]
            Ok((main, test, (*channels == 1).then_some(*image)))
        }
        Source::Idx { train, test } => {
            let (df, layout) = read_idx_frame(train)?;
            let test = test
                .as_deref()
                .map(|t| -> Result<Frame> { Ok(read_idx_frame(t)?.0) })
                .transpose()?;
            Ok((df, test, Some(layout)))
        }
    }
}

/// True when `p` holds a glob pattern (`*`, `?` or `[`).
pub(crate) fn is_glob(p: &Path) -> bool {
    p.to_string_lossy().contains(['*', '?', '['])
}

/// The files a source path names: itself, or the files its glob matches in name order
/// (an error when none does).
pub(crate) fn expand(p: &Path) -> Result<Vec<PathBuf>> {
    if !is_glob(p) {
        return Ok(vec![p.to_path_buf()]);
    }
    let pattern = p.to_string_lossy();
    let paths = glob::glob(&pattern).map_err(|e| {
        PreprocessError::Invalid(format!("{pattern}: not a valid glob pattern: {e}"))
    })?;
    let mut files = Vec::new();
    for entry in paths {
        let f = entry.map_err(|e| PreprocessError::Io {
            path: e.path().to_path_buf(),
            source: std::io::Error::new(e.error().kind(), e.error().to_string()),
        })?;
        if f.is_file() {
            files.push(f);
        }
    }
    if files.is_empty() {
        return Err(PreprocessError::Invalid(format!(
            "{pattern}: no file matches this pattern; check the `source` path"
        )));
    }
    files.sort();
    Ok(files)
}

/// Every file a source reads (globs expanded, IDX prefixes completed), for the stage's
/// cache key; a path that names no file is the error reading it would give.
pub fn source_files(source: &Source) -> Result<Vec<PathBuf>> {
    let mut s = source.clone();
    let is_idx = matches!(s, Source::Idx { .. });
    let mut out = Vec::new();
    if let Source::Images { .. } = s {
        for p in s.paths_mut() {
            for (_, files) in crate::images::class_files(p)? {
                out.extend(files);
            }
        }
        return Ok(out);
    }
    for p in s.paths_mut() {
        if is_idx {
            let (a, b) = idx::idx_pair(p)?;
            out.extend([a, b]);
        } else {
            out.extend(expand(p)?);
        }
    }
    Ok(out)
}

pub(crate) fn column_names(df: &DataFrame) -> Vec<String> {
    df.get_column_names()
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// The checks before polars reads a CSV file (it exists and is not empty, the delimiter
/// is one ASCII character, the header's names and every row's field count); returns the
/// number of data rows.
pub(crate) fn check_csv(path: &Path, delimiter: char, has_header: bool) -> Result<usize> {
    let meta = std::fs::metadata(path).map_err(|source| PreprocessError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.len() == 0 {
        return Err(PreprocessError::Invalid(format!(
            "{}: the file is empty",
            path.display()
        )));
    }
    if !delimiter.is_ascii() {
        return Err(PreprocessError::Invalid(format!(
            "csv delimiter `{delimiter}` must be a single ASCII character"
        )));
    }
    crate::csv_shape::check(path, delimiter as u8, has_header)
}

/// Reads a CSV file with polars; `text` columns are read as text (so `007` stays
/// `007`), the others' types are inferred.
pub(crate) fn read_csv(
    path: &Path,
    delimiter: char,
    has_header: bool,
    null_values: &[String],
    text: &[&str],
) -> Result<DataFrame> {
    check_csv(path, delimiter, has_header)?;
    let nulls = (!null_values.is_empty())
        .then(|| NullValues::AllColumns(null_values.iter().map(|s| s.as_str().into()).collect()));
    let overwrite = (!text.is_empty()).then(|| {
        Arc::new(polars::prelude::Schema::from_iter(
            text.iter()
                .map(|c| Field::new((*c).into(), DataType::String)),
        ))
    });
    let reader = CsvReadOptions::default()
        .with_has_header(has_header)
        .with_schema_overwrite(overwrite)
        .with_infer_schema_length(Some(10_000))
        .with_parse_options(
            CsvParseOptions::default()
                .with_separator(delimiter as u8)
                .with_null_values(nulls),
        )
        .try_into_reader_with_file_path(Some(path.to_path_buf()))
        .ctx(|| format!("{}", path.display()))?;
    let df = table::guarded(path, "csv", || reader.finish())?
        .ctx(|| format!("{}: could not parse as csv", path.display()))?;
    if df.height() == 0 {
        return Err(PreprocessError::Invalid(format!(
            "{}: the file has a header but no rows",
            path.display()
        )));
    }
    Ok(df)
}

/// The IDX pair at `prefix`: a frame of `label` with the pixels (`pixel_0` …) held
/// row-major beside it, and the image layout `[rows, cols]`.
pub(crate) fn read_idx_frame(prefix: &Path) -> Result<(Frame, [usize; 2])> {
    let (img_path, lab_path) = idx::idx_pair(prefix)?;
    let images = idx::read_idx(&img_path)?;
    let labels = idx::read_idx(&lab_path)?;
    if images.dims.len() != 3 || labels.dims.len() != 1 {
        return Err(PreprocessError::Idx {
            path: img_path,
            message: format!(
                "expected images [n, rows, cols] and labels [n], got {:?} and {:?}",
                images.dims, labels.dims
            ),
        });
    }
    let n = images.dims[0];
    if labels.dims[0] != n {
        return Err(PreprocessError::Idx {
            path: lab_path,
            message: format!("{} labels for {} images", labels.dims[0], n),
        });
    }
    let w = images.dims[1] * images.dims[2];
    let label = Column::new(
        "label".into(),
        labels
            .data
            .iter()
            .map(|&l| i32::from(l))
            .collect::<Vec<i32>>(),
    );
    let df = DataFrame::new(n, vec![label])
        .ctx(|| format!("{}: building the frame", lab_path.display()))?;
    let mut frame = Frame::new(df, prefix);
    frame.dense = Some(Dense {
        names: (0..w).map(|j| format!("pixel_{j}")).collect(),
        raw: images.data.iter().map(|&p| f32::from(p)).collect(),
    });
    Ok((frame, [images.dims[1], images.dims[2]]))
}

pub(crate) fn is_numeric(dt: &DataType) -> bool {
    dt.is_primitive_numeric() || matches!(dt, DataType::Boolean)
}
