//! kiln-preprocess: loads raw data with polars (CSV, Parquet, Arrow IPC or MNIST IDX), fits preprocessing on
//! the train split only, splits with a seeded stratified shuffle, and writes the dataset
//! artifact: `train.arrow`, `valid.arrow`, `test.arrow` (Arrow IPC), `schema.json` and
//! `profile.json`.
//!
//! ```
//! use kiln_preprocess::{Config, Source, Split, Step, run};
//! let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
//! let config = Config {
//!     source: Source::Csv {
//!         path: Some(fixtures.join("iris.csv")), train: None, test: None,
//!         delimiter: ',', has_header: true, null_values: vec![],
//!     },
//!     target: "species".into(),
//!     task: None,
//!     positive_class: None,
//!     steps: vec![Step::Standardize { columns: Default::default() }],
//!     split: Split { valid: 0.2, test: Some(0.2), stratify: true },
//!     seed: 7,
//! };
//! let out_dir = std::env::temp_dir().join("kiln-preprocess-doc");
//! let out = run(&config, &out_dir).unwrap();
//! assert_eq!(out.schema.class_labels, ["setosa", "versicolor", "virginica"]);
//! assert_eq!(out.rows, [90, 30, 30]);
//! ```

mod config;
mod error;
pub mod idx;
mod split;
mod steps;
pub mod table;

pub use config::{Columns, Config, ImputeStrategy, ImputeValue, Source, Split, Step};
pub use error::{PreprocessError, Result};
pub use split::stratified_split;

use error::PolarsContext;
use kiln_core::{Dataset, Schema, Task};
use polars::prelude::*;
use serde::Serialize;
use std::path::Path;

/// What one run produced.
#[derive(Debug, Clone)]
pub struct Output {
    /// The schema written to schema.json.
    pub schema: Schema,
    /// Rows in train, valid, test.
    pub rows: [usize; 3],
    /// Rows removed before the split.
    pub dropped: DroppedRows,
}

/// profile.json: what a user checks before trusting the data.
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    /// Rows per split.
    pub rows: SplitCounts,
    /// Number of feature columns.
    pub n_features: usize,
    /// Rows per class label in the train split.
    pub train_class_counts: Vec<(String, usize)>,
    /// Per raw feature column: min, max, mean over the raw train split.
    pub columns: Vec<ColumnProfile>,
    /// Rows removed before the split, by reason.
    pub dropped_rows: DroppedRows,
}

/// Row counts of the three splits.
#[derive(Debug, Clone, Serialize)]
pub struct SplitCounts {
    /// Training rows.
    pub train: usize,
    /// Validation rows.
    pub valid: usize,
    /// Test rows.
    pub test: usize,
}

/// Summary of one raw feature column on the train split.
#[derive(Debug, Clone, Serialize)]
pub struct ColumnProfile {
    /// Column name.
    pub name: String,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Mean value.
    pub mean: f64,
    /// Missing cells.
    pub missing: usize,
}

/// Rows the stage removed before the split (profile.json `dropped_rows`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DroppedRows {
    /// Rows whose target cell is empty.
    pub null_target: usize,
    /// Rows a `drop_nulls` step removed.
    pub null_features: usize,
    /// Rows a `dedupe` step removed.
    pub duplicates: usize,
}

/// A loaded source file: its frame, its name for messages and, per frame row, the row
/// number in the file (1-based, header excluded).
struct Frame {
    df: DataFrame,
    file: String,
    rows: Vec<usize>,
}

impl Frame {
    fn new(df: DataFrame, path: &Path) -> Frame {
        let rows = (1..=df.height()).collect();
        Frame {
            df,
            file: path.display().to_string(),
            rows,
        }
    }

    /// Keeps the frame rows at `keep` (ascending).
    fn keep(&mut self, keep: &[usize]) -> Result<()> {
        let ca = IdxCa::from_vec("idx".into(), keep.iter().map(|&i| i as IdxSize).collect());
        self.df = self.df.take(&ca).ctx(|| self.file.clone())?;
        self.rows = keep.iter().map(|&i| self.rows[i]).collect();
        Ok(())
    }

