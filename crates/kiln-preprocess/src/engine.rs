//! What another engine (kiln-cluster's DataFusion and Ballista) needs to fit the steps
//! exactly as this crate does: the statistics it must supply per step ([`TrainRows`]:
//! numeric statistics and category counts of the train rows after the transforms so
//! far) and the one fitting routine ([`fit_rows`]) that turns them into the transforms.
//!
//! [`TrainRows`]: crate::engine::TrainRows
//! [`fit_rows`]: crate::engine::fit_rows

pub use crate::preview;
pub use crate::steps::{Text, fit_rows, op as step_op};
pub use crate::streamed::save_unaugmented;
pub use crate::target::{positive_index, sort_classes};
pub use crate::train_rows::{Need, Stats, TrainRows, interpolate, quantile_ranks};

/// The steps a stage whose `steps` are left out gets (what `kiln init` would write),
/// decided on the first rows of its first file as the streamed path decides them.
pub fn suggested_steps(config: &crate::Config) -> crate::Result<Vec<crate::Step>> {
    let (files, csv) = crate::streamed::streamable(config).map_err(|why| {
        crate::PreprocessError::Invalid(format!("cannot suggest steps for this source: {why}"))
    })?;
    let first = files
        .first()
        .ok_or_else(|| crate::PreprocessError::Invalid("the source matches no file".into()))?;
    crate::streamed::suggested(first, config, &csv)
}

/// The columns the steps remove (`drop`, or left out by `select`).
pub fn removed_columns(steps: &[crate::Step], features: &[String]) -> Vec<String> {
    crate::steps::removed_columns(steps, features)
}

/// `{what} `column` not found (did you mean …?); columns are: …`, the message of a
/// column a config or a flag names that the table lacks.
pub fn not_found(what: &str, column: &str, names: &[String]) -> String {
    format!(
        "{what} `{column}` not found{}; columns are: {}",
        kiln_core::nearest(column, names)
            .map(|n| format!(" (did you mean `{n}`?)"))
            .unwrap_or_default(),
        preview(names)
    )
}

/// Checks that `split.row_id` names a column of `names` (from `source`) other than the
/// target.
pub fn check_row_id(id: &str, target: &str, names: &[String], source: &str) -> crate::Result<()> {
    if id == target {
        return Err(crate::PreprocessError::Invalid(format!(
            "split.row_id: `{id}` is the target; name a column that identifies each row"
        )));
    }
    if !names.iter().any(|n| n == id) {
        return Err(crate::PreprocessError::Invalid(format!(
            "{source}: {}",
            not_found("split.row_id column", id, names)
        )));
    }
    Ok(())
}

/// The feature columns of a table with columns `names` (from `source`): all but the
/// target and the row id (checked first); an error when none is left.
pub fn feature_columns(
    names: &[String],
    target: &str,
    row_id: Option<&str>,
    source: &str,
) -> crate::Result<Vec<String>> {
    if let Some(id) = row_id {
        check_row_id(id, target, names, source)?;
    }
    let features: Vec<String> = names
        .iter()
        .filter(|n| *n != target && Some(n.as_str()) != row_id)
        .cloned()
        .collect();
    if features.is_empty() {
        return Err(crate::PreprocessError::Invalid(
            "the data has no feature columns besides the target".into(),
        ));
    }
    Ok(features)
}
