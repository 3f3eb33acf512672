//! Errors of the preprocessing stage: each names the file, column or value involved and
//! what to do about it.

use std::path::PathBuf;

/// Everything that can go wrong while loading and preparing a dataset.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    /// A file could not be opened or read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An IDX file is malformed.
    #[error("{}: {message}", path.display())]
    Idx {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// polars rejected the data (parse error, bad column, ...).
    #[error("{context}: {source}")]
    Polars {
        /// What kiln was doing.
        context: String,
        /// polars' error.
        source: polars::error::PolarsError,
    },
    /// The data or the stage configuration cannot be used as given.
    #[error("{0}")]
    Invalid(String),
    /// Writing the artifact failed.
    #[error(transparent)]
    Core(#[from] kiln_core::CoreError),
}

/// Result alias for this crate.
pub type Result<T, E = PreprocessError> = std::result::Result<T, E>;

pub(crate) trait PolarsContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> PolarsContext<T> for polars::error::PolarsResult<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| PreprocessError::Polars {
            context: context(),
            source,
        })
    }
}
