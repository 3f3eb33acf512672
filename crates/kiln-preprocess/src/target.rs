//! The target column: class labels (sorted distinct values, or `positive_class` against
//! the rest) or regression values, with rows whose target is missing counted.

use crate::error::{PolarsContext, PreprocessError, Result};
use crate::frame::Frame;
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
pub(crate) fn encode_target(frame: &Frame, target: &str, task: Option<Task>) -> Result<Target> {
    let col = frame
        .df
        .column(target)
        .ctx(|| format!("target `{target}`"))?;
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
    let (classes, labels) = classes_of(col, target, &|i| frame.site(i))?;
    if classes.len() < 2 {
        return Err(PreprocessError::Invalid(format!(
            "{}: target `{target}` has a single class ({}); a classifier needs at least two",
            frame.name(),
            classes.first().cloned().unwrap_or_default()
        )));
    }
    Ok(Target::Classes {
        labels,
        names: classes,
    })
}

/// The classes of a target column (sorted: numerically when every class is an integer)
/// and each row's class index. Numbers must be integers: a class task on the target
/// 0.7 is an error naming it (set `task = "regression"`), never 0.
fn classes_of(
    col: &Column,
    target: &str,
    site: &dyn Fn(usize) -> String,
) -> Result<(Vec<String>, Vec<u32>)> {
    let dt = col.dtype().clone();
    let as_text: Vec<String> = if dt.is_float() {
        let v = col
            .cast(&DataType::Float64)
            .ctx(|| format!("target `{target}` as numbers"))?;
        let v = v.f64().ctx(|| target.to_string())?;
        let mut out = Vec::with_capacity(v.len());
        for (i, x) in v.into_no_null_iter().enumerate() {
            if x.fract() != 0.0 || x.abs() > 9.0e15 {
                return Err(PreprocessError::Invalid(format!(
                    "{}: target `{target}` is {x}, which is not a class: a classification target takes text or whole numbers; set `task = \"regression\"` to predict the number",
                    site(i)
                )));
            }
            out.push((x as i64).to_string());
        }
        out
    } else if is_numeric(&dt) {
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
    sort_classes(&mut classes);
    classes.dedup();
    let index: std::collections::HashMap<&str, u32> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i as u32))
        .collect();
    let labels = as_text
        .iter()
        .map(|s| index.get(s.as_str()).copied().unwrap_or(0))
        .collect();
    Ok((classes, labels))
}

/// The test source's labels as indices into the train source's `classes` (a test set
/// may hold a single class; one the train set never shows is an error).
pub(crate) fn map_labels(frame: &Frame, target: &str, classes: &[String]) -> Result<Vec<u32>> {
    let col = frame
        .df
        .column(target)
        .ctx(|| format!("target `{target}`"))?;
    let (test_classes, test_labels) = classes_of(col, target, &|i| frame.site(i))?;
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

/// Sorts class names: numerically when both are integers, else as text.
pub fn sort_classes(classes: &mut [String]) {
    classes.sort_by(|a, b| match (a.parse::<i64>(), b.parse::<i64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => a.cmp(b),
    });
}

/// The index of `positive_class` among the target's `classes`, or the error that names
/// the nearest class.
pub fn positive_index(pos: &str, classes: &[String], target: &str) -> Result<usize> {
    classes.iter().position(|c| c == pos).ok_or_else(|| {
        PreprocessError::Invalid(format!(
            "positive_class `{pos}` is not a value of target `{target}`{}; its values are: {}",
            kiln_core::nearest(pos, classes)
                .map(|n| format!(" (did you mean `{n}`?)"))
                .unwrap_or_default(),
            crate::preview(classes)
        ))
    })
}
