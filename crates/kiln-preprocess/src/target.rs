//! The target column: class labels (sorted distinct values, or `positive_class` against
//! the rest) or regression values, with rows whose target is missing counted.

use crate::error::{PolarsContext, PreprocessError, Result};
use crate::load::*;
use kiln_core::Task;
use polars::prelude::*;

/// A target column, encoded.
pub(crate) enum Target {
    /// Class index per row, and the class names in index order.
    Classes {
        labels: Vec<u32>,
        names: Vec<String>,
    },
    /// Regression value per row.
    Values(Vec<f32>),
}

impl Target {
    pub(crate) fn task(&self) -> Task {
        match self {
            Target::Classes { .. } => Task::Classification,
            Target::Values(_) => Task::Regression,
        }
    }
}

/// Encodes the target column: a float column (or `task = "regression"`) gives values,
/// anything else class indices.
pub(crate) fn encode_target(df: &DataFrame, target: &str, task: Option<Task>) -> Result<Target> {
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

pub(crate) fn map_labels(df: &DataFrame, target: &str, classes: &[String]) -> Result<Vec<u32>> {
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
