//! The error type of kiln-core: every variant names the file or value it is about.

use std::path::PathBuf;

/// Errors raised while reading, writing or checking kiln artifacts.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A JSON artifact could not be parsed or written.
    #[error("{}: invalid json: {source}", path.display())]
    Json {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// An Arrow IPC file could not be read or written, or has the wrong columns.
    #[error("{}: {message}", path.display())]
    Arrow {
        /// The file involved.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A safetensors file could not be read or written.
    #[error("{}: {message}", path.display())]
    Tensors {
        /// The file involved.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Data or a model is inconsistent (wrong shapes, missing tensors, bad values).
    #[error("{0}")]
    Invalid(String),
    /// An artifact of another kind or format than the reader expects.
    #[error("{}: {message}", path.display())]
    Format {
        /// The file involved.
        path: PathBuf,
        /// Which kind or format it holds, and what to do.
        message: String,
    },
}

/// Result alias for kiln-core.
pub type Result<T, E = CoreError> = std::result::Result<T, E>;

impl CoreError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CoreError::Io {
            path: path.into(),
            source,
        }
    }
}