    /// Drops the rows whose target is null; returns how many.
    fn drop_null_target(&mut self, target: &str) -> Result<usize> {
        let c = self
            .df
            .column(target)
            .ctx(|| format!("target `{target}`"))?;
        if c.null_count() == 0 {
            return Ok(0);
        }
        let mask = c.is_null();
        let keep: Vec<usize> = mask
            .iter()
            .enumerate()
            .filter(|(_, n)| *n != Some(true))
            .map(|(i, _)| i)
            .collect();
        if keep.is_empty() {
            return Err(PreprocessError::Invalid(format!(
                "{}: the target column `{target}` is empty in every row",
                self.file
            )));
        }
        let dropped = self.df.height() - keep.len();
        self.keep(&keep)?;
        Ok(dropped)
    }

    /// A column as text (a missing cell as an empty string).
    fn text(&self, name: &str) -> Result<Vec<String>> {
        table::column_text(&self.df, name)
    }

    /// The feature columns as row-major f32 with NaN for a missing cell. A text cell that
    /// is not a number makes its column a text column when `text` is `None` (the main
    /// source; a test source gets the main source's text columns as `text`, and a
    /// non-number cell elsewhere is an error naming file, row and column): its cells come
    /// back dictionary-encoded and its place in the rows holds placeholders (NaN where
    /// missing, the cell's dictionary code as bits elsewhere, so that row steps see
    /// equal cells as equal). A column that is empty in every row is an error too,
    /// unless `removed` (a `drop` / `select` step removes it).
    fn features(
        &self,
        features: &[String],
        removed: &[String],
        text: Option<&[String]>,
    ) -> Result<Features> {
        let n = self.df.height();
        let w = features.len();
        let mut out = vec![f32::NAN; n * w];
        let mut cells = Vec::new();
        let mut sites = std::collections::BTreeMap::new();
        for (j, name) in features.iter().enumerate() {
            let Ok(c) = self.df.column(name) else {
                return Err(PreprocessError::Invalid(format!(
                    "{}: lacks the feature column `{name}` of the train source; its columns are: {}",
                    self.file,
                    preview(
                        &self
                            .df
                            .get_column_names()
                            .iter()
                            .map(|s| s.to_string())
                            .collect::<Vec<_>>()
                    )
                )));
            };
            let skip = removed.contains(name);
            if skip {
                continue;
            }
            if c.null_count() == n {
                return Err(PreprocessError::Invalid(format!(
                    "{}: column `{name}` is empty in every row; drop it with {{ op = \"drop\", columns = [\"{name}\"] }}",
                    self.file
                )));
            }
            let given_text = text.is_some_and(|t| t.contains(name));
            if is_numeric(c.dtype()) && !given_text {
                let f = c.cast(&DataType::Float32).ctx(|| name.clone())?;
                for (i, v) in f.f32().ctx(|| name.clone())?.iter().enumerate() {
                    out[i * w + j] = v.unwrap_or(f32::NAN);
                }
                continue;
            }
            let as_text = c.cast(&DataType::String).ctx(|| name.clone())?;
            let strs = as_text.str().ctx(|| name.clone())?;
            let mut bad = None;
            if !given_text {
                for (i, v) in strs.iter().enumerate() {
                    let Some(v) = v else { continue };
                    match v.trim().parse::<f32>() {
                        Ok(x) => out[i * w + j] = x,
                        Err(_) => {
                            bad = Some((i, v.to_string()));
                            break;
                        }
                    }
                }
            }
            match (bad, text) {
                (None, _) if !given_text => continue,
                (None, _) => {}
                (Some((i, v)), Some(_)) => {
                    return Err(PreprocessError::Invalid(format!(
                        "{}: row {} column `{name}` holds `{v}`, not a number; fix the cell, list it in the source's `null_values`, or drop the column with {{ op = \"drop\", columns = [\"{name}\"] }}",
                        self.file, self.rows[i]
                    )));
                }
                (Some((i, v)), None) => {
                    sites.insert(
                        name.clone(),
                        format!(
                            "{}: row {} column `{name}` holds `{v}`",
                            self.file, self.rows[i]
                        ),
                    );
                }
            }
            let col = kiln_core::TextColumn::from_cells(strs.iter());
            for (i, &code) in col.codes.iter().enumerate() {
                out[i * w + j] = if code == kiln_core::encode::MISSING {
                    f32::NAN
                } else {
                    f32::from_bits(code)
                };
            }
            cells.push((name.clone(), col));
        }
        Ok(Features {
            raw: out,
            cells,
            sites,
        })
    }
}

