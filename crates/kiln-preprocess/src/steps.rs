//! Fitting the column steps on the train split, in the order written: each step's
//! statistics come from the train rows as the earlier steps left them, and each fitted
//! `Transform` is applied with kiln-core's own `Transform::apply_to`, so that
//! `Schema::apply` on raw rows reproduces the training features bit for bit.
//!
//! One file, over 600 lines: one `fit` arm per step, each next to the statistics it
//! needs; the steps share the column lookup and the "as the earlier steps left them" rows.

use crate::config::{Columns, ImputeStrategy, ImputeValue, Step};
use crate::error::{PreprocessError, Result};
use crate::train_rows::{Memory, Need, Stats, TrainRows};
use kiln_core::{TextColumn, Transform};
use std::collections::BTreeMap;

fn invalid(m: String) -> PreprocessError {
    PreprocessError::Invalid(m)
}

/// The step's name as written in a pipeline file.
pub fn op(step: &Step) -> &'static str {
    match step {
        Step::Scale { .. } => "scale",
        Step::Standardize { .. } => "standardize",
        Step::Impute { .. } => "impute",
        Step::Clip { .. } => "clip",
        Step::Log1p { .. } => "log1p",
        Step::MinMax { .. } => "min_max",
        Step::Drop { .. } => "drop",
        Step::Select { .. } => "select",
        Step::DropNulls { .. } => "drop_nulls",
        Step::Dedupe {} => "dedupe",
        Step::OneHot { .. } => "one_hot",
        Step::Ordinal { .. } => "ordinal",
        Step::HashText { .. } => "hash_text",
        Step::PiecewiseLinear { .. } => "piecewise_linear",
    }
}

/// The kind of columns a step takes.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Numeric,
    Text,
    Both,
}

fn kind(step: &Step) -> Kind {
    match step {
        Step::OneHot { .. } | Step::Ordinal { .. } | Step::HashText { .. } => Kind::Text,
        Step::Impute { .. }
        | Step::DropNulls { .. }
        | Step::Drop { .. }
        | Step::Select { .. }
        | Step::Dedupe {} => Kind::Both,
        _ => Kind::Numeric,
    }
}

/// The steps that turn a text column into numbers, as a hint.
fn encode_hint(c: &str) -> String {
    format!(
        "encode it with {{ op = \"one_hot\", columns = [\"{c}\"] }}, {{ op = \"ordinal\", columns = [\"{c}\"] }} or {{ op = \"hash_text\", columns = [\"{c}\"], n_features = 64 }}, or drop it with {{ op = \"drop\", columns = [\"{c}\"] }}"
    )
}

fn unknown(i: usize, step: &Step, name: &str, names: &[String]) -> PreprocessError {
    invalid(format!(
        "steps[{i}] ({}): column `{name}` does not exist at this step{}; the columns are: {}",
        op(step),
        kiln_core::nearest(name, names)
            .map(|c| format!(" (did you mean `{c}`?)"))
            .unwrap_or_default(),
        crate::preview(names)
    ))
}

fn resolve_list(i: usize, step: &Step, list: &[String], names: &[String]) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for n in list {
        if !names.contains(n) {
            return Err(unknown(i, step, n, names));
        }
        if out.contains(n) {
            return Err(invalid(format!(
                "steps[{i}] ({}): column `{n}` is listed twice; list it once",
                op(step)
            )));
        }
        out.push(n.clone());
    }
    Ok(out)
}

