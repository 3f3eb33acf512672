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
//!     column_types: Default::default(),
//!     steps: vec![Step::Standardize { columns: Default::default() }],
//!     split: Split { valid: 0.2, test: Some(0.2), stratify: true },
//!     augment: Default::default(),
//!     seed: 7,
//! };
//! let out_dir = std::env::temp_dir().join("kiln-preprocess-doc");
//! let out = run(&config, &out_dir).unwrap();
//! assert_eq!(out.schema.class_labels, ["setosa", "versicolor", "virginica"]);
//! assert_eq!(out.rows, [90, 30, 30]);
//! ```

mod augment;
mod config;
mod error;
pub mod idx;
mod split;
mod steps;
pub mod table;

pub use augment::{Augment, AugmentCounts, rotate_image, shift_image};
pub use config::{ColumnType, Columns, Config, ImputeStrategy, ImputeValue, Source, Split, Step};
pub use error::{PreprocessError, Result};
pub use split::stratified_split;

use error::PolarsContext;
use kiln_core::{Dataset, Schema, Task};
use polars::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What one run produced.
#[derive(Debug, Clone)]
pub struct Output {
    /// The schema written to schema.json.
    pub schema: Schema,
    /// Rows in train, valid, test.
    pub rows: [usize; 3],
    /// Rows removed before the split.
    pub dropped: DroppedRows,
    /// Rows the augmentation added to the train split.
    pub augmented: AugmentCounts,
    /// The train, valid and test splits as written (what [`read_artifact`] reads back),
    /// for a caller that goes on in the same process.
    pub splits: [Dataset; 3],
}

pub use kiln_core::artifact::profile::{ColumnProfile, DroppedRows, Profile, SplitCounts};

/// A loaded source (one file, or the files a glob matched, stacked in name order): its
/// frame, the files for messages and, per frame row, which file and which row of it
/// (1-based, header excluded).
struct Frame {
    df: DataFrame,
    files: Vec<String>,
    rows: Vec<(u32, usize)>,
    dense: Option<Dense>,
}

/// Feature columns held row-major beside the frame: IDX pixels, which as a 784-column
/// DataFrame would cost more to build and to read back than the pixels themselves.
struct Dense {
    names: Vec<String>,
    raw: Vec<f32>,
}

impl Frame {
    fn new(df: DataFrame, path: &Path) -> Frame {
        let rows = (1..=df.height()).map(|r| (0, r)).collect();
        Frame {
            df,
            files: vec![path.display().to_string()],
            rows,
            dense: None,
        }
    }

    /// The frames of several files stacked; every file must have the same columns. A
    /// column read with different types in different files becomes f64 when all are
    /// numbers, text otherwise.
    fn stack(parts: Vec<(DataFrame, PathBuf)>) -> Result<Frame> {
        let mut parts = parts.into_iter();
        let Some((first, p0)) = parts.next() else {
            return Err(PreprocessError::Invalid("no files to read".into()));
        };
        let mut frame = Frame::new(first, &p0);
        let names: Vec<String> = column_names(&frame.df);
        let mut dfs = vec![frame.df.clone()];
        for (df, p) in parts {
            let theirs = column_names(&df);
            let missing: Vec<String> = names
                .iter()
                .filter(|n| !theirs.contains(n))
                .cloned()
                .collect();
            let extra: Vec<String> = theirs
                .iter()
                .filter(|n| !names.contains(n))
                .cloned()
                .collect();
            if !missing.is_empty() || !extra.is_empty() {
                return Err(PreprocessError::Invalid(format!(
                    "{}: its columns differ from {}'s (missing: [{}], extra: [{}]); every file a glob matches must have the same columns",
                    p.display(),
                    p0.display(),
                    preview(&missing),
                    preview(&extra)
                )));
            }
            let df = df
                .select(names.iter().map(|n| n.as_str()))
                .ctx(|| p.display().to_string())?;
            let f = frame.files.len() as u32;
            frame.rows.extend((1..=df.height()).map(|r| (f, r)));
            frame.files.push(p.display().to_string());
            dfs.push(df);
        }
        for name in &names {
            let types: Vec<DataType> = dfs
                .iter()
                .map(|d| d.column(name).map(|c| c.dtype().clone()))
                .filter(|t| !matches!(t, Ok(DataType::Null)))
                .collect::<PolarsResult<_>>()
                .ctx(|| name.clone())?;
            if types.windows(2).all(|w| w[0] == w[1]) && types.len() == dfs.len() {
                continue;
            }
            let to = if types.iter().all(is_numeric) {
                DataType::Float64
            } else {
                DataType::String
            };
            for d in &mut dfs {
                let c = d
                    .column(name)
                    .ctx(|| name.clone())?
                    .cast(&to)
                    .ctx(|| name.clone())?;
                d.with_column(c).ctx(|| name.clone())?;
            }
        }
        let mut all = dfs.remove(0);
        for d in &dfs {
            all.vstack_mut(d)
                .ctx(|| "stacking the files of a glob".to_string())?;
        }
        all.rechunk_mut();
        frame.df = all;
        Ok(frame)
    }