/// The feature columns of a frame: row-major numbers (placeholders at text columns),
/// the text columns' cells, and where each text column first holds a non-number.
struct Features {
    raw: Vec<f32>,
    cells: Vec<(String, kiln_core::TextColumn)>,
    sites: std::collections::BTreeMap<String, String>,
}

/// Per column, where its first missing cell is (`file: row N`), over `frames` in order.
fn null_sites(
    frames: &[(&Frame, &[f32])],
    features: &[String],
) -> std::collections::BTreeMap<String, String> {
    let w = features.len();
    let mut out = std::collections::BTreeMap::new();
    for (f, raw) in frames {
        for (j, name) in features.iter().enumerate() {
            if out.contains_key(name) {
                continue;
            }
            if let Some(i) = raw.iter().skip(j).step_by(w).position(|x| x.is_nan()) {
                out.insert(name.clone(), format!("{}: row {}", f.file, f.rows[i]));
            }
        }
    }
    out
}

fn gather(raw: &[f32], w: usize, idx: &[u32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(idx.len() * w);
    for &i in idx {
        out.extend_from_slice(&raw[i as usize * w..(i as usize + 1) * w]);
    }
    out
}

/// Runs the stage: load, split, fit on train, transform, write the artifact into `out_dir`.
/// Nothing is written when any check fails.
pub fn run(config: &Config, out_dir: &Path) -> Result<Output> {
    let _span = tracing::info_span!("preprocess").entered();
    if let Some((key, msg)) = config.problems().into_iter().next() {
        return Err(PreprocessError::Invalid(format!("{key}: {msg}")));
    }
    let (mut main, mut test_src) = load(config)?;
    tracing::info!(rows = main.df.height(), columns = main.df.width(), "loaded");
    let target = config.target.as_str();
    let names: Vec<String> = main
        .df
        .get_column_names()
        .iter()
        .map(|s| s.to_string())
        .collect();
    if !names.iter().any(|n| n == target) {
        return Err(PreprocessError::Invalid(format!(
            "target column `{target}` not found{}; columns are: {}",
            kiln_core::nearest(target, &names)
                .map(|n| format!(" (did you mean `{n}`?)"))
                .unwrap_or_default(),
            preview(&names)
        )));
    }
    let features: Vec<String> = names.iter().filter(|n| *n != target).cloned().collect();
    if features.is_empty() {
        return Err(PreprocessError::Invalid(
            "the data has no feature columns besides the target".into(),
        ));
    }
    let w = features.len();
    let removed = steps::removed_columns(&config.steps, &features);
    let mut dropped = DroppedRows {
        null_target: main.drop_null_target(target)?,
        ..Default::default()
    };
    if let Some(t) = &mut test_src {
        dropped.null_target += t.drop_null_target(target)?;
    }
    if dropped.null_target > 0 {
        tracing::info!(rows = dropped.null_target, "dropped rows without a target");
    }
    let Features {
        raw: mut main_raw,
        cells: mut main_cells,
        sites,
    } = main.features(&features, &removed, None)?;
    let text = steps::Text { sites };
    let text_names: Vec<String> = main_cells.iter().map(|(n, _)| n.clone()).collect();
    let (mut test_raw, mut test_cells) = match test_src.as_ref() {
        Some(t) => {
            let f = t.features(&features, &removed, Some(&text_names))?;
            (Some(f.raw), f.cells)
        }
        None => (None, Vec::new()),
    };
    if !text_names.is_empty() {
        tracing::info!(columns = ?text_names, "text columns");
    }
    // Row steps (drop_nulls, dedupe) on the raw tables, before the split.
    let mut row_steps = |f: &mut Frame,
                         raw: &mut Vec<f32>,
                         cells: &mut Vec<(String, kiln_core::TextColumn)>|
     -> Result<()> {
        if !config
            .steps
            .iter()
            .any(|s| matches!(s, Step::DropNulls { .. } | Step::Dedupe {}))
        {
            return Ok(());
        }
        let y = f.text(target)?;
        let (keep, [nulls, dups]) = steps::row_steps(&config.steps, raw, &features, &y, &text)?;
        dropped.null_features += nulls;
        dropped.duplicates += dups;
        if keep.len() < y.len() {
            if keep.is_empty() {
                return Err(PreprocessError::Invalid(format!(
                    "{}: drop_nulls / dedupe removed every row; impute instead",
                    f.file
                )));
            }
            f.keep(&keep)?;
            let idx: Vec<u32> = keep.iter().map(|&i| i as u32).collect();
            *raw = gather(raw, w, &idx);
            for (_, c) in cells.iter_mut() {
                *c = c.take(&idx);
            }
        }
        Ok(())
    };
    row_steps(&mut main, &mut main_raw, &mut main_cells)?;
    if let (Some(t), Some(r)) = (&mut test_src, &mut test_raw) {
        row_steps(t, r, &mut test_cells)?;
    }
    if dropped.null_features + dropped.duplicates > 0 {
        tracing::info!(
            null_features = dropped.null_features,
            duplicates = dropped.duplicates,
            "row steps dropped rows"
        );
    }
    let mut sites_in = vec![(&main, main_raw.as_slice())];
    if let (Some(t), Some(r)) = (&test_src, &test_raw) {
        sites_in.push((t, r.as_slice()));
    }
    let nulls = null_sites(&sites_in, &features);
    let test_df = test_src.as_ref().map(|t| &t.df);
    let main_df = &main.df;

    // Target -> class indices (labels sorted numerically when they are numbers), or
    // regression values.
    let task = match (&config.positive_class, config.task) {
        (Some(_), _) => Some(Task::Classification),
        (None, t) => t,
    };
    let main_target = encode_target(main_df, target, task)?;
    let task = main_target.task();
    let (class_labels, labels, values) = match main_target {
        Target::Classes { labels: l, names } => (names, l, Vec::new()),
        Target::Values(v) => (Vec::new(), vec![0u32; v.len()], v),
    };
    let mut test_labels = match (test_df, task) {
        (Some(t), Task::Classification) => Some(map_labels(t, target, &class_labels)?),
        _ => None,
    };
    // One class against the rest: `not <value>` = 0, `<value>` = 1.
    let (class_labels, labels) = match &config.positive_class {
        Some(pos) => {
            let Some(p) = class_labels.iter().position(|c| c == pos) else {
                return Err(PreprocessError::Invalid(format!(
                    "positive_class `{pos}` is not a value of target `{target}`{}; its values are: {}",
                    kiln_core::nearest(pos, &class_labels)
                        .map(|n| format!(" (did you mean `{n}`?)"))
                        .unwrap_or_default(),
                    preview(&class_labels)
                )));
            };
            let bin =
                |l: &[u32]| -> Vec<u32> { l.iter().map(|&x| u32::from(x as usize == p)).collect() };
            test_labels = test_labels.map(|t| bin(&t));
            (vec![format!("not {pos}"), pos.clone()], bin(&labels))
        }
        None => (class_labels, labels),
    };
    let test_target = match test_df {
        Some(t) => Some(match test_labels {
            Some(labels) => Target::Classes {
                labels,
                names: class_labels.clone(),
            },
            None => encode_target(t, target, Some(Task::Regression))?,
        }),
        None => None,
    };
    // the frames are not needed any more: their features and targets are extracted
    let test_df = test_df.map(|_| ());
    drop((main, test_src));

    // Split the main source (regression: one stratum).
    let test_frac = match (test_df, config.split.test) {
        (Some(_), Some(f)) if f > 0.0 => {
            return Err(PreprocessError::Invalid(format!(
                "split.test = {f} but the source already has a test set; remove one of them"
            )));
        }
        (Some(_), _) => 0.0,
        (None, f) => f.unwrap_or(0.2),
    };
    let [tr, va, te] = split::stratified_split(
        &labels,
        class_labels.len().max(1),
        config.split.valid,
        test_frac,
        config.split.stratify && task == Task::Classification,
        config.seed,
    )?;
    let pick = |idx: &[u32]| -> Target {
        match task {
            Task::Classification => Target::Classes {
                labels: idx.iter().map(|&i| labels[i as usize]).collect(),
                names: Vec::new(),
            },
            Task::Regression => Target::Values(idx.iter().map(|&i| values[i as usize]).collect()),
        }
    };
    let take = |idx: &[u32]| -> Vec<(String, kiln_core::TextColumn)> {
        main_cells
            .iter()
            .map(|(n, c)| (n.clone(), c.take(idx)))
            .collect()
    };
    let train_raw = gather(&main_raw, w, &tr);
    let valid_raw = gather(&main_raw, w, &va);
    let (train_cells, valid_cells) = (take(&tr), take(&va));
    let (test_raw, test_cells, test_target) = match (test_raw, test_target) {
        (Some(r), Some(l)) => (r, test_cells, l),
        _ => (gather(&main_raw, w, &te), take(&te), pick(&te)),
    };
    drop((main_raw, main_cells));

    // Fit on train, in the order written; every split goes through Schema::apply.
    let (transforms, feature_names, train_x) = steps::fit(
        &config.steps,
        &train_raw,
        &features,
        &nulls,
        &train_cells,
        &text,
    )?;
    let profile_cols = profile_columns(&train_raw, &features, &train_cells);
    let schema = Schema {
        version: 1,
        input_columns: features.clone(),
        feature_names: feature_names.clone(),
        target: target.to_string(),
        task,
        class_labels: class_labels.clone(),
        transforms,
    };
    let make = |x: Vec<f32>, t: Target, split: &str| -> Result<Dataset> {
        let (labels, values) = match t {
            Target::Classes { labels, .. } => (labels, Vec::new()),
            Target::Values(v) => (Vec::new(), v),
        };
        let fw = feature_names.len();
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(PreprocessError::Invalid(format!(
                "the {split} split's feature `{}` is {} in one of its rows after the steps; check the steps (log1p of values at or below -1, a missing value that no impute fills)",
                feature_names[i % fw],
                x[i]
            )));
        }
        let ds = Dataset {
            feature_names: feature_names.clone(),
            target: target.to_string(),
            features: x,
            labels,
            values,
        };
        ds.validate()?;
        Ok(ds)
    };
    // the train features are what fitting left (Schema::apply's very operations); the
    // other splits go through Schema::apply
    drop((train_raw, train_cells));
    let train = make(train_x, pick(&tr), "train")?;
    let valid = make(
        schema.apply_with_text(&valid_raw, valid_cells)?,
        pick(&va),
        "valid",
    )?;
    drop(valid_raw);
    let test = make(
        schema.apply_with_text(&test_raw, test_cells)?,
        test_target,
        "test",
    )?;
    drop(test_raw);
    if train.n_rows() == 0 || test.n_rows() == 0 {
        return Err(PreprocessError::Invalid(format!(
            "the split left {} train and {} test rows; use more data or smaller split fractions",
            train.n_rows(),
            test.n_rows()
        )));
    }

    std::fs::create_dir_all(out_dir).map_err(|source| PreprocessError::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;
    train.write_ipc(&out_dir.join("train.arrow"))?;
    valid.write_ipc(&out_dir.join("valid.arrow"))?;
    test.write_ipc(&out_dir.join("test.arrow"))?;
    let mut counts = vec![0usize; class_labels.len()];
    for &l in &train.labels {
        counts[l as usize] += 1;
    }
    let profile = Profile {
        rows: SplitCounts {
            train: train.n_rows(),
            valid: valid.n_rows(),
            test: test.n_rows(),
        },
        n_features: feature_names.len(),
        train_class_counts: class_labels.iter().cloned().zip(counts).collect(),
        columns: profile_cols,
        dropped_rows: dropped.clone(),
    };
    kiln_core::write_json(&out_dir.join("profile.json"), &profile)?;
    kiln_core::write_json(&out_dir.join("schema.json"), &schema)?;
    tracing::info!(
        train = train.n_rows(),
        valid = valid.n_rows(),
        test = test.n_rows(),
        "split written"
    );
    Ok(Output {
        schema,
        rows: [train.n_rows(), valid.n_rows(), test.n_rows()],
        dropped,
    })
}

/// Reads the dataset artifact written by [`run`]: schema plus the three splits.
pub fn read_artifact(dir: &Path) -> Result<(Schema, [Dataset; 3])> {
    let schema: Schema = kiln_core::read_json(&dir.join("schema.json"))?;
    let read = |n: &str| Dataset::read_ipc(&dir.join(format!("{n}.arrow")), &schema.target);
    Ok((
        schema.clone(),
        [read("train")?, read("valid")?, read("test")?],
    ))
}

fn load(config: &Config) -> Result<(Frame, Option<Frame>)> {
    match &config.source {
        Source::Csv {
            path,
            train,
            test,
            delimiter,
            has_header,
            null_values,
        } => {
            let read = |p: &Path| -> Result<Frame> {
                Ok(Frame::new(
                    read_csv(p, *delimiter, *has_header, null_values)?,
                    p,
                ))
            };
            match (path, train, test) {
                (Some(p), None, None) => Ok((read(p)?, None)),
                (None, Some(tr), te) => Ok((read(tr)?, te.as_deref().map(read).transpose()?)),
                _ => Err(PreprocessError::Invalid(
                    "csv source: give either `path`, or `train` (and optionally `test`)".into(),
                )),
            }
        }
        Source::Parquet { path } => Ok((Frame::new(table::read_parquet(path)?, path), None)),
        Source::Arrow { path } => Ok((Frame::new(table::read_ipc(path)?, path), None)),
        Source::Idx { train, test } => Ok((
            Frame::new(read_idx_frame(train)?, train),
            test.as_deref()
                .map(|t| -> Result<Frame> { Ok(Frame::new(read_idx_frame(t)?, t)) })
                .transpose()?,
        )),
    }
}

pub(crate) fn read_csv(
    path: &Path,
    delimiter: char,
    has_header: bool,
    null_values: &[String],
) -> Result<DataFrame> {
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
    let nulls = (!null_values.is_empty())
        .then(|| NullValues::AllColumns(null_values.iter().map(|s| s.as_str().into()).collect()));
    let df = CsvReadOptions::default()
        .with_has_header(has_header)
        .with_infer_schema_length(Some(10_000))
        .with_parse_options(
            CsvParseOptions::default()
                .with_separator(delimiter as u8)
                .with_null_values(nulls),
        )
        .try_into_reader_with_file_path(Some(path.to_path_buf()))
        .ctx(|| format!("{}", path.display()))?
        .finish()
        .ctx(|| format!("{}: could not parse as csv", path.display()))?;
    if df.height() == 0 {
        return Err(PreprocessError::Invalid(format!(
            "{}: the file has a header but no rows",
            path.display()
        )));
    }
    Ok(df)
}

fn read_idx_frame(prefix: &Path) -> Result<DataFrame> {
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
    let mut cols: Vec<Column> = (0..w)
        .map(|j| {
            let v: Vec<f32> = (0..n).map(|i| f32::from(images.data[i * w + j])).collect();
            Column::new(format!("pixel_{j}").into(), v)
        })
        .collect();
    cols.push(Column::new(
        "label".into(),
        labels
            .data
            .iter()
            .map(|&l| i32::from(l))
            .collect::<Vec<i32>>(),
    ));
    DataFrame::new(n, cols).ctx(|| format!("{}: building the frame", img_path.display()))
}

fn is_numeric(dt: &DataType) -> bool {
    dt.is_primitive_numeric() || matches!(dt, DataType::Boolean)
}

/// A target column, encoded.
enum Target {
    /// Class index per row, and the class names in index order.
    Classes {
        labels: Vec<u32>,
        names: Vec<String>,
    },
    /// Regression value per row.
    Values(Vec<f32>),
}

impl Target {
    fn task(&self) -> Task {
        match self {
            Target::Classes { .. } => Task::Classification,
            Target::Values(_) => Task::Regression,
        }
    }
}

/// Encodes the target column: a float column (or `task = "regression"`) gives values,
/// anything else class indices.
fn encode_target(df: &DataFrame, target: &str, task: Option<Task>) -> Result<Target> {
    let col = df.column(target).ctx(|| format!("target `{target}`"))?;
    if col.null_count() > 0 {
        return Err(PreprocessError::Invalid(format!(
            "target column `{target}` has {} empty cells; drop those rows before training",
            col.null_count()
        )));
    }
    let dt = col.dtype().clone();
    let inferred = if dt.is_float() {
        Task::Regression
    } else {
        Task::Classification
    };
    if task.unwrap_or(inferred) == Task::Regression {
        if !is_numeric(&dt) {
            return Err(PreprocessError::Invalid(format!(
                "target `{target}` holds {dt} values; a regression target must be numeric (or set `task = \"classification\"`)"
            )));
        }
        let v = col
            .cast(&DataType::Float32)
            .ctx(|| format!("target `{target}` as numbers"))?;
        let values: Vec<f32> = v
            .f32()
            .ctx(|| target.to_string())?
            .into_no_null_iter()
            .collect();
        if let Some(i) = values.iter().position(|x| !x.is_finite()) {
            return Err(PreprocessError::Invalid(format!(
                "row {i}: target `{target}` is {}; drop or fix rows without a finite target",
                values[i]
            )));
        }
        return Ok(Target::Values(values));
    }
    let as_text: Vec<String> = if is_numeric(&dt) {
        let v = col
            .cast(&DataType::Int64)
            .ctx(|| format!("target `{target}` as integers"))?;
        v.i64()
            .ctx(|| target.to_string())?
            .into_no_null_iter()
            .map(|x| x.to_string())
            .collect()
    } else {
        let v = col
            .cast(&DataType::String)
            .ctx(|| format!("target `{target}` as text"))?;
        v.str()
            .ctx(|| target.to_string())?
            .iter()
            .map(|s| s.unwrap_or("").to_string())
            .collect()
    };
    // distinct labels first (sorting every row's label parsed the labels per comparison)
    let distinct: std::collections::HashSet<&str> = as_text.iter().map(String::as_str).collect();
    let mut classes: Vec<String> = distinct.into_iter().map(str::to_string).collect();
    classes.sort_by(|a, b| match (a.parse::<i64>(), b.parse::<i64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => a.cmp(b),
    });
    classes.dedup();
    if classes.len() < 2 {
        return Err(PreprocessError::Invalid(format!(
            "target `{target}` has a single class ({}); a classifier needs at least two",
            classes.first().cloned().unwrap_or_default()
        )));
    }
    let index: std::collections::HashMap<&str, u32> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i as u32))
        .collect();
    let labels = as_text
        .iter()
        .map(|s| index.get(s.as_str()).copied().unwrap_or(0))
        .collect();
    Ok(Target::Classes {
        labels,
        names: classes,
    })
}

