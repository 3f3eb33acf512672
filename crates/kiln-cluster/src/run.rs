//! A preprocess stage on DataFusion or a Ballista cluster: the source registered as a
//! table, the target's classes and the split (`kiln_split` over `split.row_id`) as
//! queries, the steps fitted by kiln-preprocess's own `fit_rows` over [`DfTrainRows`],
//! and one last query, every transform lowered into it and ordered by the row id, whose
//! rows kiln writes as the sharded dataset artifact with its schema and profile.

use crate::fit::DfTrainRows;
use crate::lower::Columns;
use crate::profile::{dtype_name, profile};
use crate::query::{Failure, Query, classify, collect};
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Float32Type, Int64Type, UInt8Type, UInt32Type};
use datafusion::functions_aggregate::expr_fn::count;
use datafusion::logical_expr::{Expr, cast, col, lit, when};
use datafusion::prelude::ident;
use futures_util::StreamExt;
use kiln_core::artifact::profile::DroppedRows;
use kiln_core::dataset::ShardSink;
use kiln_core::dataset::shards::{Split, TargetKind};
use kiln_core::{Dataset, Schema, Task};
use kiln_preprocess::engine::{
    Text, feature_columns, fit_rows, not_found, positive_index, preview, save_unaugmented,
    sort_classes, step_op,
};
use kiln_preprocess::{ColumnType, Config, PreprocessError, Result, Step, Streamed};
use std::collections::BTreeMap;
use std::path::Path;

fn invalid(m: String) -> PreprocessError {
    PreprocessError::Invalid(m)
}

fn df_err(e: datafusion::error::DataFusionError) -> PreprocessError {
    invalid(format!("DataFusion could not plan a query: {e}"))
}

/// The first engine-side cell of `b`'s column `j` as text.
fn text_at(b: &RecordBatch, j: usize, i: usize) -> String {
    let a = b.column(j);
    match a.data_type() {
        DataType::Utf8 => a.as_string::<i32>().value(i).to_string(),
        _ => datafusion::arrow::util::display::array_value_to_string(a, i).unwrap_or_default(),
    }
}

/// Runs `config` on its engine into `out_dir`. A failure that a bad row of the source
/// caused is located by the local engine's reader, so the message names the file and
/// row exactly as a local run's does.
pub fn run(
    config: &Config,
    out_dir: &Path,
    progress: &dyn kiln_core::Progress,
) -> Result<Streamed> {
    match run_inner(config, out_dir, progress) {
        Ok(s) => Ok(s),
        Err(e) if classify(&e.to_string()) == Failure::Data => Err(locate(config, out_dir, e)),
        Err(e) => Err(e),
    }
}

/// The local engine's error for the row that made `e`, or `e` when the local engine
/// finds none.
fn locate(config: &Config, out_dir: &Path, e: PreprocessError) -> PreprocessError {
    tracing::info!("the engine failed on the data; reading the source locally to name the row");
    let mut local = config.clone();
    local.engine = kiln_preprocess::Engine::Local;
    local.scheduler = None;
    let dir = out_dir.join(".locate");
    let found = kiln_preprocess::run_streamed(&local, &dir);
    std::fs::remove_dir_all(&dir).ok();
    match found {
        Err(local_error) => invalid(format!("{local_error} (the engine said: {e})")),
        Ok(_) => e,
    }
}

