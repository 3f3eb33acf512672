//! Preprocessing a table larger than memory. One pass parses the source (CSV, Parquet
//! or Arrow IPC; globs) into a spill of the kept rows beside the artifact and collects
//! the target; the split is the in-memory path's seeded stratified shuffle over those
//! targets (one byte a row remembers each row's split); every fitted step's statistics
//! come from passes over the spill's train rows ([`rows::Passes`]: the same numbers the
//! in-memory path fits); a last pass transforms every row and writes the shards as they
//! fill ([`kiln_core::dataset::ShardSink`]), in file order like the in-memory path's,
//! so the artifact is the in-memory run's byte for byte. Memory holds a chunk of rows,
//! the statistics and a few bytes a row, whatever the table's size.

mod choose;
mod finish;
mod profile;
mod rows;
mod spill;

pub(crate) use choose::streamable;
pub use choose::streams;
pub use finish::save_unaugmented;

use crate::config::{ColumnType, Config, Source, Step};
use crate::error::{PreprocessError, Result};
use crate::load::is_numeric;
use crate::steps::{self, Text};
use crate::stream::Scan;
use kiln_core::artifact::profile::{DroppedRows, Profile};
use kiln_core::{Schema, Task, TextColumn};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Rows per chunk of the spill and of every pass.
const CHUNK_ROWS: usize = 65_536;

/// What a streamed run wrote.
#[derive(Debug, Clone)]
pub struct Streamed {
    /// The schema written to schema.json.
    pub schema: Schema,
    /// Rows in train, valid, test.
    pub rows: [usize; 3],
    /// The data profile (profile.json).
    pub profile: Profile,
}

fn invalid(m: String) -> PreprocessError {
    PreprocessError::Invalid(m)
}

/// The target cell of a row as a class name or value text, or None when missing.
fn target_cell(cell: Option<&str>, float: bool) -> Option<&str> {
    let c = cell?;
    if c.is_empty() || (float && c.trim().parse::<f64>().is_ok_and(|x| !x.is_finite())) {
        return None;
    }
    Some(c)
}

/// Preprocesses `config`'s table in bounded memory into `out_dir`: the shards with
/// their manifest, schema.json and profile.json: the same files, byte for byte, that
/// the in-memory path writes (profile.json's distinct counts aside, which become
/// estimates above 65,536 values a column).
pub fn run_streamed(config: &Config, out_dir: &Path) -> Result<Streamed> {
    run_streamed_with(config, out_dir, &kiln_core::NoProgress)
}

