//! What kiln proposes for a table it has never seen (`kiln init`): the task from the
//! target, and per column whether to keep it and how to encode it — or why to drop it —
//! from one read of the table, turned into preprocessing steps.

use crate::config::{Columns, ImputeStrategy, Source, Step};
use crate::error::{PolarsContext, PreprocessError, Result};
use crate::load::{column_names, is_numeric};
use kiln_core::Task;
use polars::prelude::*;
use std::path::{Path, PathBuf};

/// A text column with at most this many categories is one-hot encoded; one with more is
/// `ordinal` encoded, and the train stage learns an embedding of it (a table of one row
/// per category; see `model.embeddings`). Measured on `cargo xtask bench tabular`'s ames
/// (two such columns) and on modeldata's mlc_churn (a 51-value `state`) over 7 seeds:
/// within noise of one-hot encoding their 32 most frequent values (+0.010 R², −0.7
/// points), and every category keeps its own row instead of the rare ones sharing zeros.
pub const ONE_HOT_ALL: usize = 16;

/// …up to this many: a text column of more categories is hashed like free text
/// ([`TEXT_FEATURES`] buckets), where a table of one row per category would mostly learn
/// rows seen a handful of times.
pub const EMBED_MAX: usize = 10_000;

/// A numeric target with at most this many distinct whole values is a class target.
pub const MAX_NUMERIC_CLASSES: usize = 30;

/// The most classes `kiln init` writes a classifier for.
pub const MAX_CLASSES: usize = 1_000;

/// Features a free-text column is hashed into.
pub const TEXT_FEATURES: usize = 64;

/// Quantile bins of the piecewise-linear encoding of each numeric column (fewer where a
/// column has fewer distinct values). Chosen on `cargo xtask bench tabular`: over its 13
/// tables and 3 seeds, piecewise-linear encoding instead of standardizing halved kiln's
/// mean gap to the best scikit-learn model; 16 bins against 8 closed most of the rest
/// on the table with heavy-tailed counts (hpc_jobs), and 32 cost up to 5× the time on the
/// largest tables for little more (docs/benchmarks.md).
pub const PLE_BINS: usize = 16;

/// What a column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    /// Numbers (or true / false).
    Number,
    /// A few repeated text values.
    Category,
    /// Sentences: long cells of several words, mostly distinct.
    FreeText,
}

/// Why a column is left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Every cell is empty.
    AllMissing,
    /// One value in every non-empty cell.
    Constant,
    /// A different value in (nearly) every row, like a row ID: nothing to learn from,
    /// and a model would memorise it.
    IdLike,
}

impl DropReason {
    /// In words, for the file's comments.
    pub fn describe(self) -> &'static str {
        match self {
            DropReason::AllMissing => "every cell is empty",
            DropReason::Constant => "one value in every row",
            DropReason::IdLike => "a different value in nearly every row, like an ID",
        }
    }
}

/// One column of the table, as seen.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnPlan {
    /// Its name.
    pub name: String,
    /// What it holds.
    pub kind: ColumnKind,
    /// Empty cells.
    pub missing: usize,
    /// Distinct non-empty values.
    pub distinct: usize,
    /// Why it is dropped; None when it is kept.
    pub dropped: Option<DropReason>,
}

/// What kiln proposes for a table.
#[derive(Debug, Clone, PartialEq)]
pub struct Suggestion {
    /// The table's source, as a pipeline file writes it.
    pub source: Source,
    /// Rows read.
    pub n_rows: usize,
    /// The target column.
    pub target: String,
    /// Classification or regression.
    pub task: Task,
    /// Classes of a class target (0 for regression).
    pub n_classes: usize,
    /// Rows whose target is empty (dropped and counted by the run).
    pub target_missing: usize,
    /// Every other column, in table order.
    pub columns: Vec<ColumnPlan>,
}

fn invalid(m: String) -> PreprocessError {
    PreprocessError::Invalid(m)
}

