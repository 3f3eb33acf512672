//! The preprocessing stage's configuration: where the data comes from, the target, the
//! steps to apply and how to split.

use crate::augment::Augment;
pub use crate::source::Source;
use crate::source::default_true;
use kiln_core::Task;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Configuration of one preprocessing run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the raw data is.
    pub source: Source,
    /// Target column (default `label`).
    #[serde(default = "default_target")]
    pub target: String,
    /// Classification or regression; inferred from the target when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<Task>,
    /// Makes the task binary: rows whose target equals this value become class
    /// `<value>` (index 1), every other row `not <value>` (index 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub positive_class: Option<String>,
    /// Column types that override inference: `"text"` (a categorical column of numeric
    /// codes such as zip codes) or `"number"` (a cell that is not a number is then an
    /// error naming its row, instead of making the column text).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub column_types: BTreeMap<String, ColumnType>,
    /// Steps applied in order; statistics are fitted on the train split only. Left out,
    /// a table source gets the steps `kiln init` would write for it (drop empty, constant
    /// and ID-like columns, impute gaps, piecewise-linear numbers, one-hot categories,
    /// hashed free text: [`crate::suggest::steps_for`]); an IDX source gets none.
    /// `steps = []` means none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<Step>>,
    /// How to split into train / valid / test.
    #[serde(default)]
    pub split: Split,
    /// Seeded augmentation of the train split (oversampling, shifted / rotated / noisy
    /// copies); off by default.
    #[serde(default, skip_serializing_if = "Augment::is_off")]
    pub augment: Augment,
    /// Rows per Parquet shard of the dataset artifact; left out, as many as hold 64 MiB
    /// of features (at least 1,024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_rows: Option<usize>,
    /// How the table is read: `auto` (default) in memory while the source files take
    /// at most a quarter of `memory_mb` on disk, streamed above; `memory`; `stream`
    /// (parsed once into a spill beside the artifact, every statistic from passes over
    /// it, the shards written as the rows come: memory does not grow with the table).
    #[serde(default, skip_serializing_if = "Load::is_auto")]
    pub load: Load,
    /// MiB the in-memory path may take (default 1024): `auto` streams a source larger
    /// than a quarter of it (the in-memory path peaks at about three times a CSV's size).
    /// With `engine = "datafusion"`, what DataFusion's sorts and aggregations may hold in
    /// kiln's process before they spill to disk.
    #[serde(
        default = "default_memory_mb",
        skip_serializing_if = "is_default_memory_mb"
    )]
    pub memory_mb: u64,
    /// Seed of the split (the pipeline fills it from its top-level `seed`).
    #[serde(default)]
    pub seed: u64,
    /// Where the steps run: `local` (default: polars, in memory or streamed), `datafusion`
    /// (DataFusion in this process) or `ballista` (a DataFusion Ballista cluster at
    /// `scheduler`). The other engines need `split.row_id` and a kiln built with the
    /// `cluster` feature (docs/scale.md).
    #[serde(default, skip_serializing_if = "Engine::is_local")]
    pub engine: Engine,
    /// The Ballista scheduler of `engine = "ballista"`, as `df://host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<String>,
}

/// The engine a preprocess stage runs on.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    /// polars in this process, in memory or streamed (`load`).
    #[default]
    Local,
    /// DataFusion in this process.
    Datafusion,
    /// A DataFusion Ballista cluster: a scheduler and its executors.
    Ballista,
}

impl Engine {
    fn is_local(&self) -> bool {
        *self == Engine::Local
    }

    /// The name written in pipeline files.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Local => "local",
            Engine::Datafusion => "datafusion",
            Engine::Ballista => "ballista",
        }
    }
}

/// Whether a preprocess stage holds the table in memory or streams it.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Load {
    /// In memory up to a quarter of `memory_mb` of source files, streamed above.
    #[default]
    Auto,
    /// The whole table in memory.
    Memory,
    /// Streamed: bounded memory at any size.
    Stream,
}

impl Load {
    fn is_auto(&self) -> bool {
        *self == Load::Auto
    }
}

fn default_memory_mb() -> u64 {
    1024
}

fn is_default_memory_mb(m: &u64) -> bool {
    *m == default_memory_mb()
}