fn map_labels(df: &DataFrame, target: &str, classes: &[String]) -> Result<Vec<u32>> {
    let encoded = match encode_target(df, target, Some(Task::Classification)) {
        Ok(Target::Classes { labels, names }) => Ok((names, labels)),
        Ok(Target::Values(_)) => Err(PreprocessError::Invalid(format!(
            "target `{target}` of the test source is not a class column"
        ))),
        Err(e) => Err(e),
    };
    let (test_classes, test_labels) = encoded.or_else(|e| match e {
        // A test set may hold a single class.
        PreprocessError::Invalid(m) if m.contains("single class") => {
            let col = df.column(target).ctx(|| target.to_string())?;
            let v = col.cast(&DataType::String).ctx(|| target.to_string())?;
            let first = v
                .str()
                .ctx(|| target.to_string())?
                .iter()
                .next()
                .flatten()
                .unwrap_or("")
                .to_string();
            Ok((vec![first], vec![0; df.height()]))
        }
        other => Err(other),
    })?;
    test_labels
        .iter()
        .map(|&l| {
            let name = &test_classes[l as usize];
            classes
                .iter()
                .position(|c| c == name)
                .map(|p| p as u32)
                .ok_or_else(|| {
                    PreprocessError::Invalid(format!(
                        "the test source has class `{name}` that the train source never shows"
                    ))
                })
        })
        .collect()
}