    /// The source's name for messages: its file, or the first and how many more.
    fn name(&self) -> String {
        match self.files.len() {
            1 => self.files[0].clone(),
            n => format!("{} (+{} more files)", self.files[0], n - 1),
        }
    }

    /// Where frame row `i` comes from: `file: row N`.
    fn site(&self, i: usize) -> String {
        let (f, r) = self.rows[i];
        format!("{}: row {r}", self.files[f as usize])
    }

    /// Keeps the frame rows at `keep` (ascending).
    fn keep(&mut self, keep: &[usize]) -> Result<()> {
        let ca = IdxCa::from_vec("idx".into(), keep.iter().map(|&i| i as IdxSize).collect());
        self.df = self.df.take(&ca).ctx(|| self.name())?;
        self.rows = keep.iter().map(|&i| self.rows[i]).collect();
        if let Some(d) = &mut self.dense {
            let idx: Vec<u32> = keep.iter().map(|&i| i as u32).collect();
            d.raw = gather(&d.raw, d.names.len(), &idx);
        }
        Ok(())
    }

    /// Every column name: the row-major ones, then the frame's.
    fn columns(&self) -> Vec<String> {
        let mut names = self
            .dense
            .as_ref()
            .map(|d| d.names.clone())
            .unwrap_or_default();
        names.extend(column_names(&self.df));
        names
    }