impl Config {
    /// Values out of range, as (key path, message) pairs; empty when the config is usable.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        let s = &self.split;
        for (k, f) in [("split.valid", Some(s.valid)), ("split.test", s.test)] {
            if let Some(f) = f
                && !(0.0..1.0).contains(&f)
            {
                p.push((k.to_string(), format!("fraction {f} must be in [0, 1)")));
            }
        }
        if s.valid + s.test.unwrap_or(0.0) >= 1.0 {
            p.push((
                "split".to_string(),
                format!(
                    "valid + test = {} leaves no training rows; keep the sum below 1",
                    s.valid + s.test.unwrap_or(0.0)
                ),
            ));
        }
        match (self.engine, &self.scheduler) {
            (Engine::Ballista, None) => p.push((
                "scheduler".into(),
                "engine = \"ballista\" needs the scheduler's address, e.g. scheduler = \"df://127.0.0.1:50050\"".into(),
            )),
            (Engine::Ballista, Some(url)) if !url.starts_with("df://") => p.push((
                "scheduler".into(),
                format!("`{url}` is not a scheduler address; write it as df://host:port"),
            )),
            (Engine::Local | Engine::Datafusion, Some(_)) => p.push((
                "scheduler".into(),
                format!(
                    "a scheduler is only used with engine = \"ballista\", not \"{}\"; remove it or set the engine",
                    self.engine.name()
                ),
            )),
            _ => {}
        }
        if self.engine != Engine::Local && s.row_id.is_none() {
            p.push((
                "split.row_id".into(),
                format!(
                    "engine = \"{}\" splits rows by a seeded hash of a row-id column, which every engine computes alike; name a column that identifies each row, e.g. split.row_id = \"id\"",
                    self.engine.name()
                ),
            ));
        }
        if self.shard_rows == Some(0) {
            p.push((
                "shard_rows".to_string(),
                "a shard holds at least 1 row".to_string(),
            ));
        }
        if self.positive_class.is_some() && self.task == Some(Task::Regression) {
            p.push((
                "positive_class".to_string(),
                "positive_class makes a binary classification task; it cannot go with task = \"regression\"".to_string(),
            ));
        }
        for (i, step) in self.steps.iter().flatten().enumerate() {
            p.extend(
                step_problems(step)
                    .into_iter()
                    .map(|(k, m)| (format!("steps.{i}{k}"), m)),
            );
        }
        p.extend(self.augment.problems());
        if let Source::Csv { delimiter, .. } = &self.source
            && !delimiter.is_ascii()
        {
            p.push((
                "source.delimiter".into(),
                format!("delimiter `{delimiter}` must be one ASCII character"),
            ));
        }
        p
    }
}