fn profile_columns(
    raw: &[f32],
    features: &[String],
    cells: &[(String, kiln_core::TextColumn)],
) -> Vec<ColumnProfile> {
    let w = features.len();
    features
        .iter()
        .enumerate()
        .map(|(j, name)| {
            if let Some((_, c)) = cells.iter().find(|(n, _)| n == name) {
                // a text column: no min / max / mean (null in profile.json)
                return ColumnProfile {
                    name: name.clone(),
                    min: f64::NAN,
                    max: f64::NAN,
                    mean: f64::NAN,
                    missing: c
                        .codes
                        .iter()
                        .filter(|&&x| x == kiln_core::encode::MISSING)
                        .count(),
                };
            }
            let v: Vec<f64> = raw
                .iter()
                .skip(j)
                .step_by(w)
                .filter(|x| !x.is_nan())
                .map(|&x| f64::from(x))
                .collect();
            let n = raw.len() / w.max(1);
            let (min, max, mean) = if v.is_empty() {
                (f64::NAN, f64::NAN, f64::NAN)
            } else {
                (
                    v.iter().copied().fold(f64::INFINITY, f64::min),
                    v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                    v.iter().sum::<f64>() / v.len() as f64,
                )
            };
            ColumnProfile {
                name: name.clone(),
                min,
                max,
                mean,
                missing: n - v.len(),
            }
        })
        .collect()
}

pub(crate) fn preview(names: &[String]) -> String {
    if names.len() <= 8 {
        names.join(", ")
    } else {
        format!("{}, … ({} in all)", names[..8].join(", "), names.len())
    }
}