fn resolve(
    i: usize,
    step: &Step,
    columns: &Columns,
    names: &[String],
    text: &Text,
) -> Result<Vec<String>> {
    let k = kind(step);
    let numeric = || names.iter().filter(|n| !text.is(n)).cloned().collect();
    let textual = || names.iter().filter(|n| text.is(n)).cloned().collect();
    let out: Vec<String> = match columns {
        Columns::Group(g) if g == "numeric" => numeric(),
        Columns::Group(g) if g == "categorical" => textual(),
        Columns::Group(g) if g == "all" => match k {
            Kind::Numeric => numeric(),
            Kind::Text => textual(),
            Kind::Both => names.to_vec(),
        },
        Columns::Group(g) => {
            return Err(invalid(format!(
                "steps[{i}] ({}): unknown column group `{g}`; use \"numeric\", \"categorical\", \"all\" or a list of names",
                op(step)
            )));
        }
        Columns::Named(list) => resolve_list(i, step, list, names)?,
    };
    for c in &out {
        match (k, text.is(c)) {
            (Kind::Numeric, true) => {
                return Err(invalid(format!(
                    "steps[{i}] ({}): column `{c}` holds text ({}), and {} computes with numbers; {}; if it should hold numbers, fix the cell or list the marker in the source's `null_values`",
                    op(step),
                    text.site(c),
                    op(step),
                    encode_hint(c)
                )));
            }
            (Kind::Text, false) => {
                return Err(invalid(format!(
                    "steps[{i}] ({}): column `{c}` holds numbers, and {} encodes text (categorical) columns; leave it out, or use a numeric step",
                    op(step),
                    op(step)
                )));
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The text columns of the raw rows: their names and where each shows a cell that is
/// not a number (`file: row N holds `x``), for messages.
#[derive(Debug, Clone, Default)]
pub struct Text {
    /// Text column → where it first shows text (for messages; may be empty).
    pub sites: BTreeMap<String, String>,
}

impl Text {
    fn is(&self, c: &str) -> bool {
        self.sites.contains_key(c)
    }
    fn site(&self, c: &str) -> String {
        self.sites.get(c).cloned().unwrap_or_default()
    }
}

/// Frame rows to keep after the row steps (`drop_nulls`, `dedupe`, in the order
/// written), given raw feature rows (NaN = missing) and the target as text; returns the
/// kept row indices and how many rows each kind of step dropped
/// (`[null_features, duplicates]`).
pub(crate) fn row_steps(
    steps: &[Step],
    raw: &[f32],
    features: &[String],
    target: &[String],
    text: &Text,
) -> Result<(Vec<usize>, [usize; 2])> {
    let w = features.len();
    let mut keep: Vec<usize> = (0..target.len()).collect();
    let mut dropped = [0usize; 2];
    for (i, step) in steps.iter().enumerate() {
        let before = keep.len();
        match step {
            Step::DropNulls { columns } => {
                let idx: Vec<usize> = resolve(i, step, columns, features, text)?
                    .iter()
                    .map(|c| features.iter().position(|f| f == c).unwrap_or(0))
                    .collect();
                keep.retain(|&r| idx.iter().all(|&j| !raw[r * w + j].is_nan()));
                dropped[0] += before - keep.len();
            }
            Step::Dedupe {} => {
                let mut seen = std::collections::HashSet::new();
                keep.retain(|&r| {
                    let bits: Vec<u32> = raw[r * w..(r + 1) * w]
                        .iter()
                        .map(|x| x.to_bits())
                        .collect();
                    seen.insert((bits, target[r].clone()))
                });
                dropped[1] += before - keep.len();
            }
            _ => {}
        }
    }
    Ok((keep, dropped))
}

/// Feature columns that a `drop` or `select` step removes (whatever comes before it).
pub(crate) fn removed_columns(steps: &[Step], features: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for s in steps {
        match s {
            Step::Drop { columns } => out.extend(columns.iter().cloned()),
            Step::Select { columns } => {
                out.extend(features.iter().filter(|f| !columns.contains(f)).cloned())
            }
            _ => {}
        }
    }
    out
}

/// Bin edges of `bins` equal-frequency bins of `present`: its quantiles at 0, 1/bins, …,
/// 1 (linear interpolation, as numpy), rounded to f32, ties merged — strictly
/// increasing, fewer than `bins + 1` when values repeat.
#[cfg(test)]
pub(crate) fn bin_edges(present: &[f32], bins: usize) -> Vec<f32> {
    let need = Need {
        quantiles: bin_quantiles(bins),
        ..Default::default()
    };
    edges_from_quantiles(&Stats::of(present, &need).quantiles)
}

/// The fractions 0, 1/bins, …, 1 whose quantiles are the bin edges.
fn bin_quantiles(bins: usize) -> Vec<f64> {
    (0..=bins).map(|k| k as f64 / bins as f64).collect()
}

/// Bin edges from the quantiles at [`bin_quantiles`]: rounded to f32, ties merged.
fn edges_from_quantiles(quantiles: &[f64]) -> Vec<f32> {
    let mut edges: Vec<f32> = Vec::new();
    for &q in quantiles {
        let e = q as f32;
        if edges.last().is_none_or(|&last| e > last) {
            edges.push(e);
        }
    }
    edges
}

/// The fill value of `strategy` from the present (non-NaN) values.
#[cfg(test)]
pub(crate) fn impute_value(strategy: ImputeStrategy, value: Option<f32>, present: &[f32]) -> f32 {
    let need = need(&Step::Impute {
        strategy,
        value: None,
        columns: Columns::default(),
    })
    .unwrap_or_default();
    impute_with(strategy, value, &Stats::of(present, &need))
}

/// The fill value of `strategy` from a column's statistics.
fn impute_with(strategy: ImputeStrategy, value: Option<f32>, s: &Stats) -> f32 {
    match strategy {
        ImputeStrategy::Constant => value.unwrap_or(0.0),
        ImputeStrategy::Mean => s.mean as f32,
        ImputeStrategy::Median => s.quantiles.first().copied().unwrap_or(f64::NAN) as f32,
        ImputeStrategy::MostFrequent => s.mode,
    }
}

/// What a numeric step needs to know of its columns (None: nothing).
fn need(step: &Step) -> Option<Need> {
    let quantiles = |q: Vec<f64>| Need {
        quantiles: q,
        ..Default::default()
    };
    Some(match step {
        Step::Standardize { .. } => Need {
            mean: true,
            std: true,
            ..Default::default()
        },
        Step::Impute { strategy, .. } => match strategy {
            ImputeStrategy::Constant => return None,
            ImputeStrategy::Mean => Need {
                mean: true,
                ..Default::default()
            },
            ImputeStrategy::Median => quantiles(vec![0.5]),
            ImputeStrategy::MostFrequent => Need {
                mode: true,
                ..Default::default()
            },
        },
        Step::Clip {
            lower_quantile,
            upper_quantile,
            ..
        } if lower_quantile.is_some() || upper_quantile.is_some() => quantiles(
            lower_quantile
                .iter()
                .chain(upper_quantile)
                .copied()
                .collect(),
        ),
        Step::Log1p { .. } | Step::MinMax { .. } => Need::default(),
        Step::PiecewiseLinear { bins, .. } => quantiles(bin_quantiles(*bins)),
        _ => return None,
    })
}

/// Fits `steps` on the train rows (row-major, `features` order, NaN = missing; a text
/// column's values are placeholders) and the train cells of the text columns, and
/// returns the transforms, the final feature names and the train features (what
/// `Schema::apply_with_text` gives for the train rows: the same operations in the same
/// order). `nulls` maps each column that
/// holds a missing value in any split to where the first one is (`file: row N`): such a
/// numeric column must be imputed or dropped before any other step uses it. Every text
/// column must be encoded (`one_hot`, `ordinal`, `hash_text`) or dropped.
pub(crate) fn fit(
    steps: &[Step],
    train: &[f32],
    features: &[String],
    nulls: &BTreeMap<String, String>,
    train_text: &[(String, TextColumn)],
    text: &Text,
) -> Result<(Vec<Transform>, Vec<String>, Vec<f32>)> {
    let mut rows = Memory {
        data: train.to_vec(),
        cells: train_text.to_vec(),
        n_rows: train_text
            .first()
            .map_or(train.len() / features.len().max(1), |(_, c)| c.len()),
    };
    let (transforms, names) = fit_rows(steps, &mut rows, features, nulls, text)?;
    Ok((transforms, names, rows.data))
}

/// The fit of `steps` over any [`TrainRows`] (rows in memory, passes over a spill, a
/// DataFusion engine): the transforms and the final feature names.
pub fn fit_rows(
    steps: &[Step],
    rows: &mut impl TrainRows,
    features: &[String],
    nulls: &BTreeMap<String, String>,
    text: &Text,
) -> Result<(Vec<Transform>, Vec<String>)> {
    let mut names = features.to_vec();
    let mut nullable: BTreeMap<String, String> = nulls.clone();
    // a text column's missing cells are the encoders' business
    nullable.retain(|c, _| !text.is(c));
    let mut text = text.clone();
    let mut out = Vec::new();
    let null_error = |i: usize, what: &str, c: &str, site: &str| {
        invalid(format!(
            "{site}: column `{c}` is empty (null); {what} needs a number in every row. Fill it first with {{ op = \"impute\", strategy = \"median\", columns = [\"{c}\"] }} before this step, or drop the column with {{ op = \"drop\", columns = [\"{c}\"] }}{}",
            if i == usize::MAX {
                String::new()
            } else {
                format!(" (step steps[{i}])")
            }
        ))
    };
    for (i, step) in steps.iter().enumerate() {
        let _span = tracing::info_span!(
            "step",
            i,
            op = op(step),
            rows = rows.rows(),
            columns = names.len()
        )
        .entered();
        let ts: Vec<Transform> = match step {
            // row steps ran on the raw table before the split
            Step::DropNulls { .. } | Step::Dedupe {} => continue,
            Step::Drop { columns } => vec![Transform::Drop {
                columns: resolve_list(i, step, columns, &names)?,
            }],
            Step::Select { columns } => vec![Transform::Select {
                columns: resolve_list(i, step, columns, &names)?,
            }],
            Step::OneHot { columns, .. } | Step::Ordinal { columns } => {
                let cols = resolve(i, step, columns, &names, &text)?;
                let mut categories = Vec::new();
                for (c, mut f) in cols.iter().zip(rows.categories(&out, &cols)?) {
                    if f.is_empty() {
                        return Err(invalid(format!(
                            "steps[{i}] ({}): column `{c}` has no value in the train split to fit on; drop it with {{ op = \"drop\", columns = [\"{c}\"] }}",
                            op(step)
                        )));
                    }
                    if let Step::OneHot {
                        max_categories: Some(m),
                        ..
                    } = step
                    {
                        f.truncate(*m);
                    }
                    let mut cats: Vec<String> = f.into_iter().map(|(c, _)| c).collect();
                    cats.sort();
                    categories.push(cats);
                }
                vec![match step {
                    Step::OneHot { .. } => Transform::OneHot {
                        columns: cols,
                        categories,
                    },
                    _ => Transform::Ordinal {
                        columns: cols,
                        categories,
                    },
                }]
            }
            Step::HashText {
                columns,
                n_features,
            } => {
                let cols = resolve(i, step, &Columns::Named(columns.clone()), &names, &text)?;
                vec![Transform::HashText {
                    columns: cols,
                    n_features: *n_features,
                }]
            }
            Step::Impute {
                strategy,
                value,
                columns,
            } => {
                let all = resolve(i, step, columns, &names, &text)?;
                let (tcols, ncols): (Vec<String>, Vec<String>) =
                    all.into_iter().partition(|c| text.is(c));
                let mut v = Vec::new();
                if !tcols.is_empty() {
                    let mut values = Vec::new();
                    // every column's categories in one go (one pass when streamed)
                    let mut counts = match strategy {
                        ImputeStrategy::MostFrequent => rows.categories(&out, &tcols)?,
                        _ => Vec::new(),
                    }
                    .into_iter();
                    for c in &tcols {
                        values.push(match (strategy, value) {
                            (ImputeStrategy::Constant, Some(ImputeValue::Text(t))) => t.clone(),
                            (ImputeStrategy::Constant, _) => {
                                return Err(invalid(format!(
                                    "steps[{i}] (impute): column `{c}` is categorical, so `value` must be a string (e.g. value = \"missing\")"
                                )));
                            }
                            (ImputeStrategy::MostFrequent, _) => counts
                                .next()
                                .into_iter()
                                .flatten()
                                .next()
                                .map(|(t, _)| t)
                                .ok_or_else(|| {
                                    invalid(format!(
                                        "steps[{i}] (impute): column `{c}` has no value in the train split to fit on; drop it with {{ op = \"drop\", columns = [\"{c}\"] }}"
                                    ))
                                })?,
                            (s, _) => {
                                return Err(invalid(format!(
                                    "steps[{i}] (impute): column `{c}` is categorical, and strategy = \"{}\" needs numbers; use \"most_frequent\" or \"constant\" with a string value",
                                    s.name()
                                )));
                            }
                        });
                    }
                    v.push(Transform::ImputeCategorical {
                        columns: tcols,
                        strategy: strategy.name().into(),
                        values,
                    });
                }
                if !ncols.is_empty() || v.is_empty() {
                    let number = match value {
                        None => None,
                        Some(ImputeValue::Number(x)) => Some(*x),
                        Some(ImputeValue::Text(t)) => {
                            return Err(invalid(format!(
                                "steps[{i}] (impute): value \"{t}\" is a string, but {} numeric; use a number, or name only categorical columns",
                                match ncols.first() {
                                    Some(c) => format!("column `{c}` is"),
                                    None => "the columns are".into(),
                                }
                            )));
                        }
                    };
                    let stats = match need(step) {
                        Some(need) => rows.numeric(&out, &names, &ncols, &need)?,
                        None => Vec::new(),
                    };
                    v.push(fit_one(i, step, number, ncols, stats)?);
                }
                v
            }
            Step::Scale { columns, .. }
            | Step::Standardize { columns }
            | Step::Clip { columns, .. }
            | Step::Log1p { columns }
            | Step::MinMax { columns }
            | Step::PiecewiseLinear { columns, .. } => {
                let cols = resolve(i, step, columns, &names, &text)?;
                for c in &cols {
                    if let Some(site) = nullable.get(c) {
                        return Err(null_error(i, op(step), c, site));
                    }
                }
                let stats = match need(step) {
                    Some(need) => rows.numeric(&out, &names, &cols, &need)?,
                    None => Vec::new(),
                };
                vec![fit_one(i, step, None, cols, stats)?]
            }
        };
        for t in ts {
            match &t {
                Transform::Impute { columns, .. } | Transform::Drop { columns } => {
                    for c in columns {
                        nullable.remove(c);
                    }
                }
                Transform::Select { columns } => nullable.retain(|c, _| columns.contains(c)),
                _ => {}
            }
            rows.apply(&t, &mut names)?;
            text.sites.retain(|c, _| rows.is_text(c));
            out.push(t);
        }
    }
    if let Some((c, site)) = text.sites.iter().next() {
        return Err(invalid(format!(
            "{site}, not a number, and no step turns the column into numbers: if it should hold numbers, fix the cell or list the marker in the source's `null_values`; if `{c}` is a text (categorical) column, {}",
            encode_hint(c)
        )));
    }
    if let Some((c, site)) = nullable.iter().next() {
        return Err(null_error(usize::MAX, "the model", c, site));
    }
    Ok((out, names))
}

fn fit_one(
    i: usize,
    step: &Step,
    value: Option<f32>,
    cols: Vec<String>,
    stats: Vec<Stats>,
) -> Result<Transform> {
    let empty = |c: &str| {
        invalid(format!(
            "steps[{i}] ({}): column `{c}` has no value in the train split to fit on; drop it with {{ op = \"drop\", columns = [\"{c}\"] }}",
            op(step)
        ))
    };
    Ok(match step {
        Step::Scale { by, .. } => {
            if *by == 0.0 || !by.is_finite() {
                return Err(invalid(format!(
                    "steps[{i}] (scale): by {by} is not allowed; use a finite non-zero number"
                )));
            }
            Transform::Scale {
                columns: cols,
                by: *by,
            }
        }
        Step::Standardize { .. } => {
            let (mut mean, mut std) = (Vec::new(), Vec::new());
            for s in &stats {
                mean.push(s.mean as f32);
                std.push(if s.std > 0.0 { s.std as f32 } else { 1.0 });
            }
            Transform::Standardize {
                columns: cols,
                mean,
                std,
            }
        }
        Step::Impute { strategy, .. } => {
            let mut values = Vec::new();
            for (k, c) in cols.iter().enumerate() {
                let s = stats.get(k);
                if *strategy != ImputeStrategy::Constant && s.is_none_or(|s| s.count == 0) {
                    return Err(empty(c));
                }
                values.push(match s {
                    Some(s) => impute_with(*strategy, value, s),
                    None => value.unwrap_or(0.0),
                });
            }
            Transform::Impute {
                columns: cols,
                strategy: strategy.name().into(),
                values,
            }
        }
        Step::Clip {
            min,
            max,
            lower_quantile,
            upper_quantile,
            ..
        } => {
            let n = cols.len();
            if lower_quantile.is_none() && upper_quantile.is_none() {
                Transform::Clip {
                    columns: cols,
                    min: min.map(|v| vec![v; n]),
                    max: max.map(|v| vec![v; n]),
                }
            } else {
                let (mut lo, mut hi) = (Vec::new(), Vec::new());
                for (k, s) in stats.iter().enumerate() {
                    if s.count == 0 {
                        return Err(empty(&cols[k]));
                    }
                    let mut q = s.quantiles.iter();
                    if lower_quantile.is_some() {
                        lo.push(q.next().copied().unwrap_or(f64::NAN) as f32);
                    }
                    if upper_quantile.is_some() {
                        hi.push(q.next().copied().unwrap_or(f64::NAN) as f32);
                    }
                }
                Transform::Clip {
                    columns: cols,
                    min: lower_quantile.map(|_| lo),
                    max: upper_quantile.map(|_| hi),
                }
            }
        }
        Step::Log1p { .. } => {
            for (k, s) in stats.iter().enumerate() {
                if s.count > 0 && s.min <= -1.0 {
                    let x = s.min;
                    return Err(invalid(format!(
                        "steps[{i}] (log1p): column `{}` holds {x} in the train split, and log1p needs values above -1; clip it first (e.g. {{ op = \"clip\", min = 0.0 }})",
                        cols[k]
                    )));
                }
            }
            Transform::Log1p { columns: cols }
        }
        Step::MinMax { .. } => {
            let (mut lo, mut hi) = (Vec::new(), Vec::new());
            for (k, s) in stats.iter().enumerate() {
                if s.count == 0 {
                    return Err(empty(&cols[k]));
                }
                lo.push(s.min);
                hi.push(s.max);
            }
            Transform::MinMax {
                columns: cols,
                min: lo,
                max: hi,
            }
        }
        Step::PiecewiseLinear { .. } => {
            let mut edges = Vec::new();
            for (k, s) in stats.iter().enumerate() {
                let mut e = edges_from_quantiles(&s.quantiles);
                match e.as_slice() {
                    [] => {
                        return Err(invalid(format!(
                            "steps[{i}] (piecewise_linear): column `{}` holds no value in the train split, nothing to bin; drop it with {{ op = \"drop\", columns = [\"{}\"] }}",
                            cols[k], cols[k]
                        )));
                    }
                    // one value in the train split (a rare flag whose other values all
                    // fell into valid / test): one bin above it, so the feature is 0 on
                    // every train row and other values still encode in order
                    &[v] => e.push(v + v.abs().max(1.0)),
                    _ => {}
                }
                edges.push(e);
            }
            Transform::PiecewiseLinear {
                columns: cols,
                edges,
            }
        }
        Step::Drop { .. }
        | Step::Select { .. }
        | Step::DropNulls { .. }
        | Step::Dedupe {}
        | Step::OneHot { .. }
        | Step::Ordinal { .. }
        | Step::HashText { .. } => {
            return Err(invalid(format!("steps[{i}]: internal: not a numeric step")));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// The message of fitting `steps` on `train` (no nulls, no text), which must fail.
    fn fit_error(steps: &[Step], train: &[f32], f: &[String]) -> String {
        fit(steps, train, f, &BTreeMap::new(), &[], &Text::default())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn bin_edges_are_merged_quantiles() {
        // 0..=8: quantiles at 0, 1/4, … are 0, 2, 4, 6, 8
        let v: Vec<f32> = (0..=8).map(|i| i as f32).collect();
        assert_eq!(bin_edges(&v, 4), [0.0, 2.0, 4.0, 6.0, 8.0]);
        // half the values 0: the first three quantiles tie at 0
        let v = [0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0];
        assert_eq!(bin_edges(&v, 4), [0.0, 0.5, 2.25, 4.0]);
        assert_eq!(bin_edges(&[5.0, 5.0], 8), [5.0]);
        assert!(bin_edges(&[], 8).is_empty());
    }

    #[test]
    fn impute_values_worked_by_hand() {
        let p = [1.0, 3.0, 10.0]; // [1, 3, NA, 10] without the NA
        assert_eq!(impute_value(ImputeStrategy::Median, None, &p), 3.0);
        assert_eq!(impute_value(ImputeStrategy::Mean, None, &p), 14.0 / 3.0);
        assert_eq!(
            impute_value(ImputeStrategy::Median, None, &[1.0, 3.0, 4.0, 10.0]),
            3.5
        );
        assert_eq!(
            impute_value(
                ImputeStrategy::MostFrequent,
                None,
                &[5.0, 2.0, 5.0, 2.0, 7.0]
            ),
            2.0
        );
        assert_eq!(impute_value(ImputeStrategy::Constant, Some(-1.0), &p), -1.0);
    }

    #[test]
    fn quantiles_interpolate_linearly() {
        let v: Vec<f64> = (0..=10).map(f64::from).collect();
        assert_eq!(crate::train_rows::quantile(&v, 0.1), 1.0);
        assert_eq!(crate::train_rows::quantile(&v, 0.25), 2.5);
        assert_eq!(crate::train_rows::quantile(&[1.0, 2.0, 4.0], 0.75), 3.0);
        assert_eq!(crate::train_rows::quantile(&[7.0], 0.9), 7.0);
    }

    /// A column of one train value (a flag whose other values fell outside the train
    /// split) gets one bin above that value instead of stopping the run; an empty one
    /// is still an error.
    #[test]
    fn piecewise_linear_of_one_train_value_is_one_bin() {
        let f = names(&["flag", "x"]);
        // flag = -3 on every train row; x = 0, 1, 2, 3
        let train = vec![-3.0, 0.0, -3.0, 1.0, -3.0, 2.0, -3.0, 3.0];
        let steps = vec![Step::PiecewiseLinear {
            columns: Columns::default(),
            bins: 2,
        }];
        let (t, out_names, fitted) =
            fit(&steps, &train, &f, &BTreeMap::new(), &[], &Text::default()).unwrap();
        assert_eq!(
            t[0],
            Transform::PiecewiseLinear {
                columns: f.clone(),
                edges: vec![vec![-3.0, 0.0], vec![0.0, 1.5, 3.0]],
            }
        );
        assert_eq!(out_names, names(&["flag#0", "x#0", "x#1"]));
        assert_eq!(fitted[..3], [0.0, 0.0, 0.0]);
        let nan = f32::NAN;
        let e = fit_error(&steps, &[nan, 0.0, nan, 1.0], &f);
        assert!(
            e.contains("column `flag` holds no value in the train split"),
            "{e}"
        );
    }

    #[test]
    fn steps_fit_in_order_and_match_apply() {
        let f = names(&["a", "b", "c"]);
        // a = [1, 3, NA, 10], b = [0, 1, 2, 100], c constant 5
        let nan = f32::NAN;
        let train = vec![
            1.0, 0.0, 5.0, 3.0, 1.0, 5.0, nan, 2.0, 5.0, 10.0, 100.0, 5.0,
        ];
        let mut nulls = BTreeMap::new();
        nulls.insert("a".to_string(), "d.csv: row 3".to_string());
        let steps = vec![
            Step::Impute {
                strategy: ImputeStrategy::Median,
                value: None,
                columns: Columns::Named(names(&["a"])),
            },
            Step::Clip {
                min: None,
                max: None,
                lower_quantile: None,
                upper_quantile: Some(0.5),
                columns: Columns::Named(names(&["b"])),
            },
            Step::MinMax {
                columns: Columns::default(),
            },
            Step::Drop {
                columns: names(&["b"]),
            },
        ];
        let (t, out_names, fitted) =
            fit(&steps, &train, &f, &nulls, &[], &Text::default()).unwrap();
        assert_eq!(out_names, names(&["a", "c"]));
        assert_eq!(
            t[0],
            Transform::Impute {
                columns: names(&["a"]),
                strategy: "median".into(),
                values: vec![3.0]
            }
        );
        // b sorted [0, 1, 2, 100]: median at position 1.5 = 1.5
        assert_eq!(
            t[1],
            Transform::Clip {
                columns: names(&["b"]),
                min: None,
                max: Some(vec![1.5])
            }
        );
        // after impute and clip: a = [1, 3, 3, 10], b = [0, 1, 1.5, 1.5], c = 5
        assert_eq!(
            t[2],
            Transform::MinMax {
                columns: f.clone(),
                min: vec![1.0, 0.0, 5.0],
                max: vec![10.0, 1.5, 5.0]
            }
        );
        let schema = kiln_core::Schema {
            version: 1,
            input_columns: f.clone(),
            feature_names: out_names,
            target: "y".into(),
            task: kiln_core::Task::Regression,
            image: None,
            class_labels: vec![],
            transforms: t,
        };
        let x = schema.apply(&train).unwrap();
        assert_eq!(x, fitted);
        // a: (v - 1) / 9; c constant -> 0
        assert_eq!(x, vec![0.0, 0.0, 2.0 / 9.0, 0.0, 2.0 / 9.0, 0.0, 1.0, 0.0]);
    }

    #[test]
    fn nulls_unknown_columns_and_log1p_are_checked() {
        let f = names(&["age", "b"]);
        let mut nulls = BTreeMap::new();
        nulls.insert("age".to_string(), "d.csv: row 7".to_string());
        let std = vec![Step::Standardize {
            columns: Columns::default(),
        }];
        let e = fit(&std, &[f32::NAN, 1.0], &f, &nulls, &[], &Text::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("d.csv: row 7") && e.contains("`age`") && e.contains("impute"),
            "{e}"
        );
        // no step at all still refuses a null
        let e = fit(&[], &[f32::NAN, 1.0], &f, &nulls, &[], &Text::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("impute"), "{e}");
        // dropping the column is fine
        let drop = vec![Step::Drop {
            columns: names(&["age"]),
        }];
        let (transforms, kept, data) =
            fit(&drop, &[f32::NAN, 1.0], &f, &nulls, &[], &Text::default()).unwrap();
        assert_eq!(kept, ["b"]);
        assert_eq!(data, [1.0]);
        assert_eq!(
            transforms,
            [Transform::Drop {
                columns: names(&["age"])
            }]
        );
        let typo = vec![Step::Log1p {
            columns: Columns::Named(names(&["agee"])),
        }];
        let e = fit_error(&typo, &[1.0, 1.0], &f);
        assert!(e.contains("did you mean `age`?"), "{e}");
        let log = vec![Step::Log1p {
            columns: Columns::default(),
        }];
        let e = fit_error(&log, &[1.0, -2.0], &f);
        assert!(e.contains("`b` holds -2"), "{e}");
        let all_null = vec![Step::Impute {
            strategy: ImputeStrategy::Mean,
            value: None,
            columns: Columns::default(),
        }];
        let e = fit(
            &all_null,
            &[f32::NAN, 1.0],
            &f,
            &nulls,
            &[],
            &Text::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("no value in the train split"), "{e}");
    }

    #[test]
    fn drop_nulls_and_dedupe_count_what_they_drop() {
        let f = names(&["a", "b"]);
        let nan = f32::NAN;
        // rows: 0 (1, 2) y, 1 (1, 2) y dup, 2 (1, 2) n (other target), 3 (NaN, 5) y,
        // 4 (3, NaN) y
        let raw = vec![1.0, 2.0, 1.0, 2.0, 1.0, 2.0, nan, 5.0, 3.0, nan];
        let y: Vec<String> = ["y", "y", "n", "y", "y"].map(String::from).to_vec();
        let steps = vec![
            Step::Dedupe {},
            Step::DropNulls {
                columns: Columns::Named(names(&["a"])),
            },
        ];
        let (keep, d) = row_steps(&steps, &raw, &f, &y, &Text::default()).unwrap();
        assert_eq!((keep, d), (vec![0, 2, 4], [1, 1]));
        let all = vec![Step::DropNulls {
            columns: Columns::default(),
        }];
        assert_eq!(
            row_steps(&all, &raw, &f, &y, &Text::default()).unwrap(),
            (vec![0, 1, 2], [2, 0])
        );
        let typo = vec![Step::DropNulls {
            columns: Columns::Named(names(&["bb"])),
        }];
        let e = row_steps(&typo, &raw, &f, &y, &Text::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("steps[0] (drop_nulls)") && e.contains("`b`"),
            "{e}"
        );
    }
}