/// Out-of-range values of one step, as (key suffix, message) pairs.
fn step_problems(step: &Step) -> Vec<(String, String)> {
    let mut p = Vec::new();
    match step {
        Step::Scale { by, .. } if *by == 0.0 || !by.is_finite() => p.push((
            ".by".into(),
            format!("scale by {by} is not allowed; use a finite non-zero number"),
        )),
        Step::Impute {
            strategy, value, ..
        } => match (strategy, value) {
            (ImputeStrategy::Constant, None) => p.push((
                ".value".into(),
                "impute with strategy = \"constant\" needs `value` (a number for numeric columns, a string for categorical ones)".into(),
            )),
            (ImputeStrategy::Constant, Some(ImputeValue::Number(v))) if !v.is_finite() => {
                p.push((".value".into(), format!("value {v} must be finite")))
            }
            (s, Some(_)) if *s != ImputeStrategy::Constant => p.push((
                ".value".into(),
                format!(
                    "`value` is only used with strategy = \"constant\", not \"{}\"; remove it",
                    s.name()
                ),
            )),
            _ => {}
        },
        Step::Clip {
            min,
            max,
            lower_quantile,
            upper_quantile,
            ..
        } => {
            let by_value = min.is_some() || max.is_some();
            let by_quantile = lower_quantile.is_some() || upper_quantile.is_some();
            if by_value && by_quantile {
                p.push((
                    String::new(),
                    "clip takes either `min` / `max` or `lower_quantile` / `upper_quantile`, not both".into(),
                ));
            } else if !by_value && !by_quantile {
                p.push((
                    String::new(),
                    "clip needs `min` and / or `max`, or `lower_quantile` and / or `upper_quantile`".into(),
                ));
            }
            for (k, q) in [
                ("lower_quantile", lower_quantile),
                ("upper_quantile", upper_quantile),
            ] {
                if let Some(q) = q
                    && !(0.0..=1.0).contains(q)
                {
                    p.push((format!(".{k}"), format!("quantile {q} must be in [0, 1]")));
                }
            }
            if let (Some(a), Some(b)) = (lower_quantile, upper_quantile)
                && a > b
            {
                p.push((
                    ".lower_quantile".into(),
                    format!("lower_quantile {a} is above upper_quantile {b}"),
                ));
            }
            for (k, v) in [("min", min), ("max", max)] {
                if let Some(v) = v
                    && v.is_nan()
                {
                    p.push((format!(".{k}"), "NaN is not a bound".into()));
                }
            }
            if let (Some(a), Some(b)) = (min, max)
                && a > b
            {
                p.push((".min".into(), format!("min {a} is above max {b}")));
            }
        }
        Step::OneHot {
            max_categories: Some(0),
            ..
        } => p.push((
            ".max_categories".into(),
            "max_categories = 0 keeps no category; use at least 1, or leave it out for no cap"
                .into(),
        )),
        Step::HashText { n_features, .. } if *n_features == 0 || *n_features > 1 << 20 => p.push((
            ".n_features".into(),
            format!("n_features = {n_features} must be between 1 and 1048576"),
        )),
        Step::PiecewiseLinear { bins, .. } if !(2..=256).contains(bins) => p.push((
            ".bins".into(),
            format!("bins = {bins} must be between 2 and 256"),
        )),
        Step::HashText { columns, .. } if columns.is_empty() => {
            p.push((".columns".into(), "list at least one text column".into()))
        }
        Step::Drop { columns } | Step::Select { columns } if columns.is_empty() => {
            p.push((".columns".into(), "list at least one column".into()))
        }
        _ => {}
    }
    p
}

fn default_target() -> String {
    "label".into()
}

/// Which columns a step applies to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum Columns {
    /// Named columns.
    Named(Vec<String>),
    /// A group: `"numeric"` (columns of numbers), `"categorical"` (columns of text) or
    /// `"all"` (both where the step takes both, i.e. `impute`, `drop_nulls`; otherwise
    /// the columns of the kind the step takes).
    Group(String),
}

fn default_bins() -> usize {
    8
}

fn categorical_columns() -> Columns {
    Columns::Group("categorical".into())
}

impl Default for Columns {
    fn default() -> Self {
        Columns::Group("numeric".into())
    }
}

