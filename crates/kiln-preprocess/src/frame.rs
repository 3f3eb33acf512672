//! The loaded table (`Frame`): a polars frame plus, per row, the file and row it came
//! from; numeric columns densified row-major for the steps, text columns kept as
//! dictionary-encoded cells, and the rows' null sites.

use crate::error::{PolarsContext, PreprocessError, Result};
use crate::{ColumnType, load::*, preview, table};
use polars::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A loaded source (one file, or the files a glob matched, stacked in name order): its
/// frame, the files for messages and, per frame row, which file and which row of it
/// (1-based, header excluded).
pub(crate) struct Frame {
    pub(crate) df: DataFrame,
    pub(crate) files: Vec<String>,
    pub(crate) rows: Vec<(u32, usize)>,
    pub(crate) dense: Option<Dense>,
    /// Files an image source skipped (`skip_unreadable`).
    pub(crate) skipped: Vec<kiln_core::artifact::profile::SkippedFile>,
}

/// The file and row (1-based, header excluded) of each row of a frame.
pub(crate) struct Sites {
    files: Vec<String>,
    rows: Vec<(u32, usize)>,
}

impl Sites {
    /// `file: row N` of row `i`.
    pub(crate) fn site(&self, i: usize) -> String {
        match self.rows.get(i) {
            Some(&(f, r)) => format!("{}: row {r}", self.files[f as usize]),
            None => format!("row {}", i + 1),
        }
    }
}

/// Feature columns held row-major beside the frame: IDX pixels, which as a 784-column
/// DataFrame would cost more to build and to read back than the pixels themselves.
pub(crate) struct Dense {
    pub(crate) names: Vec<String>,
    pub(crate) raw: Vec<f32>,
}

impl Frame {
    pub(crate) fn new(df: DataFrame, path: &Path) -> Frame {
        let rows = (1..=df.height()).map(|r| (0, r)).collect();
        Frame {
            df,
            files: vec![path.display().to_string()],
            rows,
            dense: None,
            skipped: Vec::new(),
        }
    }

    /// The frames of several files stacked; every file must have the same columns. A
    /// column read with different types in different files becomes f64 when all are
    /// numbers, text otherwise.
    pub(crate) fn stack(parts: Vec<(DataFrame, PathBuf)>) -> Result<Frame> {
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
    pub(crate) fn name(&self) -> String {
        match self.files.len() {
            1 => self.files[0].clone(),
            n => format!("{} (+{} more files)", self.files[0], n - 1),
        }
    }

    /// Where frame row `i` comes from: `file: row N`.
    pub(crate) fn site(&self, i: usize) -> String {
        self.sites().site(i)
    }

    /// Where every row comes from (kept after the frame is gone, for messages).
    pub(crate) fn sites(&self) -> Sites {
        Sites {
            files: self.files.clone(),
            rows: self.rows.clone(),
        }
    }

    /// Keeps the frame rows at `keep` (ascending).
    pub(crate) fn keep(&mut self, keep: &[usize]) -> Result<()> {
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
    pub(crate) fn columns(&self) -> Vec<String> {
        let mut names = self
            .dense
            .as_ref()
            .map(|d| d.names.clone())
            .unwrap_or_default();
        names.extend(column_names(&self.df));
        names
    }

    /// A column's type as read (`u8` for IDX pixels).
    pub(crate) fn dtype(&self, name: &str) -> String {
        match self.df.column(name) {
            Ok(c) => c.dtype().to_string(),
            Err(_) if self.dense.is_some() => "u8".into(),
            Err(_) => String::new(),
        }
    }

    /// Drops the rows without a target: empty, or NaN or infinite in a number column
    /// (never a class, never a value); returns how many.
    pub(crate) fn drop_null_target(&mut self, target: &str) -> Result<usize> {
        let c = self
            .df
            .column(target)
            .ctx(|| format!("target `{target}`"))?;
        let mut missing: Vec<bool> = c.is_null().iter().map(|n| n == Some(true)).collect();
        if c.dtype().is_float() {
            let f = c
                .cast(&DataType::Float64)
                .ctx(|| format!("target `{target}` as numbers"))?;
            for (m, v) in missing
                .iter_mut()
                .zip(f.f64().ctx(|| target.to_string())?.iter())
            {
                *m |= v.is_some_and(|x| !x.is_finite());
            }
        }
        if !missing.contains(&true) {
            return Ok(0);
        }
        let keep: Vec<usize> = missing
            .iter()
            .enumerate()
            .filter(|(_, m)| !**m)
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
    pub(crate) fn text(&self, name: &str) -> Result<Vec<String>> {
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
    pub(crate) fn features(
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
                // a finite number beyond f32's range would become ±inf and then, binned or
                // clipped by a step, pass unnoticed
                if out.iter().skip(j).step_by(w).any(|v| v.is_infinite()) {
                    let wide = c.cast(&DataType::Float64).ctx(|| name.clone())?;
                    let wide = wide.f64().ctx(|| name.clone())?;
                    if let Some((i, v)) = wide
                        .iter()
                        .enumerate()
                        .find_map(|(i, v)| v.filter(|v| beyond_f32(*v)).map(|v| (i, v)))
                    {
                        return Err(beyond_f32_error(&self.site(i), name, &format!("{v:e}")));
                    }
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
                        Ok(x)
                            if x.is_infinite() && v.trim().parse::<f64>().is_ok_and(beyond_f32) =>
                        {
                            return Err(beyond_f32_error(&self.site(i), name, v.trim()));
                        }
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
pub(crate) struct Features {
    pub(crate) raw: Vec<f32>,
    pub(crate) cells: Vec<(String, kiln_core::TextColumn)>,
    pub(crate) sites: std::collections::BTreeMap<String, String>,
}

/// Per column, where its first missing cell is (`file: row N`), over `frames` in order
/// (one pass over the rows).
pub(crate) fn null_sites(
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

pub(crate) fn gather(raw: &[f32], w: usize, idx: &[u32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(idx.len() * w);
    for &i in idx {
        out.extend_from_slice(&raw[i as usize * w..(i as usize + 1) * w]);
    }
    out
}

/// A finite number that becomes ±inf as an f32.
pub(crate) fn beyond_f32(v: f64) -> bool {
    v.is_finite() && (v as f32).is_infinite()
}

/// The error for a number beyond f32's range at `site` of column `name`.
pub(crate) fn beyond_f32_error(site: &str, name: &str, shown: &str) -> PreprocessError {
    PreprocessError::Invalid(format!(
        "{site}: column `{name}` holds {shown}, beyond the range of a 32-bit float (±3.4e38) that kiln computes in; rescale the column (e.g. to thousands) or drop it"
    ))
}
