//! kiln-pipeline: the declarative pipeline file (TOML) — parsing with located errors,
//! the stage graph, the content-addressed stage cache under `runs/.cache`, the run
//! folder and its `run.json` manifest. It is the only crate that knows every stage.
//!
//! ```
//! let text = r#"
//! version = 1
//! name = "doc"
//! [stages.data]
//! uses = "preprocess"
//! source = { format = "csv", path = "iris.csv" }
//! target = "species"
//! [stages.train]
//! uses = "train"
//! input = "data"
//! model = { hidden = [8] }
//! epochs = 2
//! "#;
//! let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
//! let p = kiln_pipeline::parse(&fixtures.join("doc.toml"), text, &[]).unwrap();
//! assert_eq!(p.stages.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["data", "train"]);
//!
//! let bad = text.replace("epochs = 2", "epoch = 2");
//! let errs = kiln_pipeline::parse(&fixtures.join("doc.toml"), &bad, &[]).unwrap_err();
//! assert!(errs[0].to_string().contains("doc.toml:12:1: unknown key `epoch`; did you mean `epochs`?"));
//! ```

mod card;
mod exec;
mod file;
mod graph;
mod schema;

pub use exec::{RunOptions, RunReport, StageRecord, Table, run};
pub use file::{Diagnostic, Pipeline, StageConfig, StageDef, parse};
pub use schema::json_schema;

use std::path::Path;

/// The five stage kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StageKind {
    /// Load, clean, split, write a dataset.
    Preprocess,
    /// Train a model on a dataset.
    Train,
    /// Compress a trained model.
    Optimize,
    /// Score models and check gates.
    Evaluate,
    /// Export ONNX and check parity.
    Deploy,
}

impl StageKind {
    /// The spelling used in `uses = "…"`.
    pub fn as_str(self) -> &'static str {
        match self {
            StageKind::Preprocess => "preprocess",
            StageKind::Train => "train",
            StageKind::Optimize => "optimize",
            StageKind::Evaluate => "evaluate",
            StageKind::Deploy => "deploy",
        }
    }
}

/// Errors of loading or running a pipeline.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The pipeline file has problems (all of them are listed).
    #[error("{}\n{} problem(s) in the pipeline file; nothing was run", .0.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n\n"), .0.len())]
    Invalid(Vec<Diagnostic>),
    /// The file could not be read, or the runs folder written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path involved.
        path: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The command line names something that does not exist.
    #[error("{0}")]
    Usage(String),
    /// An artifact could not be read or written.
    #[error(transparent)]
    Core(#[from] kiln_core::CoreError),
}

/// Reads and validates a pipeline file, applying `--set` overrides.
pub fn load(path: &Path, set: &[String]) -> Result<Pipeline, PipelineError> {
    let text = std::fs::read_to_string(path).map_err(|source| PipelineError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    parse(&abs, &text, set).map_err(PipelineError::Invalid)
}

pub(crate) use kiln_core::nearest;

/// `word` with its indefinite article: "a table", "an array".
pub(crate) fn an(word: &str) -> String {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        format!("an {word}")
    } else {
        format!("a {word}")
    }
}
