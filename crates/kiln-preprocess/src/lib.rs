//! kiln-preprocess: loads raw data with polars (CSV, Parquet, Arrow IPC or MNIST IDX), fits preprocessing on
//! the train split only, splits with a seeded stratified shuffle, and writes the dataset
//! artifact: the splits as Parquet shards with their `manifest.json`
//! (`kiln_core::dataset::shards`), `schema.json` and `profile.json`.
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
//!     steps: Some(vec![Step::Standardize { columns: Default::default() }]),
//!     split: Split { valid: 0.2, test: Some(0.2), stratify: true, row_id: None },
//!     augment: Default::default(),
//!     shard_rows: None,
//!     load: Default::default(),
//!     memory_mb: 1024,
//!     seed: 7,
//!     engine: Default::default(),
//!     scheduler: None,
//! };
//! let out_dir = std::env::temp_dir().join("kiln-preprocess-doc");
//! let out = run(&config, &out_dir).unwrap();
//! assert_eq!(out.schema.class_labels, ["setosa", "versicolor", "virginica"]);
//! assert_eq!(out.rows, [90, 30, 30]);
//! ```

mod artifact;
mod augment;
mod config;
mod csv_blocks;
mod csv_shape;
mod error;
mod frame;
pub mod idx;
pub mod images;
mod load;
mod profile;
pub mod remote;
mod source;
mod split;
mod steps;
pub mod stream;
mod streamed;
pub mod suggest;
pub mod table;
mod target;
mod train_rows;

pub use artifact::{Output, read_artifact};
pub use augment::{Augment, AugmentCounts, rotate_image, shift_image};
pub use config::{
    ColumnType, Columns, Config, Engine, ImputeStrategy, ImputeValue, Load, Source, Split, Step,
};
pub use error::{PreprocessError, Result};
pub use load::source_files;
pub use remote::{RemoteEngine, register_remote, run_remote};
pub use split::{hash_split, stratified_split};
pub use streamed::{Streamed, run_streamed, run_streamed_with, streams};

use frame::*;
use load::*;
use profile::*;
use target::*;

use kiln_core::{Dataset, Schema, Task};
use std::path::Path;

pub use kiln_core::artifact::profile::{ColumnProfile, DroppedRows, Profile, SplitCounts};

pub mod engine;

/// Runs the stage: [`prepare`], then [`Output::write`] into `out_dir`. Nothing is written
/// when any check fails.
pub fn run(config: &Config, out_dir: &Path) -> Result<Output> {
    let out = prepare(config)?;
    out.write(out_dir)?;
    Ok(out)
}