fn run_inner(
    config: &Config,
    out_dir: &Path,
    progress: &dyn kiln_core::Progress,
) -> Result<Streamed> {
    let _span = tracing::info_span!("preprocess", engine = config.engine.name()).entered();
    if let Some((key, msg)) = config.problems().into_iter().next() {
        return Err(invalid(format!("{key}: {msg}")));
    }
    if let Some((key, _)) = config
        .source
        .named_paths()
        .iter()
        .find(|(k, _)| *k == "test")
    {
        return Err(invalid(format!(
            "source.{key}: a separate test file runs on engine = \"local\" only; on {} the split's test fraction comes from split.test",
            config.engine.name()
        )));
    }
    if !config.augment.is_off() {
        return Err(invalid(format!(
            "augment runs on engine = \"local\" only, not \"{}\"",
            config.engine.name()
        )));
    }
    let Some(row_id) = config.split.row_id.as_deref() else {
        return Err(invalid("split.row_id: needed on this engine".into()));
    };
    std::fs::create_dir_all(out_dir).map_err(|source| PreprocessError::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let files = kiln_preprocess::source_files(&config.source)?;
    let shown: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let source_name = match shown.len() {
        0 => return Err(invalid("the source matches no file".into())),
        1 => shown[0].clone(),
        n => format!("{} (+{} more files)", shown[0], n - 1),
    };
    let q = Query::new(config.engine, config.scheduler.as_deref())?;
    let ctx = q
        .block_on(crate::session::context(
            config.engine,
            config.scheduler.as_deref(),
            config.memory_mb,
        ))
        .map_err(|e| invalid(e.to_string()))?;
    let schema = q
        .block_on(crate::session::register_source(
            &ctx,
            &crate::session::Table::of(config),
            &files,
        ))
        .map_err(|e| invalid(e.to_string()))?;
    let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let type_of = |c: &str| -> DataType {
        schema
            .field_with_name(c)
            .map(|f| f.data_type().clone())
            .unwrap_or(DataType::Null)
    };
    let target = config.target.as_str();
    if !names.iter().any(|n| n == target) {
        return Err(invalid(format!(
            "{source_name}: {}",
            not_found("target column", target, &names)
        )));
    }
    for c in config.column_types.keys() {
        if !names.contains(c) {
            return Err(invalid(format!(
                "column_types: column `{c}` does not exist; columns are: {}",
                preview(&names)
            )));
        }
    }
    let features = feature_columns(&names, target, Some(row_id), &source_name)?;
    let plan: Vec<Step> = match &config.steps {
        Some(s) => s.clone(),
        None => kiln_preprocess::engine::suggested_steps(config)?,
    };
    for (i, s) in plan.iter().enumerate() {
        if matches!(
            s,
            Step::HashText { .. } | Step::Dedupe {} | Step::DropNulls { .. }
        ) {
            return Err(invalid(format!(
                "steps[{i}]: op = \"{}\" has no DataFusion form yet; run this stage with engine = \"local\", or use impute instead of drop_nulls (docs/scale.md lists what each engine runs)",
                step_op(s)
            )));
        }
    }
    let is_text = |c: &str| match config.column_types.get(c) {
        Some(ColumnType::Text) => true,
        Some(ColumnType::Number) => false,
        None => !type_of(c).is_numeric(),
    };
    // the source columns as kiln reads them: numbers as f64 then f32, text as text
    let mut columns = Columns::default();
    for f in &features {
        let e = if is_text(f) {
            columns.text.insert(f.clone());
            cast(ident(f), DataType::Utf8)
        } else {
            cast(cast(ident(f), DataType::Float64), DataType::Float32)
        };
        columns.cols.push((f.clone(), e));
    }
    let raw_columns = columns.clone();

    // The target: its classes (sorted as kiln sorts them) or values.
    let target_type = type_of(target);
    let float_target = matches!(target_type, DataType::Float32 | DataType::Float64);
    let task = match (&config.positive_class, config.task) {
        (Some(_), _) => Task::Classification,
        (None, Some(t)) => t,
        (None, None) if float_target => Task::Regression,
        (None, None) => Task::Classification,
    };
    let present = if float_target {
        ident(target)
            .is_not_null()
            .and(ident(target).eq(ident(target)))
    } else {
        ident(target).is_not_null()
    };
    let source = q.run(ctx.table("source"))?;
    let base = source.clone().filter(present.clone()).map_err(df_err)?;
    let counts = q.run(collect(
        source
            .clone()
            .aggregate(
                vec![],
                vec![
                    count(lit(1)),
                    count(when(present, lit(1)).end().map_err(df_err)?),
                ],
            )
            .map_err(df_err)?,
    ))?;
    let (total, with_target) = counts
        .iter()
        .find(|b| b.num_rows() > 0)
        .map(|b| {
            (
                b.column(0).as_primitive::<Int64Type>().value(0) as usize,
                b.column(1).as_primitive::<Int64Type>().value(0) as usize,
            )
        })
        .unwrap_or((0, 0));
    if with_target == 0 {
        return Err(invalid(format!(
            "{source_name}: the target column `{target}` is empty in every row"
        )));
    }
    let (classes, y): (Vec<String>, Expr) = match task {
        Task::Regression => {
            if !target_type.is_numeric() {
                return Err(invalid(format!(
                    "target `{target}` holds {target_type} values; a regression target must be numeric (or set `task = \"classification\"`)"
                )));
            }
            (Vec::new(), cast(ident(target), DataType::Float32))
        }
        Task::Classification => {
            let distinct = q.run(collect(
                base.clone()
                    .select(vec![cast(ident(target), DataType::Utf8).alias("t")])
                    .and_then(|d| d.distinct())
                    .map_err(df_err)?,
            ))?;
            let mut classes = Vec::new();
            for b in &distinct {
                for i in 0..b.num_rows() {
                    let cell = text_at(b, 0, i);
                    if float_target {
                        let x: f64 = cell.trim().parse().unwrap_or(f64::NAN);
                        if x.fract() != 0.0 || x.abs() > 9.0e15 {
                            return Err(invalid(format!(
                                "{source_name}: target `{target}` is {x}, which is not a class: a classification target takes text or whole numbers; set `task = \"regression\"` to predict the number"
                            )));
                        }
                        classes.push((x as i64).to_string());
                    } else {
                        classes.push(cell);
                    }
                }
            }
            classes.sort();
            classes.dedup();
            sort_classes(&mut classes);
            let as_text = if float_target {
                cast(cast(ident(target), DataType::Int64), DataType::Utf8)
            } else {
                cast(ident(target), DataType::Utf8)
            };
            match &config.positive_class {
                Some(pos) => {
                    positive_index(pos, &classes, target)?;
                    let y = when(as_text.eq(lit(pos.clone())), lit(1u32))
                        .otherwise(lit(0u32))
                        .map_err(df_err)?;
                    (vec![format!("not {pos}"), pos.clone()], y)
                }
                None => {
                    if classes.len() < 2 {
                        return Err(invalid(format!(
                            "{source_name}: target `{target}` has a single class ({}); a classifier needs at least two",
                            classes.first().cloned().unwrap_or_default()
                        )));
                    }
                    let mut case = when(as_text.clone().eq(lit(classes[0].clone())), lit(0u32));
                    for (k, c) in classes.iter().enumerate().skip(1) {
                        case.when(as_text.clone().eq(lit(c.clone())), lit(k as u32));
                    }
                    (classes, case.otherwise(lit(0u32)).map_err(df_err)?)
                }
            }
        }
    };

    // The split: a seeded hash of the row id, computed where the rows are.
    let test_frac = config.split.test.unwrap_or(0.2);
    let split = crate::udf::split_expr(
        cast(ident(row_id), DataType::Utf8),
        config.seed,
        config.split.valid,
        test_frac,
    );
    let with_split = base
        .clone()
        .with_column("__split", split)
        .and_then(|d| d.with_column("__y", y))
        .map_err(df_err)?;
    let per_split = q.run(collect(
        with_split
            .clone()
            .aggregate(vec![col("__split")], vec![count(lit(1)).alias("n")])
            .map_err(df_err)?,
    ))?;
    let mut rows = [0usize; 3];
    for b in &per_split {
        let (s, n) = (
            b.column(0).as_primitive::<UInt8Type>(),
            b.column(1).as_primitive::<Int64Type>(),
        );
        for i in 0..b.num_rows() {
            rows[s.value(i).min(2) as usize] += n.value(i) as usize;
        }
    }
    if rows[0] == 0 || rows[2] == 0 {
        return Err(invalid(format!(
            "the split left {} train and {} test rows; use more data or smaller split fractions",
            rows[0], rows[2]
        )));
    }
    tracing::info!(train = rows[0], valid = rows[1], test = rows[2], "split");
    let train = with_split
        .clone()
        .filter(col("__split").eq(lit(0u8)))
        .map_err(df_err)?;

    // Columns with a missing cell anywhere (kiln's fit needs them imputed first), with
    // the id of a row that misses one.
    let mut nulls: BTreeMap<String, String> = BTreeMap::new();
    let numeric: Vec<&String> = features.iter().filter(|f| !is_text(f)).collect();
    if !numeric.is_empty() {
        let aggs: Vec<Expr> = numeric
            .iter()
            .map(|f| count(raw_columns.get(f).cloned().unwrap_or(lit(0f32))))
            .collect();
        let b = q.run(collect(
            with_split.clone().aggregate(vec![], aggs).map_err(df_err)?,
        ))?;
        if let Some(b) = b.iter().find(|b| b.num_rows() > 0) {
            for (k, f) in numeric.iter().enumerate() {
                let present = b.column(k).as_primitive::<Int64Type>().value(0) as usize;
                if present < with_target {
                    let first = q.run(collect(
                        with_split
                            .clone()
                            .filter(ident(f.as_str()).is_null())
                            .and_then(|d| d.select(vec![cast(ident(row_id), DataType::Utf8)]))
                            .and_then(|d| d.limit(0, Some(1)))
                            .map_err(df_err)?,
                    ))?;
                    let id = first
                        .iter()
                        .find(|b| b.num_rows() > 0)
                        .map(|b| text_at(b, 0, 0))
                        .unwrap_or_default();
                    nulls.insert(
                        (*f).clone(),
                        format!("{source_name}: row with {row_id} = {id}"),
                    );
                }
            }
        }
    }
    let text = Text {
        sites: features
            .iter()
            .filter(|f| is_text(f))
            .map(|f| (f.clone(), format!("{source_name}: column `{f}` holds text")))
            .collect(),
    };

    // Fit: kiln-preprocess's own fitting over statistics the engine computes.
    let mut train_rows = DfTrainRows {
        query: &q,
        train: train.clone(),
        n_rows: rows[0],
        columns,
        queries: 0,
    };
    let (transforms, feature_names) = fit_rows(&plan, &mut train_rows, &features, &nulls, &text)?;
    tracing::info!(queries = train_rows.queries, "fitted");
    let fitted = train_rows.columns;
    if let Some(c) = fitted.text.iter().next() {
        return Err(invalid(format!(
            "column `{c}` holds text and no step encodes it; add {{ op = \"one_hot\", columns = [\"{c}\"] }} (or ordinal), or drop it"
        )));
    }
    let schema_out = Schema {
        version: 1,
        input_columns: features.clone(),
        feature_names: feature_names.clone(),
        target: target.to_string(),
        task,
        image: None,
        class_labels: classes.clone(),
        transforms,
    };

    // The profile of the raw train columns.
    let kinds: Vec<(String, bool, String)> = features
        .iter()
        .map(|f| {
            let dtype = match config.column_types.get(f) {
                Some(ColumnType::Number) => "f64".to_string(),
                _ if is_text(f) => "str".to_string(),
                _ => dtype_name(&type_of(f)),
            };
            (f.clone(), is_text(f), dtype)
        })
        .collect();
    let profile_columns = profile(&q, &train, &raw_columns, &kinds, rows[0])?;
    let class_counts: Vec<(String, usize)> = if task == Task::Classification {
        let b = q.run(collect(
            train
                .clone()
                .aggregate(vec![col("__y")], vec![count(lit(1))])
                .map_err(df_err)?,
        ))?;
        let mut n = vec![0usize; classes.len()];
        for b in &b {
            let (y, c) = (
                b.column(0).as_primitive::<UInt32Type>(),
                b.column(1).as_primitive::<Int64Type>(),
            );
            for i in 0..b.num_rows() {
                if let Some(slot) = n.get_mut(y.value(i) as usize) {
                    *slot += c.value(i) as usize;
                }
            }
        }
        classes.iter().cloned().zip(n).collect()
    } else {
        Vec::new()
    };

    // Last query: every row transformed, in row-id order; kiln writes the shards.
    let mut select: Vec<Expr> = fitted
        .cols
        .iter()
        .map(|(n, e)| cast(e.clone(), DataType::Float32).alias(n.as_str()))
        .collect();
    select.push(col("__y"));
    select.push(col("__split"));
    select.push(cast(ident(row_id), DataType::Utf8).alias("__id"));
    // ordered by the id as typed: integer ids in numeric order
    select.push(ident(row_id).alias("__key"));
    let last = with_split
        .select(select)
        .and_then(|d| d.sort(vec![col("__key").sort(true, false)]))
        .map_err(df_err)?;
    let shard_rows = config
        .shard_rows
        .unwrap_or_else(|| kiln_core::dataset::shards::default_shard_rows(feature_names.len()));
    let mut sink = ShardSink::new(out_dir, &feature_names, target, shard_rows);
    let fw = feature_names.len();
    progress.start(
        "preprocess: writing the shards",
        (rows[0] + rows[1] + rows[2]) as u64,
    );
    let mut stream = q.run(last.execute_stream())?;
    while let Some(batch) = q.block_on(stream.next()) {
        let b = batch.map_err(|e| q.error(&e.to_string()))?;
        let n = b.num_rows();
        progress.advance(n as u64);
        let feats: Vec<_> = (0..fw)
            .map(|j| b.column(j).as_primitive::<Float32Type>())
            .collect();
        let ys = b.column(fw);
        let splits = b.column(fw + 1).as_primitive::<UInt8Type>();
        let mut parts: [Dataset; 3] = std::array::from_fn(|_| Dataset {
            feature_names: feature_names.clone(),
            target: target.to_string(),
            ..Default::default()
        });
        for i in 0..n {
            let part = &mut parts[splits.value(i).min(2) as usize];
            for (j, f) in feats.iter().enumerate() {
                let x = if f.is_null(i) { f32::NAN } else { f.value(i) };
                if !x.is_finite() {
                    return Err(invalid(format!(
                        "{source_name}: the row with {row_id} = {}: feature `{}` is {x} after the steps; fill it (an `impute` step for missing cells), drop the row, or check the steps (log1p of values at or below -1; a number too large for f32)",
                        text_at(&b, fw + 2, i),
                        feature_names[j]
                    )));
                }
                part.features.push(x);
            }
            match task {
                Task::Classification => part.labels.push(ys.as_primitive::<UInt32Type>().value(i)),
                Task::Regression => part.values.push(ys.as_primitive::<Float32Type>().value(i)),
            }
        }
        for (split, part) in Split::ALL.into_iter().zip(&parts) {
            if part.n_rows() > 0 {
                sink.push(split, part)?;
            }
        }
    }
    progress.finish();
    let manifest = sink.finish(match task {
        Task::Classification => TargetKind::ClassIndex,
        Task::Regression => TargetKind::Value,
    })?;
    let profile = save_unaugmented(
        out_dir,
        &schema_out,
        rows,
        class_counts,
        profile_columns,
        DroppedRows {
            null_target: total - with_target,
            ..Default::default()
        },
    )?;
    tracing::info!(
        train = rows[0],
        valid = rows[1],
        test = rows[2],
        shards =
            manifest.train.shards.len() + manifest.valid.shards.len() + manifest.test.shards.len(),
        "split written"
    );
    Ok(Streamed {
        schema: schema_out,
        rows,
        profile,
    })
}
