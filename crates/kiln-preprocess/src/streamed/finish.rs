//! Everything after a streamed preprocess has parsed its source into the spill: the
//! split over the collected targets, the fit through passes over the train rows, the
//! profile, and the last pass that transforms every row and writes the shards.

use super::{Parsed, Streamed, invalid, profile, rows, spill};
use crate::config::Config;
use crate::error::Result;
use crate::steps;
use crate::train_rows::Memory;
use kiln_core::artifact::profile::{AugmentCounts, Profile, SplitCounts};
use kiln_core::dataset::ShardSink;
use kiln_core::dataset::shards::{Split as ShardSplit, TargetKind};
use kiln_core::{Dataset, Schema, Task, TextColumn};
use std::collections::HashMap;
use std::path::Path;

/// Everything after the spill: split, fit, profile, transform and write.
pub(super) fn finish(
    config: &Config,
    out_dir: &Path,
    parsed: Parsed,
    progress: &dyn kiln_core::Progress,
) -> Result<Streamed> {
    let Parsed {
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
    } = parsed;
    let (spill_path, plan) = (spill_path.as_path(), plan.as_slice());
    let target = config.target.as_str();
    // classes sorted as in memory: numerically when every class is an integer
    let mut classes = class_names.clone();
    crate::target::sort_classes(&mut classes);
    let rank: Vec<u32> = class_names
        .iter()
        .map(|c| classes.iter().position(|x| x == c).unwrap_or(0) as u32)
        .collect();
    let mut labels: Vec<u32> = ids
        .iter()
        .map(|&i| rank.get(i as usize).copied().unwrap_or(0))
        .collect();
    drop(ids);
    if task == Task::Classification && config.positive_class.is_none() && classes.len() < 2 {
        return Err(invalid(format!(
            "{source_name}: target `{target}` has a single class ({}); a classifier needs at least two",
            classes.first().cloned().unwrap_or_default()
        )));
    }
    let classes = match &config.positive_class {
        Some(pos) => {
            let p = crate::target::positive_index(pos, &classes, target)?;
            for l in labels.iter_mut() {
                *l = u32::from(*l as usize == p);
            }
            vec![format!("not {pos}"), pos.clone()]
        }
        None => classes,
    };
    let n = labels.len();
    let codes = match split_codes {
        Some(codes) => codes,
        None => {
            let [_, va, te] = crate::split::stratified_split(
                &labels,
                classes.len().max(1),
                config.split.valid,
                config.split.test.unwrap_or(0.2),
                config.split.stratify && task == Task::Classification,
                config.seed,
            )?;
            let mut codes = vec![0u8; n];
            for (code, idx) in [(1u8, &va), (2u8, &te)] {
                for &i in idx.iter() {
                    codes[i as usize] = code;
                }
            }
            codes
        }
    };
    let mut rows = [0usize; 3];
    for &c in &codes {
        rows[c as usize] += 1;
    }
    if rows[0] == 0 || rows[2] == 0 {
        return Err(invalid(format!(
            "the split left {} train and {} test rows; use more data or smaller split fractions",
            rows[0], rows[2]
        )));
    }
    let mut class_counts = vec![0usize; classes.len()];
    for (l, c) in labels.iter().zip(&codes) {
        if let (0, Some(n)) = (*c, class_counts.get_mut(*l as usize)) {
            *n += 1;
        }
    }
    drop(labels);
    tracing::info!(train = rows[0], valid = rows[1], test = rows[2], "split");

    // Fit: each step's statistics from passes over the train rows.
    let mut passes = rows::Passes {
        path: spill_path,
        codes: &codes,
        features: &features,
        text: &text_cols,
        n_train: rows[0],
        shape: Memory {
            data: Vec::new(),
            cells: text_cols
                .iter()
                .map(|c| (c.clone(), TextColumn::default()))
                .collect(),
            n_rows: 0,
        },
        passes: 0,
        progress,
    };
    let (transforms, feature_names) = steps::fit_rows(plan, &mut passes, &features, &nulls, &text)?;
    let schema = Schema {
        version: 1,
        input_columns: features.clone(),
        feature_names: feature_names.clone(),
        target: target.to_string(),
        task,
        image: None,
        class_labels: classes.clone(),
        transforms,
    };

    // Last pass: the profile of the raw train rows, every row transformed and written.
    let shard_rows = config
        .shard_rows
        .unwrap_or_else(|| kiln_core::dataset::shards::default_shard_rows(feature_names.len()));
    let mut sink = ShardSink::new(out_dir, &feature_names, target, shard_rows);
    let mut profiler = profile::Profiler::new(&features, &dtypes, &text_cols);
    let class_index: HashMap<&str, u32> = if config.positive_class.is_some() {
        HashMap::new()
    } else {
        classes
            .iter()
            .enumerate()
            .map(|(i, c)| (c.as_str(), i as u32))
            .collect()
    };
    let positive = config.positive_class.as_deref();
    let float_target =
        schema.task == Task::Classification && classes.iter().all(|c| c.parse::<i64>().is_ok());
    let w = features.len();
    let fw = feature_names.len().max(1);
    let shown: Vec<String> = crate::source_files(&config.source)?
        .iter()
        .map(|f| f.display().to_string())
        .collect();
    let mut offset = 0usize;
    tracing::info!("transforming and writing the shards");
    progress.start("preprocess: writing the shards", codes.len() as u64);
    let written = spill::for_each(spill_path, |c| {
        let n = c.n_rows();
        progress.advance(n as u64);
        let code = &codes[offset..offset + n];
        offset += n;
        let train: Vec<u32> = (0..n).filter(|&i| code[i] == 0).map(|i| i as u32).collect();
        profiler.add(
            &crate::frame::gather(&c.values, w, &train),
            &c.text.iter().map(|t| t.take(&train)).collect::<Vec<_>>(),
        );
        let cells: Vec<(String, TextColumn)> = text_cols.iter().cloned().zip(c.text).collect();
        let x = schema.apply_with_text(&c.values, cells)?;
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(invalid(format!(
                "{}: row {}: feature `{}` is {} after the steps; fill it (an `impute` step for missing cells), drop the row, or check the steps (log1p of values at or below -1; a number too large for f32)",
                shown.get(c.file as usize).cloned().unwrap_or_default(),
                c.rows[i / fw],
                feature_names[i % fw],
                x[i]
            )));
        }
        for (s, split) in ShardSplit::ALL.into_iter().enumerate() {
            let pick: Vec<usize> = (0..n).filter(|&i| code[i] as usize == s).collect();
            if pick.is_empty() {
                continue;
            }
            let mut part = Dataset {
                feature_names: feature_names.clone(),
                target: target.to_string(),
                features: Vec::with_capacity(pick.len() * fw),
                labels: Vec::new(),
                values: Vec::new(),
            };
            for &i in &pick {
                part.features.extend_from_slice(&x[i * fw..(i + 1) * fw]);
                let cell = c.target.get(i).unwrap_or_default();
                match task {
                    Task::Classification => {
                        let name = if float_target {
                            cell.trim()
                                .parse::<f64>()
                                .map_or(cell.to_string(), |v| (v as i64).to_string())
                        } else {
                            cell.to_string()
                        };
                        part.labels.push(match positive {
                            Some(p) => u32::from(name == p),
                            None => class_index.get(name.as_str()).copied().unwrap_or(0),
                        });
                    }
                    Task::Regression => part.values.push(cell.trim().parse().unwrap_or(f32::NAN)),
                }
            }
            sink.push(split, &part)?;
        }
        Ok(())
    });
    progress.finish();
    written?;
    let manifest = sink.finish(match task {
        Task::Classification => TargetKind::ClassIndex,
        Task::Regression => TargetKind::Value,
    })?;
    let profile = save_unaugmented(
        out_dir,
        &schema,
        rows,
        classes.iter().cloned().zip(class_counts).collect(),
        profiler.finish(),
        dropped,
    )?;
    tracing::info!(
        train = rows[0],
        valid = rows[1],
        test = rows[2],
        shards =
            manifest.train.shards.len() + manifest.valid.shards.len() + manifest.test.shards.len(),
        passes = passes.passes + 2,
        "split written"
    );
    Ok(Streamed {
        schema,
        rows,
        profile,
    })
}

/// Writes profile.json (rows per split, the train class counts, the raw train columns,
/// the dropped rows; no augmentation) and schema.json beside the shards of a dataset
/// written row by row; returns the profile. Every engine that streams its rows into a
/// `ShardSink` (this one, kiln-cluster's) ends with it.
pub fn save_unaugmented(
    out_dir: &Path,
    schema: &Schema,
    rows: [usize; 3],
    train_class_counts: Vec<(String, usize)>,
    columns: Vec<kiln_core::artifact::profile::ColumnProfile>,
    dropped_rows: kiln_core::artifact::profile::DroppedRows,
) -> Result<Profile> {
    let profile = Profile {
        rows: SplitCounts {
            train: rows[0],
            valid: rows[1],
            test: rows[2],
        },
        n_features: schema.feature_names.len(),
        train_class_counts,
        columns,
        dropped_rows,
        augmentation: AugmentCounts {
            before: rows[0],
            after: rows[0],
            ..Default::default()
        },
        skipped_files: Vec::new(),
    };
    kiln_core::artifact::save(out_dir, &profile)?;
    kiln_core::write_json(&out_dir.join("schema.json"), schema)?;
    Ok(profile)
}