/// Load, split, fit on train and transform, in memory: the splits, schema and profile of
/// the dataset artifact, written by nothing until [`Output::write`].
pub fn prepare(config: &Config) -> Result<Output> {
    let _span = tracing::info_span!("preprocess").entered();
    if let Some((key, msg)) = config.problems().into_iter().next() {
        return Err(PreprocessError::Invalid(format!("{key}: {msg}")));
    }
    let (mut main, mut test_src, idx_layout) = load(config)?;
    tracing::info!(rows = main.df.height(), columns = main.df.width(), "loaded");
    let target = config.target.as_str();
    let names = main.columns();
    if !names.iter().any(|n| n == target) {
        // one column whose name holds another delimiter: the file is split wrongly
        let delimiter = match (&config.source, names.as_slice()) {
            (Source::Csv { .. }, [only]) => [';', '\t', '|', ',']
                .into_iter()
                .find(|d| only.contains(*d))
                .map(|d| format!("; the header looks separated by {d:?}: set `delimiter = {d:?}` in the source"))
                .unwrap_or_default(),
            _ => String::new(),
        };
        return Err(PreprocessError::Invalid(format!(
            "{}: target column `{target}` not found{}; columns are: {}{delimiter}",
            main.name(),
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
    let row_id = config.split.row_id.as_deref();
    let features = engine::feature_columns(&names, target, row_id, &main.name())?;
    let plan = &match (&config.steps, &config.source) {
        (Some(written), _) => written.clone(),
        (None, Source::Idx { .. } | Source::Images { .. }) => Vec::new(),
        (None, _) => {
            let df = match row_id {
                Some(id) => main
                    .df
                    .drop(id)
                    .map_err(|e| PreprocessError::Invalid(e.to_string()))?,
                None => main.df.clone(),
            };
            let suggested = suggest::default_steps(&df, target, &config.column_types)?;
            tracing::info!(
                steps = %suggested
                    .iter()
                    .map(|s| serde_json::to_string(s).unwrap_or_default())
                    .collect::<Vec<_>>()
                    .join(", "),
                "no `steps` given: the steps `kiln init` would write"
            );
            suggested
        }
    };
    let w = features.len();
    let removed = steps::removed_columns(plan, &features);
    let skipped_files: Vec<_> = (main.skipped.drain(..))
        .chain(test_src.iter_mut().flat_map(|t| t.skipped.drain(..)))
        .collect();
    let mut dropped = DroppedRows {
        null_target: main.drop_null_target(target)?,
        unreadable_files: skipped_files.len(),
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
        if !plan
            .iter()
            .any(|s| matches!(s, Step::DropNulls { .. } | Step::Dedupe {}))
        {
            return Ok(());
        }
        let y = f.text(target)?;
        let (keep, [nulls, dups]) = steps::row_steps(plan, raw, &features, &y, &text)?;
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

    // Target -> class indices (labels sorted numerically when they are numbers), or
    // regression values.
    let task = match (&config.positive_class, config.task) {
        (Some(_), _) => Some(Task::Classification),
        (None, t) => t,
    };
    let main_target = encode_target(&main, target, task)?;
    let task = main_target.task();
    let (class_labels, labels, values) = match main_target {
        Target::Classes { labels: l, names } => (names, l, Vec::new()),
        Target::Values(v) => (Vec::new(), vec![0u32; v.len()], v),
    };
    let mut test_labels = match (&test_src, task) {
        (Some(t), Task::Classification) => Some(map_labels(t, target, &class_labels)?),
        _ => None,
    };
    // One class against the rest: `not <value>` = 0, `<value>` = 1.
    let (class_labels, labels) = match &config.positive_class {
        Some(pos) => {
            let p = positive_index(pos, &class_labels, target)?;
            let bin =
                |l: &[u32]| -> Vec<u32> { l.iter().map(|&x| u32::from(x as usize == p)).collect() };
            test_labels = test_labels.map(|t| bin(&t));
            (vec![format!("not {pos}"), pos.clone()], bin(&labels))
        }
        None => (class_labels, labels),
    };
    let test_target = match &test_src {
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
    // where each row came from, for messages; the frames themselves are not needed any
    // more: their features and targets are extracted
    let main_sites = main.sites();
    let test_sites = test_src.as_ref().map(Frame::sites);
    let row_ids = match row_id {
        Some(id) => {
            let ids = main.text(id)?;
            if let Some(i) = ids.iter().position(String::is_empty) {
                return Err(PreprocessError::Invalid(format!(
                    "{}: the row id `{id}` is empty; split.row_id needs a value in every row",
                    main_sites.site(i)
                )));
            }
            Some(ids)
        }
        None => None,
    };
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
    let [tr, va, te] = match &row_ids {
        Some(ids) => split::hash_split(ids, config.split.valid, test_frac, config.seed)?,
        None => split::stratified_split(
            &labels,
            class_labels.len().max(1),
            config.split.valid,
            test_frac,
            config.split.stratify && task == Task::Classification,
            config.seed,
        )?,
    };
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
        let fitted = steps::fit(plan, &train_raw, &features, &nulls, &train_cells, &text);
        (fitted, profile.join())
    });
    let (transforms, feature_names, train_x) = fitted?;
    let profile_cols = profile_cols
        .map_err(|_| PreprocessError::Invalid("internal: the profile thread panicked".into()))?;
    // the features as an image, while the steps kept one feature per pixel
    let image = match &config.source {
        Source::Images {
            image, channels, ..
        } => Some((*channels, *image)),
        Source::Idx { .. } => idx_layout.map(|l| (1, l)),
        _ => None,
    }
    .map(|(channels, [height, width])| kiln_core::ImageShape {
        channels,
        height,
        width,
    })
    .filter(|i| i.len() == feature_names.len() && i.len() == features.len());
    let schema = Schema {
        version: 1,
        input_columns: features.clone(),
        feature_names: feature_names.clone(),
        target: target.to_string(),
        task,
        image,
        class_labels: class_labels.clone(),
        transforms,
    };
    // `site(i)`: where row i of the split came from (`file: row N`)
    let make = |x: Vec<f32>, t: Target, site: &dyn Fn(usize) -> String| -> Result<Dataset> {
        let (labels, values) = match t {
            Target::Classes { labels, .. } => (labels, Vec::new()),
            Target::Values(v) => (Vec::new(), v),
        };
        let fw = feature_names.len().max(1);
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(PreprocessError::Invalid(format!(
                "{}: feature `{}` is {} after the steps; fill it (an `impute` step for missing cells), drop the row, or check the steps (log1p of values at or below -1; a number too large for f32)",
                site(i / fw),
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
    let mut train = make(train_x, pick(&tr), &|i| main_sites.site(tr[i] as usize))?;
    if config.augment.oversample && task == Task::Regression {
        return Err(PreprocessError::Invalid(
            "augment.oversample balances classes, but the target is a regression target; remove `oversample`".into(),
        ));
    }
    let layout = config
        .augment
        .layout(w, config.source.image_size().or(idx_layout))?;
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
        &|i| main_sites.site(va[i] as usize),
    )?;
    drop(valid_raw);
    let test = make(
        schema.apply_with_text(&test_raw, test_cells)?,
        test_target,
        &|i| match &test_sites {
            Some(t) => t.site(i),
            None => main_sites.site(te[i] as usize),
        },
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
        skipped_files,
    };
    Ok(Output {
        schema,
        rows: [train.n_rows(), valid.n_rows(), test.n_rows()],
        dropped,
        augmented,
        shard_rows: config
            .shard_rows
            .unwrap_or_else(|| kiln_core::dataset::shards::default_shard_rows(train.n_features())),
        splits: [train, valid, test],
        profile,
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
    layout: Option<[usize; 3]>,
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

/// The first column names, for messages (`a, b, c, … (+N more)`).
pub fn preview(names: &[String]) -> String {
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