/// One preprocessing step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// Divide by a constant (e.g. 255 for pixels).
    Scale {
        /// The divisor; must not be 0.
        by: f32,
        /// Columns (default: all numeric features).
        #[serde(default)]
        columns: Columns,
    },
    /// Subtract the train mean and divide by the train standard deviation.
    Standardize {
        /// Columns (default: all numeric features).
        #[serde(default)]
        columns: Columns,
    },
    /// Fill missing cells (null / empty, or a `null_values` string) with a value fitted
    /// on the train split.
    Impute {
        /// `mean`, `median`, `most_frequent` (ties: the smallest value) or `constant`
        /// (with `value`). Categorical columns take `most_frequent` or `constant`.
        strategy: ImputeStrategy,
        /// The fill value of `strategy = "constant"`: a number for numeric columns, a
        /// string for categorical ones.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<ImputeValue>,
        /// Columns (default: all numeric features).
        #[serde(default)]
        columns: Columns,
    },
    /// Limit values to [`min`, `max`], or to the train split's
    /// [`lower_quantile`, `upper_quantile`] quantiles (linear interpolation).
    Clip {
        /// Lower bound.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<f32>,
        /// Upper bound.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<f32>,
        /// Lower bound as a quantile of the train column, in [0, 1].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lower_quantile: Option<f64>,
        /// Upper bound as a quantile of the train column, in [0, 1].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        upper_quantile: Option<f64>,
        /// Columns (default: all numeric features).
        #[serde(default)]
        columns: Columns,
    },
    /// `ln(1 + x)`; train values must be above -1.
    Log1p {
        /// Columns (default: all numeric features).
        #[serde(default)]
        columns: Columns,
    },
    /// `(x - min) / (max - min)` with the train min and max (a constant column becomes 0).
    MinMax {
        /// Columns (default: all numeric features).
        #[serde(default)]
        columns: Columns,
    },
    /// Remove the listed feature columns.
    Drop {
        /// Columns to remove.
        columns: Vec<String>,
    },
    /// Keep only the listed feature columns, in this order.
    Select {
        /// Columns to keep.
        columns: Vec<String>,
    },
    /// Row step, on the raw table before the split: drop every row with a missing cell
    /// in one of `columns`.
    DropNulls {
        /// Columns (default: all feature columns).
        #[serde(default)]
        columns: Columns,
    },
    /// Row step, on the raw table before the split: drop rows that repeat an earlier
    /// row exactly (every feature cell and the target).
    Dedupe {},
    /// One feature per train category (`column=category`, categories sorted by name):
    /// 1 where the cell is that category, else 0. Unseen categories, those beyond
    /// `max_categories` and missing cells give all zeros.
    OneHot {
        /// Text columns (default: all categorical columns).
        #[serde(default = "categorical_columns")]
        columns: Columns,
        /// Keep only the most frequent train categories (ties: by name).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_categories: Option<usize>,
    },
    /// The cell's index among the train categories sorted by name; -1 for an unseen
    /// category or a missing cell.
    Ordinal {
        /// Text columns (default: all categorical columns).
        #[serde(default = "categorical_columns")]
        columns: Columns,
    },
    /// Piecewise-linear encoding of numeric columns: each becomes one feature per bin
    /// between the train split's quantiles (`column#0` …): 1 below x's bin, x's place in
    /// its bin, 0 above (Gorishniy et al. 2022). Tied quantiles merge, so a column of few
    /// values gets fewer bins; a column of one train value `v` gets the single bin
    /// `[v, v + max(|v|, 1)]` (0 on every train row).
    PiecewiseLinear {
        /// Columns (default: all numeric features).
        #[serde(default)]
        columns: Columns,
        /// Bins per column (default 8; 2 to 256), at equally spaced quantiles.
        #[serde(default = "default_bins")]
        bins: usize,
    },
    /// Hashed bag of words: lowercase tokens split on non-alphanumeric characters, each
    /// counted in feature `fnv1a_64(token) % n_features` (`column#k`).
    HashText {
        /// The text columns.
        columns: Vec<String>,
        /// Features per column (1 to 1048576).
        n_features: usize,
    },
}

/// The fill value of `impute` with `strategy = "constant"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum ImputeValue {
    /// For numeric columns.
    Number(f32),
    /// For categorical columns.
    Text(String),
}

/// A column type given in `column_types`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    /// Numbers (f32 features).
    Number,
    /// Text: each cell a category or a document, for `one_hot`, `ordinal`, `hash_text`.
    Text,
}

/// How `impute` fits its fill value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ImputeStrategy {
    /// The train mean.
    Mean,
    /// The train median.
    Median,
    /// The most frequent train value (ties: the smallest).
    MostFrequent,
    /// The given `value`.
    Constant,
}

impl ImputeStrategy {
    /// The name written in pipeline files.
    pub fn name(self) -> &'static str {
        match self {
            ImputeStrategy::Mean => "mean",
            ImputeStrategy::Median => "median",
            ImputeStrategy::MostFrequent => "most_frequent",
            ImputeStrategy::Constant => "constant",
        }
    }
}

/// Fractions of the split. `train` is what remains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Split {
    /// Fraction of the training source held out for validation (default 0.1).
    #[serde(default = "default_valid")]
    pub valid: f64,
    /// Fraction held out for testing when there is no test source (default 0.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<f64>,
    /// Keep class proportions in every split (default true; classification only; not
    /// with `row_id`).
    #[serde(default = "default_true")]
    pub stratify: bool,
    /// A column that identifies each row (integers or text; not a feature). Given, each
    /// row's split is a seeded hash of its value ([`kiln_core::row_split`]), the same on
    /// every engine and whatever the other rows; left out, a seeded stratified shuffle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row_id: Option<String>,
}

fn default_valid() -> f64 {
    0.1
}

impl Default for Split {
    fn default() -> Self {
        Split {
            valid: default_valid(),
            test: None,
            stratify: true,
            row_id: None,
        }
    }
}