    /// A column's type as read (`u8` for IDX pixels).
    fn dtype(&self, name: &str) -> String {
        match self.df.column(name) {
            Ok(c) => c.dtype().to_string(),
            Err(_) if self.dense.is_some() => "u8".into(),
            Err(_) => String::new(),
        }
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
                self.name()
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
        types: &BTreeMap<String, ColumnType>,
    ) -> Result<Features> {
        if let Some(d) = &self.dense
            && d.names == features
        {
            return Ok(Features {
                raw: d.raw.clone(),
                cells: Vec::new(),
                sites: Default::default(),
            });
        }
        let n = self.df.height();
        let w = features.len();
        let mut out = vec![f32::NAN; n * w];
        let mut cells = Vec::new();
        let mut sites = std::collections::BTreeMap::new();
        for (j, name) in features.iter().enumerate() {
            let Ok(c) = self.df.column(name) else {
                return Err(PreprocessError::Invalid(format!(
                    "{}: lacks the feature column `{name}` of the train source; its columns are: {}",
                    self.name(),
                    preview(&column_names(&self.df))
                )));
            };
            let skip = removed.contains(name);
            if skip {
                continue;
            }
            if c.null_count() == n {
                return Err(PreprocessError::Invalid(format!(
                    "{}: column `{name}` is empty in every row; drop it with {{ op = \"drop\", columns = [\"{name}\"] }}",
                    self.name()
                )));
            }
            let forced = types.get(name).copied();
            let given_text =
                text.is_some_and(|t| t.contains(name)) || forced == Some(ColumnType::Text);
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
                (None, _) => {
                    if text.is_none() {
                        sites.insert(
                            name.clone(),
                            format!("{}: column `{name}` (text by `column_types`)", self.name()),
                        );
                    }
                }
                (Some((i, v)), t) if t.is_some() || forced == Some(ColumnType::Number) => {
                    return Err(PreprocessError::Invalid(format!(
                        "{} column `{name}` holds `{v}`, not a number; fix the cell, list it in the source's `null_values`, or drop the column with {{ op = \"drop\", columns = [\"{name}\"] }}",
                        self.site(i)
                    )));
                }
                (Some((i, v)), _) => {
                    sites.insert(
                        name.clone(),
                        format!("{} column `{name}` holds `{v}`", self.site(i)),
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

/// Per column, where its first missing cell is (`file: row N`), over `frames` in order
/// (one pass over the rows).
fn null_sites(
    frames: &[(&Frame, &[f32])],
    features: &[String],
) -> std::collections::BTreeMap<String, String> {
    let w = features.len().max(1);
    let mut out = std::collections::BTreeMap::new();
    for (f, raw) in frames {
        let mut first: Vec<Option<usize>> = vec![None; w];
        for (i, row) in raw.chunks_exact(w).enumerate() {
            for (j, x) in row.iter().enumerate() {
                if x.is_nan() && first[j].is_none() {
                    first[j] = Some(i);
                }
            }
        }
        for (j, name) in features.iter().enumerate() {
            if let Some(i) = first[j] {
                out.entry(name.clone()).or_insert_with(|| f.site(i));
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
    let (mut main, mut test_src, idx_layout) = load(config)?;
    tracing::info!(rows = main.df.height(), columns = main.df.width(), "loaded");
    let target = config.target.as_str();
    let names = main.columns();
    if !names.iter().any(|n| n == target) {
        return Err(PreprocessError::Invalid(format!(
            "target column `{target}` not found{}; columns are: {}",
            kiln_core::nearest(target, &names)
                .map(|n| format!(" (did you mean `{n}`?)"))
                .unwrap_or_default(),
            preview(&names)
        )));
    }
    for c in config.column_types.keys() {
        if !names.contains(c) {
            return Err(PreprocessError::Invalid(format!(
                "column_types: column `{c}` does not exist{}; columns are: {}",
                kiln_core::nearest(c, &names)
                    .map(|n| format!(" (did you mean `{n}`?)"))
                    .unwrap_or_default(),
                preview(&names)
            )));
        }
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
    let features_span = tracing::info_span!("features", columns = w).entered();
    let Features {
        raw: mut main_raw,
        cells: mut main_cells,
        sites,
    } = main.features(&features, &removed, None, &config.column_types)?;
    let text = steps::Text { sites };
    let text_names: Vec<String> = main_cells.iter().map(|(n, _)| n.clone()).collect();
    let (mut test_raw, mut test_cells) = match test_src.as_ref() {
        Some(t) => {
            let f = t.features(&features, &removed, Some(&text_names), &config.column_types)?;
            (Some(f.raw), f.cells)
        }
        None => (None, Vec::new()),
    };
    if !text_names.is_empty() {
        tracing::info!(columns = ?text_names, "text columns");
    }
    drop(features_span);
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
                    f.name()
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
    let dtypes: Vec<String> = features.iter().map(|f| main.dtype(f)).collect();
    let has_test = test_src.is_some();
    // the frames are not needed any more: their features and targets are extracted
    drop((main, test_src));

    // Split the main source (regression: one stratum).
    let test_frac = match (has_test, config.split.test) {
        (true, Some(f)) if f > 0.0 => {
            return Err(PreprocessError::Invalid(format!(
                "split.test = {f} but the source already has a test set; remove one of them"
            )));
        }
        (true, _) => 0.0,
        (false, f) => f.unwrap_or(0.2),
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
    let split_span = tracing::info_span!("split").entered();
    let train_raw = gather(&main_raw, w, &tr);
    let valid_raw = gather(&main_raw, w, &va);
    let (train_cells, valid_cells) = (take(&tr), take(&va));
    let (test_raw, test_cells, test_target) = match (test_raw, test_target) {
        (Some(r), Some(l)) => (r, test_cells, l),
        _ => (gather(&main_raw, w, &te), take(&te), pick(&te)),
    };
    drop((main_raw, main_cells));
    drop(split_span);

    // Fit on train, in the order written; every split goes through Schema::apply. The
    // profile of the raw train columns is taken on a second thread meanwhile.
    let (fitted, profile_cols) = std::thread::scope(|s| {
        let profile = s.spawn(|| {
            let _span = tracing::info_span!("profile").entered();
            profile_columns(&train_raw, &features, &dtypes, &train_cells)
        });
        let fitted = steps::fit(
            &config.steps,
            &train_raw,
            &features,
            &nulls,
            &train_cells,
            &text,
        );
        (fitted, profile.join())
    });
    let (transforms, feature_names, train_x) = fitted?;
    let profile_cols = profile_cols
        .map_err(|_| PreprocessError::Invalid("internal: the profile thread panicked".into()))?;
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
        // sizes agree by construction; write_ipc validates again before writing
        Ok(Dataset {
            feature_names: feature_names.clone(),
            target: target.to_string(),
            features: x,
            labels,
            values,
        })
    };
    // the train features are what fitting left (Schema::apply's very operations); the
    // other splits go through Schema::apply
    let mut train = make(train_x, pick(&tr), "train")?;
    if config.augment.oversample && task == Task::Regression {
        return Err(PreprocessError::Invalid(
            "augment.oversample balances classes, but the target is a regression target; remove `oversample`".into(),
        ));
    }
    let layout = config.augment.layout(w, idx_layout)?;
    let augmented = augment_train(
        &config.augment,
        &schema,
        (&train_raw, &train_cells),
        &mut train,
        layout,
        class_labels.len(),
        config.seed,
    )?;
    drop((train_raw, train_cells));
    let apply_span = tracing::info_span!("apply", splits = "valid, test").entered();
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
    drop(apply_span);
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
    // train on a second thread, valid and test on this one
    let write_span = tracing::info_span!("write").entered();
    std::thread::scope(|s| -> Result<()> {
        let t = s.spawn(|| train.write_ipc(&out_dir.join("train.arrow")));
        valid.write_ipc(&out_dir.join("valid.arrow"))?;
        test.write_ipc(&out_dir.join("test.arrow"))?;
        t.join().map_err(|_| {
            PreprocessError::Invalid("internal: the thread writing train.arrow panicked".into())
        })??;
        Ok(())
    })?;
    drop(write_span);
    let mut counts = vec![0usize; class_labels.len()];
    for &l in train.labels.iter().take(augmented.before) {
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
        augmentation: augmented.clone(),
    };
    kiln_core::artifact::save(out_dir, &profile)?;
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
        augmented,
        splits: [train, valid, test],
    })
}

/// Adds the augmented rows to `train` (whose features came from `raw` through `schema`):
/// oversampled rows, then copies, each copy's raw row shifted / rotated and its features
/// noised. The class counts and statistics stay those of the original rows.
fn augment_train(
    cfg: &Augment,
    schema: &Schema,
    (raw, cells): (&[f32], &[(String, kiln_core::TextColumn)]),
    train: &mut Dataset,
    layout: Option<[usize; 2]>,
    n_classes: usize,
    seed: u64,
) -> Result<AugmentCounts> {
    let n = train.n_rows();
    let mut counts = AugmentCounts {
        before: n,
        after: n,
        ..Default::default()
    };
    if cfg.is_off() {
        return Ok(counts);
    }
    let _span = tracing::info_span!("augment", rows = n).entered();
    let w = raw.len() / n.max(1);
    let fw = train.n_features();
    let plan = augment::plan(cfg, &train.labels, n_classes, n, seed);
    let base: Vec<u32> = (0..n as u32)
        .chain(plan.oversampled.iter().copied())
        .collect();
    let copy_src: Vec<u32> = plan.copies.iter().map(|&c| base[c as usize]).collect();
    for &i in &plan.oversampled {
        let i = i as usize;
        train.features.extend_from_within(i * fw..(i + 1) * fw);
    }
    let copies_raw = augment::copy_rows(cfg, raw, w, &copy_src, layout, seed);
    let copies_cells = cells
        .iter()
        .map(|(n, c)| (n.clone(), c.take(&copy_src)))
        .collect();
    let mut copies = schema.apply_with_text(&copies_raw, copies_cells)?;
    augment::add_noise(&mut copies, cfg.noise, seed);
    if let Some(i) = copies.iter().position(|v| !v.is_finite()) {
        return Err(PreprocessError::Invalid(format!(
            "an augmented copy's feature `{}` is {}; check the steps and `augment`",
            train.feature_names[i % fw],
            copies[i]
        )));
    }
    train.features.extend(copies);
    let added: Vec<u32> = plan.oversampled.iter().chain(&copy_src).copied().collect();
    if !train.labels.is_empty() {
        let l: Vec<u32> = added.iter().map(|&i| train.labels[i as usize]).collect();
        train.labels.extend(l);
    }
    if !train.values.is_empty() {
        let v: Vec<f32> = added.iter().map(|&i| train.values[i as usize]).collect();
        train.values.extend(v);
    }
    train.validate()?;
    counts.oversampled = plan.oversampled.len();
    counts.copies = copy_src.len();
    counts.after = train.n_rows();
    tracing::info!(
        oversampled = counts.oversampled,
        copies = counts.copies,
        after = counts.after,
        "augmented the train split"
    );
    Ok(counts)
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

/// The main source, the test source if any, and the image layout an IDX source gives.
type Loaded = (Frame, Option<Frame>, Option<[usize; 2]>);

fn load(config: &Config) -> Result<Loaded> {
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
fn is_glob(p: &Path) -> bool {
    p.to_string_lossy().contains(['*', '?', '['])
}

/// The files a source path names: itself, or the files its glob matches in name order
/// (an error when none does).
fn expand(p: &Path) -> Result<Vec<PathBuf>> {
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

fn column_names(df: &DataFrame) -> Vec<String> {
    df.get_column_names()
        .iter()
        .map(|s| s.to_string())
        .collect()
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
    let overwrite = (!text.is_empty()).then(|| {
        Arc::new(polars::prelude::Schema::from_iter(
            text.iter()
                .map(|c| Field::new((*c).into(), DataType::String)),
        ))
    });
    let df = CsvReadOptions::default()
        .with_has_header(has_header)
        .with_schema_overwrite(overwrite)
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

/// The IDX pair at `prefix`: a frame of `label` with the pixels (`pixel_0` …) held
/// row-major beside it, and the image layout `[rows, cols]`.
fn read_idx_frame(prefix: &Path) -> Result<(Frame, [usize; 2])> {
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

/// Per-column statistics of row-major `raw` (NaN = missing; text columns come from
/// `cells`): min / max / mean in one pass over the rows, then the distinct counts (see
/// the comment on the grouping below: a hash set per column filled row by row missed
/// the cache on nearly every insert for a million-row table).
fn profile_columns(
    raw: &[f32],
    features: &[String],
    dtypes: &[String],
    cells: &[(String, kiln_core::TextColumn)],
) -> Vec<ColumnProfile> {
    let w = features.len().max(1);
    let n = raw.len() / w;
    let mut min = vec![f64::INFINITY; w];
    let mut max = vec![f64::NEG_INFINITY; w];
    let mut sum = vec![0.0f64; w];
    let mut present = vec![0usize; w];
    for row in raw.chunks_exact(w) {
        for (j, &x) in row.iter().enumerate() {
            if x.is_nan() {
                continue;
            }
            let v = f64::from(x);
            min[j] = min[j].min(v);
            max[j] = max[j].max(v);
            sum[j] += v;
            present[j] += 1;
        }
    }
    let numeric: Vec<usize> = (0..w)
        .filter(|&j| !cells.iter().any(|(c, _)| Some(c) == features.get(j)))
        .collect();
    // Columns with few values (MNIST's pixels: at most 256) are counted together in one
    // pass over the rows, their small sets all in the cache; columns with many values
    // (a million-row table's measurements) one at a time, so that only one large set is
    // in the cache at once. Which is which comes from the first 2,048 rows; the counts
    // are exact either way.
    let (few, many): (Vec<usize>, Vec<usize>) = numeric.iter().partition(|&&j| {
        let mut seen = BitSet32::new();
        for row in raw.chunks_exact(w).take(2048) {
            if !row[j].is_nan() {
                seen.insert((row[j] + 0.0).to_bits());
            }
        }
        seen.len() <= 256
    });
    let mut distinct = vec![0usize; w];
    let groups = std::iter::once(few).chain(many.into_iter().map(|j| vec![j]));
    for cols in groups.filter(|g| !g.is_empty()) {
        // a column of many values gets room for every row at once (no regrowing)
        let room = if cols.len() == 1 { n } else { 256 };
        let mut sets: Vec<BitSet32> = cols.iter().map(|_| BitSet32::for_keys(room)).collect();
        for row in raw.chunks_exact(w) {
            for (set, &j) in sets.iter_mut().zip(&cols) {
                let x = row[j];
                if !x.is_nan() {
                    set.insert((x + 0.0).to_bits()); // -0.0 and 0.0 are one value
                }
            }
        }
        for (set, &j) in sets.iter().zip(&cols) {
            distinct[j] = set.len();
        }
    }
    features
        .iter()
        .enumerate()
        .map(|(j, name)| {
            if let Some((_, c)) = cells.iter().find(|(n, _)| n == name) {
                // a text column: no min / max / mean (null in profile.json)
                let missing = c
                    .codes
                    .iter()
                    .filter(|&&x| x == kiln_core::encode::MISSING)
                    .count();
                let mut codes: Vec<u32> = c
                    .codes
                    .iter()
                    .copied()
                    .filter(|&x| x != kiln_core::encode::MISSING)
                    .collect();
                codes.sort_unstable();
                codes.dedup();
                return ColumnProfile {
                    name: name.clone(),
                    dtype: dtypes.get(j).cloned().unwrap_or_default(),
                    null_share: if n == 0 {
                        0.0
                    } else {
                        missing as f64 / n as f64
                    },
                    distinct: codes.len(),
                    min: f64::NAN,
                    max: f64::NAN,
                    mean: f64::NAN,
                    missing,
                };
            }
            let (mn, mx, mean) = if present[j] == 0 {
                (f64::NAN, f64::NAN, f64::NAN)
            } else {
                (min[j], max[j], sum[j] / present[j] as f64)
            };
            ColumnProfile {
                name: name.clone(),
                dtype: dtypes.get(j).cloned().unwrap_or_default(),
                null_share: if n == 0 {
                    0.0
                } else {
                    (n - present[j]) as f64 / n as f64
                },
                distinct: distinct[j],
                min: mn,
                max: mx,
                mean,
                missing: n - present[j],
            }
        })
        .collect()
}

/// A set of f32 bit patterns for the distinct counts: open addressing with linear
/// probing over a power-of-two table, Fibonacci hashing, grown at half full. Written by
/// hand because this is the profile's inner loop (a lookup per cell: 42 million for
/// MNIST's train split) and std's `HashSet` spent ≈ 5 ns per lookup on its general
/// machinery; the keys here are plain `u32`s with one value that never occurs (the NaN
/// pattern `u32::MAX`: missing cells are skipped), which marks an empty slot.
struct BitSet32 {
    slots: Vec<u32>,
    len: usize,
    /// 32 − log2(slots): the hash's top bits pick the slot.
    shift: u32,
}

impl BitSet32 {
    const EMPTY: u32 = u32::MAX;

    fn new() -> Self {
        Self::for_keys(8)
    }

    /// A set with room for `n` keys before it grows.
    fn for_keys(n: usize) -> Self {
        let slots = (2 * n).next_power_of_two().max(16);
        BitSet32 {
            slots: vec![Self::EMPTY; slots],
            len: 0,
            shift: 32 - slots.trailing_zeros(),
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn insert(&mut self, key: u32) {
        debug_assert_ne!(key, Self::EMPTY);
        let mask = self.slots.len() - 1;
        let mut i = (key.wrapping_mul(0x9e37_79b1) >> self.shift) as usize;
        loop {
            let s = self.slots[i];
            if s == key {
                return;
            }
            if s == Self::EMPTY {
                self.slots[i] = key;
                self.len += 1;
                if self.len * 2 > self.slots.len() {
                    self.grow();
                }
                return;
            }
            i = (i + 1) & mask;
        }
    }

    fn grow(&mut self) {
        let old = std::mem::replace(&mut self.slots, vec![Self::EMPTY; 0]);
        self.slots = vec![Self::EMPTY; old.len() * 2];
        self.shift -= 1;
        self.len = 0;
        for k in old {
            if k != Self::EMPTY {
                self.insert(k);
            }
        }
    }
}

pub(crate) fn preview(names: &[String]) -> String {
    if names.len() <= 8 {
        names.join(", ")
    } else {
        format!("{}, … ({} in all)", names[..8].join(", "), names.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_set_counts_what_a_hash_set_counts() {
        let mut ours = BitSet32::new();
        let mut theirs = std::collections::HashSet::new();
        for i in 0..100_000u32 {
            // repeats, and keys with the sign bit set
            let k = (i.wrapping_mul(2_654_435_761) % 30_011) | ((i & 1) << 31);
            ours.insert(k);
            theirs.insert(k);
        }
        assert_eq!(ours.len(), theirs.len());
        assert!(ours.len() > 30_000, "{}", ours.len());
    }
}
