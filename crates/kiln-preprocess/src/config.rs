//! The preprocessing stage's configuration: where the data comes from, the target, the
//! steps to apply and how to split.

use kiln_core::Task;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

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
    /// Steps applied in order; statistics are fitted on the train split only.
    #[serde(default)]
    pub steps: Vec<Step>,
    /// How to split into train / valid / test.
    #[serde(default)]
    pub split: Split,
    /// Seed of the split (the pipeline fills it from its top-level `seed`).
    #[serde(default)]
    pub seed: u64,
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
        if self.positive_class.is_some() && self.task == Some(Task::Regression) {
            p.push((
                "positive_class".to_string(),
                "positive_class makes a binary classification task; it cannot go with task = \"regression\"".to_string(),
            ));
        }
        for (i, step) in self.steps.iter().enumerate() {
            if let Step::Scale { by, .. } = step
                && (*by == 0.0 || !by.is_finite())
            {
                p.push((
                    format!("steps.{i}.by"),
                    format!("scale by {by} is not allowed; use a finite non-zero number"),
                ));
            }
        }
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

fn default_target() -> String {
    "label".into()
}

/// A data source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "format", rename_all = "lowercase", deny_unknown_fields)]
pub enum Source {
    /// A CSV file (`path`), or separate `train` and `test` files.
    Csv {
        /// The one file to split.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<PathBuf>,
        /// Training file (with `test`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        train: Option<PathBuf>,
        /// Test file (with `train`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        test: Option<PathBuf>,
        /// Field delimiter (default `,`).
        #[serde(default = "default_delimiter")]
        delimiter: char,
        /// Whether the first line holds column names (default true).
        #[serde(default = "default_true")]
        has_header: bool,
        /// Cell values read as null (e.g. `["NA", ""]`).
        #[serde(default)]
        null_values: Vec<String>,
    },
    /// MNIST-style IDX files: `train` (and optional `test`) are prefixes such as
    /// `fixtures/mnist/train`, completed with `-images-idx3-ubyte[.gz]` and
    /// `-labels-idx1-ubyte[.gz]`.
    Idx {
        /// Prefix of the training files.
        train: PathBuf,
        /// Prefix of the test files.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        test: Option<PathBuf>,
    },
}

fn default_delimiter() -> char {
    ','
}
fn default_true() -> bool {
    true
}

impl Source {
    /// Every file path the source names (to resolve or hash them).
    pub fn paths_mut(&mut self) -> Vec<&mut PathBuf> {
        match self {
            Source::Csv {
                path, train, test, ..
            } => [path, train, test]
                .into_iter()
                .filter_map(|p| p.as_mut())
                .collect(),
            Source::Idx { train, test } => {
                let mut v = vec![train];
                v.extend(test.as_mut());
                v
            }
        }
    }
}

/// Which columns a step applies to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum Columns {
    /// Named columns.
    Named(Vec<String>),
    /// A group: `"numeric"` or `"all"` (every feature column is numeric for now).
    Group(String),
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
    /// Keep class proportions in every split (default true; classification only).
    #[serde(default = "default_true")]
    pub stratify: bool,
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
        }
    }
}