/// [`run_streamed`], each pass reporting its rows to `progress`.
pub fn run_streamed_with(
    config: &Config,
    out_dir: &Path,
    progress: &dyn kiln_core::Progress,
) -> Result<Streamed> {
    let _span = tracing::info_span!("preprocess", load = "stream").entered();
    if let Some((key, msg)) = config.problems().into_iter().next() {
        return Err(invalid(format!("{key}: {msg}")));
    }
    let (files, csv) =
        streamable(config).map_err(|why| invalid(format!("this source cannot stream: {why}")))?;
    std::fs::create_dir_all(out_dir).map_err(|source| PreprocessError::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let first = files
        .first()
        .ok_or_else(|| invalid("the source matches no file".into()))?;
    let target = config.target.as_str();
    let shown: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    // the source as messages name it
    let source_name = match shown.len() {
        1 => shown[0].clone(),
        n => format!("{} (+{} more files)", shown[0], n - 1),
    };
    // each CSV file's shape first (ragged rows, unclosed quotes, no rows), as in memory
    let is_csv = matches!(config.source, Source::Csv { .. });
    let checked: Vec<Option<usize>> = files
        .iter()
        .map(|f| {
            is_csv
                .then(|| crate::load::check_csv(f, char::from(csv.delimiter), true))
                .transpose()
        })
        .collect::<Result<_>>()?;
    if let Some(k) = checked.iter().position(|r| *r == Some(0)) {
        return Err(invalid(format!(
            "{}: the file has a header but no rows",
            shown[k]
        )));
    }
    let types = crate::stream::infer_types(first, &csv)?;
    let names: Vec<String> = types.iter().map(|(n, _)| n.clone()).collect();
    let Some((_, target_type)) = types.iter().find(|(n, _)| n == target) else {
        // one column whose name holds another delimiter: the file is split wrongly
        let delimiter = match (is_csv, names.as_slice()) {
            (true, [only]) => [';', '\t', '|', ',']
                .into_iter()
                .find(|d| only.contains(*d))
                .map(|d| format!("; the header looks separated by {d:?}: set `delimiter = {d:?}` in the source"))
                .unwrap_or_default(),
            _ => String::new(),
        };
        return Err(invalid(format!(
            "{source_name}: target column `{target}` not found{}; columns are: {}{delimiter}",
            kiln_core::nearest(target, &names)
                .map(|n| format!(" (did you mean `{n}`?)"))
                .unwrap_or_default(),
            crate::preview(&names)
        )));
    };
    let float_target = target_type.is_float();
    let task = match (&config.positive_class, config.task) {
        (Some(_), _) => Task::Classification,
        (None, Some(t)) => t,
        (None, None) if float_target => Task::Regression,
        (None, None) => Task::Classification,
    };
    if task == Task::Regression && !is_numeric(target_type) {
        return Err(invalid(format!(
            "target `{target}` holds {target_type} values; a regression target must be numeric (or set `task = \"classification\"`)"
        )));
    }
    for c in config.column_types.keys() {
        if !names.contains(c) {
            return Err(invalid(format!(
                "column_types: column `{c}` does not exist; columns are: {}",
                crate::preview(&names)
            )));
        }
    }
    let row_id = config.split.row_id.as_deref();
    let features = crate::engine::feature_columns(&names, target, row_id, &source_name)?;
    let plan: Vec<Step> = match &config.steps {
        Some(written) => written.clone(),
        None => suggested(first, config, &csv)?,
    };
    let removed = steps::removed_columns(&plan, &features);
    let text_cols: Vec<String> = types
        .iter()
        .filter(|(n, t)| {
            n != target
                && !removed.contains(n)
                && match config.column_types.get(n) {
                    Some(ColumnType::Text) => true,
                    Some(ColumnType::Number) => false,
                    None => !is_numeric(t),
                }
        })
        .map(|(n, _)| n.clone())
        .collect();
    let dtypes: Vec<String> = features
        .iter()
        .map(|f| {
            types
                .iter()
                .find(|(n, _)| n == f)
                .map(|(_, t)| {
                    if text_cols.contains(f) {
                        "str".to_string()
                    } else {
                        t.to_string()
                    }
                })
                .unwrap_or_default()
        })
        .collect();
    let wanted: Vec<String> = features
        .iter()
        .filter(|f| !removed.contains(f))
        .cloned()
        .collect();
    let at: Vec<usize> = wanted
        .iter()
        .map(|c| features.iter().position(|f| f == c).unwrap_or(0))
        .collect();
    let w = features.len();
    // the scan reads the row id as text after the features
    let (mut scan_wanted, mut scan_text) = (wanted.clone(), text_cols.clone());
    if let Some(id) = row_id {
        scan_wanted.push(id.to_string());
        scan_text.push(id.to_string());
    }
    let mut split_codes: Option<Vec<u8>> = row_id.map(|_| Vec::new());

    // Pass 1: the source, parsed once, into the spill; the target collected.
    let spill_path = out_dir.join(".spill");
    let mut spill = spill::Writer::create(&spill_path)?;
    // the spill goes when this function returns, whatever it returns
    let _removed = spill::RemoveOnDrop(spill_path.clone());
    let mut text = Text::default();
    for c in &text_cols {
        text.sites.insert(c.clone(), String::new());
    }
    let mut nulls: BTreeMap<String, String> = BTreeMap::new();
    let mut dropped = DroppedRows::default();
    let mut class_of: HashMap<String, u32> = HashMap::new();
    let mut class_names: Vec<String> = Vec::new();
    let mut ids: Vec<u32> = Vec::new();
    let mut with_target = 0usize;
    let mut present = vec![false; w];
    for (fi, file) in files.iter().enumerate() {
        let scan = Scan::open_checked(
            file,
            &scan_wanted,
            &scan_text,
            Some(target),
            CHUNK_ROWS,
            csv.clone(),
            checked[fi],
        )?;
        tracing::info!(file = %file.display(), rows = ?scan.header().rows, "reading");
        progress.start(
            &format!("preprocess: reading {}", shown[fi]),
            scan.header().rows.unwrap_or(0) as u64,
        );
        let read = scan.for_each(|chunk| {
            let n = chunk.rows.n_rows;
            progress.advance(n as u64);
            let site = |i: usize| format!("{}: row {}", shown[fi], chunk.first_row + i + 1);
            let Some(tv) = chunk.target else {
                return Err(invalid(format!(
                    "{}: lacks the target column `{target}` that {} has",
                    shown[fi], shown[0]
                )));
            };
            let mut values = vec![f32::NAN; n * w];
            let ww = scan_wanted.len();
            for i in 0..n {
                for (k, &j) in at.iter().enumerate() {
                    let x = chunk.rows.values[i * ww + k];
                    values[i * w + j] = x;
                    present[j] |= !x.is_nan();
                }
            }
            for (c, t) in &chunk.rows.text {
                if let Some(j) = features.iter().position(|f| f == c) {
                    present[j] |= t.codes.iter().any(|&k| k != kiln_core::encode::MISSING);
                }
            }
            // rows without a target, then the drop_nulls steps
            let mut keep: Vec<usize> = Vec::with_capacity(n);
            for i in 0..n {
                if target_cell(tv.get(i).map(String::as_str), float_target).is_some() {
                    keep.push(i);
                } else {
                    dropped.null_target += 1;
                }
            }
            with_target += keep.len();
            if plan.iter().any(|s| matches!(s, Step::DropNulls { .. })) {
                let sub = crate::frame::gather(&values, w, &keep.iter().map(|&i| i as u32).collect::<Vec<_>>());
                let sub_target: Vec<String> = keep.iter().map(|&i| tv[i].clone()).collect();
                let (kept, [nulls_dropped, _]) = steps::row_steps(&plan, &sub, &features, &sub_target, &text)?;
                dropped.null_features += nulls_dropped;
                keep = kept.into_iter().map(|k| keep[k]).collect();
            }
            if let (Some(id), Some(codes)) = (row_id, split_codes.as_mut()) {
                let ids = chunk.rows.text.iter().find(|(n, _)| n == id).map(|(_, t)| t);
                for &i in &keep {
                    let Some(v) = ids.and_then(|t| t.get(i)).filter(|v| !v.is_empty()) else {
                        return Err(invalid(format!(
                            "{}: the row id `{id}` is empty; split.row_id needs a value in every row",
                            site(i)
                        )));
                    };
                    let s = kiln_core::row_split::row_split(
                        config.seed,
                        v.as_bytes(),
                        config.split.valid,
                        config.split.test.unwrap_or(0.2),
                    );
                    codes.push(s as u8);
                }
            }
            let idx: Vec<u32> = keep.iter().map(|&i| i as u32).collect();
            let values = crate::frame::gather(&values, w, &idx);
            let cells: Vec<TextColumn> = text_cols
                .iter()
                .map(|c| {
                    chunk
                        .rows
                        .text
                        .iter()
                        .find(|(n, _)| n == c)
                        .map(|(_, t)| t.take(&idx))
                        .unwrap_or_default()
                })
                .collect();
            // where each column first misses a value, where each text column shows text
            for (j, f) in features.iter().enumerate() {
                if text.sites.contains_key(f) || nulls.contains_key(f) {
                    continue;
                }
                if let Some(r) = values.chunks_exact(w).position(|row| row[j].is_nan()) {
                    nulls.insert(f.clone(), site(keep[r]));
                }
            }
            for (c, t) in text_cols.iter().zip(&cells) {
                if let Some(s) = text.sites.get_mut(c)
                    && s.is_empty()
                    && let Some((r, v)) = (0..t.len()).find_map(|r| t.get(r).map(|v| (r, v)))
                {
                    *s = format!("{} column `{c}` holds `{v}`", site(keep[r]));
                }
            }
            let mut tcells = Vec::with_capacity(keep.len());
            for &i in &keep {
                let cell = tv[i].as_str();
                if task == Task::Classification {
                    let name = if float_target {
                        let x: f64 = cell.trim().parse().unwrap_or(f64::NAN);
                        if x.fract() != 0.0 || x.abs() > 9.0e15 {
                            return Err(invalid(format!(
                                "{}: target `{target}` is {x}, which is not a class: a classification target takes text or whole numbers; set `task = \"regression\"` to predict the number",
                                site(i)
                            )));
                        }
                        (x as i64).to_string()
                    } else {
                        cell.to_string()
                    };
                    let next = class_names.len() as u32;
                    let id = *class_of.entry(name.clone()).or_insert_with(|| {
                        class_names.push(name);
                        next
                    });
                    ids.push(id);
                } else {
                    match cell.trim().parse::<f32>() {
                        Ok(x) if x.is_finite() => {}
                        _ => {
                            return Err(invalid(format!(
                                "{}: target `{target}` is `{cell}`; drop or fix rows without a finite target",
                                site(i)
                            )));
                        }
                    }
                    ids.push(0);
                }
                tcells.push(Some(cell));
            }
            spill.write(&spill::Chunk {
                file: fi as u32,
                rows: keep.iter().map(|&i| (chunk.first_row + i + 1) as u64).collect(),
                values,
                text: cells,
                target: TextColumn::from_cells(tcells),
            })
        });
        progress.finish();
        read?;
    }
    let spill_path = spill.finish()?;
    if with_target == 0 {
        return Err(invalid(format!(
            "{source_name}: the target column `{target}` is empty in every row"
        )));
    }
    if let Some(c) = features
        .iter()
        .zip(&present)
        .find(|(f, p)| !**p && !removed.contains(f))
        .map(|(f, _)| f)
    {
        return Err(invalid(format!(
            "{source_name}: column `{c}` is empty in every row; drop it with {{ op = \"drop\", columns = [\"{c}\"] }}"
        )));
    }
    let parsed = Parsed {
        source_name,
        spill: spill_path,
        plan,
        task,
        features,
        dtypes,
        text_cols,
        text,
        nulls,
        dropped,
        class_names,
        ids,
        split_codes,
    };
    finish::finish(config, out_dir, parsed, progress)
}

/// What the parse into the spill found.
pub(super) struct Parsed {
    /// The source as messages name it.
    source_name: String,
    /// The spill file.
    spill: std::path::PathBuf,
    /// The steps, written or suggested.
    plan: Vec<Step>,
    task: Task,
    /// Feature columns, in file order.
    features: Vec<String>,
    /// Their types as profile.json shows them.
    dtypes: Vec<String>,
    /// The text columns among them, in the spill's order.
    text_cols: Vec<String>,
    /// The text columns and where each first shows text.
    text: Text,
    /// Where each column first misses a value.
    nulls: BTreeMap<String, String>,
    /// Rows left out of the spill, by reason.
    dropped: DroppedRows,
    /// Class names in order of first appearance.
    class_names: Vec<String>,
    /// Per kept row: its class's place in `class_names` (0 for regression).
    ids: Vec<u32>,
    /// Per kept row with `split.row_id`: its split (0 train, 1 valid, 2 test) by the hash
    /// of its id.
    split_codes: Option<Vec<u8>>,
}

/// Rows of the table the suggested steps look at when `steps` is left out.
const SUGGEST_ROWS: usize = 100_000;

/// The steps `kiln init` would write, decided on the first [`SUGGEST_ROWS`] rows of the
/// first file (on the whole table for one that small, as in memory).
pub(crate) fn suggested(
    first: &Path,
    config: &Config,
    csv: &crate::stream::CsvFormat,
) -> Result<Vec<Step>> {
    let text: Vec<String> = config
        .column_types
        .iter()
        .filter(|(_, t)| **t == ColumnType::Text)
        .map(|(c, _)| c.clone())
        .collect();
    let mut head = crate::stream::head(first, SUGGEST_ROWS, &text, csv)?;
    if let Some(id) = &config.split.row_id {
        head = head.drop(id).map_err(|e| invalid(e.to_string()))?;
    }
    let steps = crate::suggest::default_steps(&head, &config.target, &config.column_types)?;
    tracing::info!(
        rows = head.height(),
        steps = %steps
            .iter()
            .map(|s| serde_json::to_string(s).unwrap_or_default())
            .collect::<Vec<_>>()
            .join(", "),
        "no `steps` given: the steps `kiln init` would write, decided on the first rows"
    );
    Ok(steps)
}