/// Reads the table at `path` (`.csv` with `NA` and empty cells as nulls, `.parquet`,
/// `.arrow`) and proposes how to learn `target` from it. A table kiln cannot learn from
/// (no rows, no other usable column, a constant target, more than [`MAX_CLASSES`]
/// classes) is an error that says why.
pub fn suggest(path: &Path, target: &str) -> Result<Suggestion> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let delimiter = if ext == "csv" {
        sniff_delimiter(path)
    } else {
        ','
    };
    let nulls = ["NA".to_string(), String::new()];
    let df = if ext == "csv" {
        crate::load::read_csv(path, delimiter, true, &nulls, &[])?
    } else {
        crate::table::read_table(path)?
    };
    let shown = path.display();
    let names = column_names(&df);
    if !names.iter().any(|n| n == target) {
        let hint = kiln_core::nearest(target, &names)
            .map(|n| format!(" (did you mean `{n}`?)"))
            .unwrap_or_default();
        return Err(invalid(format!(
            "{shown}: no column `{target}`{hint}; the columns are {}",
            names
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let n = df.height();
    let (task, n_classes, target_missing) = target_task(&df, target, n, &shown.to_string())?;
    let columns = names
        .iter()
        .filter(|c| *c != target)
        .map(|c| column_plan(&df, c, n))
        .collect::<Result<Vec<_>>>()?;
    if !columns.iter().any(|c| c.dropped.is_none()) {
        return Err(invalid(format!(
            "{shown}: no column besides the target `{target}` can be learned from{}",
            why_unusable(&columns)
        )));
    }
    let source = match ext.as_str() {
        "parquet" => Source::Parquet {
            path: Some(path.to_path_buf()),
            train: None,
            test: None,
        },
        "csv" => Source::Csv {
            path: Some(path.to_path_buf()),
            train: None,
            test: None,
            delimiter,
            has_header: true,
            null_values: nulls.to_vec(),
        },
        _ => Source::Arrow {
            path: Some(PathBuf::from(path)),
            train: None,
            test: None,
        },
    };
    Ok(Suggestion {
        source,
        n_rows: n,
        target: target.to_string(),
        task,
        n_classes,
        target_missing,
        columns,
    })
}

/// Why each of `columns` is dropped, for the error when none is kept.
fn why_unusable(columns: &[ColumnPlan]) -> String {
    let why = columns
        .iter()
        .map(|c| {
            format!(
                "`{}`: {}",
                c.name,
                c.dropped.map_or("", DropReason::describe)
            )
        })
        .collect::<Vec<_>>();
    if why.is_empty() {
        " (the table has no other column)".to_string()
    } else {
        format!(" ({})", why.join("; "))
    }
}

/// The field delimiter of a CSV file: of `,` `;` tab and `|`, the one its first line
/// holds most of (`,` when it holds none).
fn sniff_delimiter(path: &Path) -> char {
    use std::io::Read;
    let mut head = Vec::new();
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.take(64 << 10).read_to_end(&mut head);
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or(&[]);
    [',', ';', '\t', '|']
        .into_iter()
        .map(|d| (line.iter().filter(|&&b| b == d as u8).count(), d))
        .filter(|&(n, _)| n > 0)
        .max_by_key(|&(n, d)| (n, d == ','))
        .map_or(',', |(_, d)| d)
}

/// The task of the target column, its class count, and its empty cells.
fn target_task(
    df: &DataFrame,
    target: &str,
    n: usize,
    shown: &str,
) -> Result<(Task, usize, usize)> {
    let col = df.column(target).ctx(|| target.to_string())?;
    let missing = col.null_count();
    let distinct = col
        .drop_nulls()
        .n_unique()
        .ctx(|| format!("target `{target}`"))?;
    if distinct < 2 {
        return Err(invalid(format!(
            "{shown}: the target `{target}` {} in every row{}; there is nothing to predict",
            if distinct == 0 {
                "is empty"
            } else {
                "has the same value"
            },
            if missing > 0 && distinct > 0 {
                format!(" ({missing} empty)")
            } else {
                String::new()
            }
        )));
    }
    let dt = col.dtype().clone();
    let task = if !is_numeric(&dt) || matches!(dt, DataType::Boolean) {
        Task::Classification
    } else {
        let v = col
            .drop_nulls()
            .cast(&DataType::Float64)
            .ctx(|| format!("target `{target}` as numbers"))?;
        let whole = v
            .f64()
            .ctx(|| target.to_string())?
            .into_no_null_iter()
            .all(|x| x.fract() == 0.0);
        if whole && distinct <= MAX_NUMERIC_CLASSES {
            Task::Classification
        } else {
            Task::Regression
        }
    };
    if task == Task::Classification && (distinct > MAX_CLASSES || distinct * 2 > n) {
        return Err(invalid(format!(
            "{shown}: the target `{target}` has {distinct} distinct values in {n} rows, too many classes to learn (kiln init writes classifiers of up to {MAX_CLASSES} classes, each with at least two rows on average); group the values, or predict a number with `task = \"regression\"`"
        )));
    }
    let n_classes = if task == Task::Classification {
        distinct
    } else {
        0
    };
    Ok((task, n_classes, missing))
}

/// How one column is kept or why it is dropped.
fn column_plan(df: &DataFrame, name: &str, n: usize) -> Result<ColumnPlan> {
    let col = df.column(name).ctx(|| name.to_string())?;
    let missing = col.null_count();
    let present = n - missing;
    let distinct = if present == 0 {
        0
    } else {
        col.drop_nulls().n_unique().ctx(|| name.to_string())?
    };
    let numeric = is_numeric(col.dtype());
    let kind = if numeric {
        ColumnKind::Number
    } else if free_text(col)? {
        ColumnKind::FreeText
    } else {
        ColumnKind::Category
    };
    let integral = numeric && !col.dtype().is_float() && !matches!(col.dtype(), DataType::Boolean);
    let id_name = {
        let l = name.to_ascii_lowercase();
        l == "id"
            || l.ends_with("_id")
            || l.ends_with(" id")
            || l.starts_with("id_")
            || l.ends_with("id") && l.len() <= 4
    };
    // nearly every row its own value: an ID (text or whole numbers), never a measurement
    let unique = present >= 20 && distinct * 100 >= present * 95;
    let dropped = if present == 0 {
        Some(DropReason::AllMissing)
    } else if distinct <= 1 {
        Some(DropReason::Constant)
    } else if unique && (kind == ColumnKind::Category || (integral && id_name)) {
        Some(DropReason::IdLike)
    } else {
        None
    };
    Ok(ColumnPlan {
        name: name.to_string(),
        kind,
        missing,
        distinct,
        dropped,
    })
}

/// A text column of phrases or sentences: two or more words per cell on average, and
/// more than half the cells distinct (so not a category with multi-word names).
fn free_text(col: &Column) -> Result<bool> {
    let s = col.cast(&DataType::String).ctx(|| col.name().to_string())?;
    let s = s.str().ctx(|| col.name().to_string())?;
    let (mut words, mut cells) = (0usize, 0usize);
    let mut seen = std::collections::HashSet::new();
    for cell in s.iter().flatten().take(10_000) {
        // words as hash_text counts them: runs of letters and digits
        words += cell
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .count();
        cells += 1;
        seen.insert(cell);
    }
    Ok(cells > 0 && words >= 2 * cells && seen.len() * 2 > cells)
}

impl Suggestion {
    /// The kept columns of one kind.
    pub fn kept(&self, kind: ColumnKind) -> Vec<&ColumnPlan> {
        self.columns
            .iter()
            .filter(|c| c.dropped.is_none() && c.kind == kind)
            .collect()
    }

    /// The steps that make the kept columns features ([`steps_for`]).
    pub fn steps(&self) -> Vec<Step> {
        steps_for(&self.columns)
    }

    /// Features the steps make (the numbers' bins, one-hot columns, ordinal codes,
    /// hashed text).
    pub fn n_features(&self) -> usize {
        let mut n: usize = self
            .kept(ColumnKind::Number)
            .iter()
            .map(|c| c.distinct.saturating_sub(1).clamp(1, PLE_BINS))
            .sum();
        for c in self.kept(ColumnKind::Category) {
            n += if c.distinct <= ONE_HOT_ALL {
                c.distinct
            } else if c.distinct <= EMBED_MAX {
                1
            } else {
                TEXT_FEATURES
            };
        }
        n + self.kept(ColumnKind::FreeText).len() * TEXT_FEATURES
    }

    /// The categories `ordinal` encodes (more than [`ONE_HOT_ALL`] values, at most
    /// [`EMBED_MAX`]), which the train stage embeds.
    pub fn embedded(&self) -> Vec<&ColumnPlan> {
        self.kept(ColumnKind::Category)
            .into_iter()
            .filter(|c| (ONE_HOT_ALL + 1..=EMBED_MAX).contains(&c.distinct))
            .collect()
    }
}

/// The steps that make the kept columns of a table features (what `kiln init` writes, and
/// what a preprocess stage without `steps` runs): drop the others, fill empty cells
/// (median for numbers, the most frequent value for categories), encode the numbers
/// piecewise-linearly in [`PLE_BINS`] quantile bins, one-hot encode the categories of at
/// most [`ONE_HOT_ALL`] values and `ordinal` encode the others up to [`EMBED_MAX`] values
/// (for the train stage's embeddings), hash free text and categories of more values into
/// [`TEXT_FEATURES`].
pub fn steps_for(columns: &[ColumnPlan]) -> Vec<Step> {
    let kept = |kind: ColumnKind| -> Vec<&ColumnPlan> {
        columns
            .iter()
            .filter(|c| c.dropped.is_none() && c.kind == kind)
            .collect()
    };
    let names = |v: Vec<&ColumnPlan>| v.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
    let mut steps = Vec::new();
    let dropped = names(columns.iter().filter(|c| c.dropped.is_some()).collect());
    if !dropped.is_empty() {
        steps.push(Step::Drop { columns: dropped });
    }
    let numbers = kept(ColumnKind::Number);
    let gaps = names(numbers.iter().copied().filter(|c| c.missing > 0).collect());
    if !gaps.is_empty() {
        steps.push(Step::Impute {
            strategy: ImputeStrategy::Median,
            value: None,
            columns: Columns::Named(gaps),
        });
    }
    if !numbers.is_empty() {
        steps.push(Step::PiecewiseLinear {
            columns: Columns::Group("numeric".into()),
            bins: PLE_BINS,
        });
    }
    let categories = kept(ColumnKind::Category);
    let gaps = names(
        categories
            .iter()
            .copied()
            .filter(|c| c.missing > 0)
            .collect(),
    );
    if !gaps.is_empty() {
        steps.push(Step::Impute {
            strategy: ImputeStrategy::MostFrequent,
            value: None,
            columns: Columns::Named(gaps),
        });
    }
    let (few, rest): (Vec<&ColumnPlan>, Vec<&ColumnPlan>) =
        categories.iter().partition(|c| c.distinct <= ONE_HOT_ALL);
    let (many, huge): (Vec<&ColumnPlan>, Vec<&ColumnPlan>) =
        rest.into_iter().partition(|c| c.distinct <= EMBED_MAX);
    if !few.is_empty() {
        steps.push(Step::OneHot {
            columns: Columns::Named(names(few)),
            max_categories: None,
        });
    }
    if !many.is_empty() {
        steps.push(Step::Ordinal {
            columns: Columns::Named(names(many)),
        });
    }
    let mut text = kept(ColumnKind::FreeText);
    text.extend(huge);
    if !text.is_empty() {
        steps.push(Step::HashText {
            columns: names(text),
            n_features: TEXT_FEATURES,
        });
    }
    steps
}

/// [`steps_for`] the columns of `df` besides `target`, for a preprocess stage that leaves
/// `steps` out; a column named in `column_types` is taken as that type, as the stage does.
pub(crate) fn default_steps(
    df: &DataFrame,
    target: &str,
    column_types: &std::collections::BTreeMap<String, crate::ColumnType>,
) -> Result<Vec<Step>> {
    let n = df.height();
    let columns = column_names(df)
        .iter()
        .filter(|c| *c != target)
        .map(|c| {
            let mut plan = column_plan(df, c, n)?;
            match column_types.get(c) {
                // declared a number: kept (a text cell is then an error naming its row)
                Some(crate::ColumnType::Number) => {
                    plan.kind = ColumnKind::Number;
                    if plan.dropped == Some(DropReason::IdLike) {
                        plan.dropped = None;
                    }
                }
                Some(crate::ColumnType::Text) if plan.kind == ColumnKind::Number => {
                    plan.kind = ColumnKind::Category
                }
                _ => {}
            }
            Ok(plan)
        })
        .collect::<Result<Vec<_>>>()?;
    if !columns.iter().any(|c| c.dropped.is_none()) {
        return Err(invalid(format!(
            "no `steps` given, and the default steps keep no column besides the target `{target}`{}; write the steps (`steps = []` keeps every column as it is)",
            why_unusable(&columns)
        )));
    }
    Ok(steps_for(&columns))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Categories are encoded by their number of values: one-hot up to 16, ordinal (for
    /// the train stage's embeddings) up to 10,000, hashed beyond; free text is hashed.
    #[test]
    fn categories_are_encoded_by_their_number_of_values() {
        let plan = |name: &str, kind, distinct| ColumnPlan {
            name: name.into(),
            kind,
            missing: 0,
            distinct,
            dropped: None,
        };
        let columns = [
            plan("x", ColumnKind::Number, 100),
            plan("few", ColumnKind::Category, ONE_HOT_ALL),
            plan("many", ColumnKind::Category, ONE_HOT_ALL + 1),
            plan("lots", ColumnKind::Category, EMBED_MAX),
            plan("huge", ColumnKind::Category, EMBED_MAX + 1),
            plan("notes", ColumnKind::FreeText, 500),
        ];
        let named = |v: &[&str]| Columns::Named(v.iter().map(|s| s.to_string()).collect());
        assert_eq!(
            steps_for(&columns),
            [
                Step::PiecewiseLinear {
                    columns: Columns::Group("numeric".into()),
                    bins: PLE_BINS
                },
                Step::OneHot {
                    columns: named(&["few"]),
                    max_categories: None
                },
                Step::Ordinal {
                    columns: named(&["many", "lots"])
                },
                Step::HashText {
                    columns: vec!["notes".into(), "huge".into()],
                    n_features: TEXT_FEATURES
                },
            ]
        );
    }
}
