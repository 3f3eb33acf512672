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

mod cache;
mod card;
mod file;
pub mod gc;
mod graph;
pub mod init;
mod key;
mod progress;
mod run;
mod runs;
mod schema;
mod stage;
mod summary;

pub use cache::Holder;
pub use file::{Diagnostic, Pipeline, StageConfig, StageDef, parse, valid_name};
pub use key::{BuildSources, StageKey, build_id, build_identity};
pub use kiln_core::artifact::run::{StageKind, StageRecord, StageStatus};
pub use run::{RunOptions, RunReport, run};
pub use schema::json_schema;
pub use stage::StageError;
pub use summary::Table;

/// The compiler that built this kiln (`rustc --version`).
pub const RUSTC_VERSION: &str = env!("KILN_RUSTC_VERSION");

use std::path::Path;

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
    /// A stage failed; its error keeps its type.
    #[error("stage `{id}` failed: {source}")]
    Stage {
        /// The stage.
        id: String,
        /// Why.
        source: StageError,
    },
    /// A stage did not run: an input failed or a required verdict did not pass.
    #[error("stage `{id}` did not run: {why}")]
    Blocked {
        /// The stage.
        id: String,
        /// Why.
        why: String,
    },
    /// An evaluate stage's gates failed (the stage itself ran).
    #[error("gate failed in `{id}`: {reason}")]
    Gate {
        /// The evaluate stage.
        id: String,
        /// Which gates, with their values.
        reason: String,
    },
    /// Another run held a cache entry's lock past `--lock-timeout`.
    #[error("waited {:.0} s for {holder} (lock {}); try again when it is done, or raise --lock-timeout", waited.as_secs_f64(), lock.display())]
    LockTimeout {
        /// The lock file.
        lock: std::path::PathBuf,
        /// Who holds it.
        holder: String,
        /// How long this run waited.
        waited: std::time::Duration,
    },
}

/// An [`std::io::Error`] about `path` as a [`PipelineError`].
pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PipelineError + '_ {
    move |source| PipelineError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads and validates a pipeline file, applying `--set` overrides.
pub fn load(path: &Path, set: &[String]) -> Result<Pipeline, PipelineError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let before = &e.as_bytes()[..at];
        let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
        let column = 1 + before.iter().rev().take_while(|&&b| b != b'\n').count();
        io(path)(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "line {line}, column {column}: byte 0x{:02x} is not UTF-8 text; save the file as UTF-8",
                e.as_bytes()[at]
            ),
        ))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_not_utf8_names_its_line_column_and_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, b"version = 1\nname = \"caf\xe9\"\n").unwrap();
        let e = load(&path, &[]).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}: line 2, column 12: byte 0xe9 is not UTF-8 text; save the file as UTF-8",
                path.display()
            )
        );
    }
}
