//! profile.json's columns on DataFusion: one aggregate query over the raw train rows
//! (missing and distinct counts; min, max and mean of the numbers), each column's type
//! named as the local engine names it.

use crate::lower::{Columns, f64_of, is_text_type};
use crate::query::{Query, collect};
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::functions_aggregate::expr_fn::{avg, count, count_distinct, max, min};
use datafusion::logical_expr::lit;
use datafusion::prelude::DataFrame;
use kiln_core::artifact::profile::ColumnProfile;
use kiln_preprocess::{PreprocessError, Result};

/// The polars-style name profile.json gives an Arrow type.
pub(crate) fn dtype_name(t: &DataType) -> String {
    match t {
        DataType::Int8 => "i8".into(),
        DataType::Int16 => "i16".into(),
        DataType::Int32 => "i32".into(),
        DataType::Int64 => "i64".into(),
        DataType::UInt8 => "u8".into(),
        DataType::UInt16 => "u16".into(),
        DataType::UInt32 => "u32".into(),
        DataType::UInt64 => "u64".into(),
        DataType::Float32 => "f32".into(),
        DataType::Float64 => "f64".into(),
        DataType::Boolean => "bool".into(),
        t if is_text_type(t) => "str".into(),
        t => t.to_string().to_lowercase(),
    }
}

/// profile.json's columns (`kinds`: each feature's name, whether it is text, and its
/// type as profile.json names it): missing share, distinct count, and for numbers min,
/// max and mean, over the raw train rows (one query).
pub(crate) fn profile(
    q: &Query,
    train: &DataFrame,
    raw: &Columns,
    kinds: &[(String, bool, String)],
    n_train: usize,
) -> Result<Vec<ColumnProfile>> {
    let mut aggs = Vec::new();
    for (f, text, _) in kinds {
        let e = raw.get(f).cloned().unwrap_or(lit(0f32));
        if *text {
            aggs.push(count(e.clone()));
            aggs.push(count_distinct(e));
        } else {
            let x = f64_of(e.clone());
            aggs.push(count(x.clone()));
            aggs.push(count_distinct(e));
            aggs.push(min(x.clone()));
            aggs.push(max(x.clone()));
            aggs.push(avg(x));
        }
    }
    let batches = q.run(collect(train.clone().aggregate(vec![], aggs).map_err(
        |e| PreprocessError::Invalid(format!("DataFusion could not plan a query: {e}")),
    )?))?;
    let Some(b) = batches.iter().find(|b| b.num_rows() > 0) else {
        return Ok(Vec::new());
    };
    let int = |j: usize| b.column(j).as_primitive::<Int64Type>().value(0) as usize;
    let float = |j: usize| {
        let a = b.column(j);
        if a.is_null(0) {
            f64::NAN
        } else {
            a.as_primitive::<Float64Type>().value(0)
        }
    };
    let mut out = Vec::with_capacity(kinds.len());
    let mut j = 0;
    for (f, text, dtype) in kinds {
        let present = int(j);
        let distinct = int(j + 1);
        let (lo, hi, mean) = if *text {
            j += 2;
            (f64::NAN, f64::NAN, f64::NAN)
        } else {
            j += 5;
            (float(j - 3), float(j - 2), float(j - 1))
        };
        let missing = n_train - present;
        out.push(ColumnProfile {
            name: f.clone(),
            dtype: dtype.clone(),
            null_share: missing as f64 / n_train.max(1) as f64,
            distinct,
            distinct_estimated: false,
            min: lo,
            max: hi,
            mean,
            missing,
        });
    }
    Ok(out)
}
