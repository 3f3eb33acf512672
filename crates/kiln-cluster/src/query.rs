//! Running DataFusion plans from kiln's synchronous stage code: a tokio runtime, and the
//! errors they raise sorted into what the user should do (fix a row, start the cluster,
//! report a bug).

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::prelude::DataFrame;
use kiln_preprocess::{Engine, PreprocessError, Result};
use std::future::Future;

/// Runs queries for one stage and names its engine in errors.
pub struct Query {
    rt: tokio::runtime::Runtime,
    /// `datafusion` or `ballista at df://…`, for messages.
    pub engine: String,
}

/// What a failed query was about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// A cell or a row of the source (a value that does not parse, a ragged line).
    Data,
    /// The cluster (a scheduler or executor gone, a connection refused).
    Cluster,
    /// Anything else.
    Other,
}

/// Sorts an engine's error message by what caused it.
pub fn classify(message: &str) -> Failure {
    let m = message.to_ascii_lowercase();
    let data = [
        "parser error",
        "parse error",
        "cast error",
        "cannot cast",
        "csv error",
        "error while parsing",
        "incorrect number of fields",
        "unequal lengths",
        "row id is empty",
        crate::predict_udf::NOT_FINITE,
    ];
    let cluster = [
        "transport error",
        "connection refused",
        "connection reset",
        "broken pipe",
        "tcp connect",
        "executor lost",
        "executor is dead",
        "no executor",
        "h2 protocol error",
        "unavailable",
        "grpc",
        "status:",
    ];
    if data.iter().any(|d| m.contains(d)) {
        Failure::Data
    } else if cluster.iter().any(|d| m.contains(d)) {
        Failure::Cluster
    } else {
        Failure::Other
    }
}

impl Query {
    /// A runtime for `engine` (with its `scheduler` for Ballista).
    pub fn new(engine: Engine, scheduler: Option<&str>) -> Result<Query> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| PreprocessError::Invalid(format!("cannot start tokio: {e}")))?;
        let engine = match engine {
            Engine::Ballista => {
                format!("the Ballista cluster at {}", scheduler.unwrap_or_default())
            }
            _ => "DataFusion".to_string(),
        };
        Ok(Query { rt, engine })
    }

    /// Blocks on `fut`; a DataFusion error becomes kiln's, naming the engine and what to
    /// do about it.
    pub fn run<T>(&self, fut: impl Future<Output = datafusion::error::Result<T>>) -> Result<T> {
        self.rt
            .block_on(fut)
            .map_err(|e| self.error(&e.to_string()))
    }

    /// Blocks on any future.
    pub fn block_on<T>(&self, fut: impl Future<Output = T>) -> T {
        self.rt.block_on(fut)
    }

    /// kiln's error for an engine's failure message.
    pub fn error(&self, message: &str) -> PreprocessError {
        let hint = match classify(message) {
            Failure::Cluster => {
                "; the cluster went away or refused the work: check that the scheduler and its executors are running (docs/scale.md), then run again; nothing was kept (no cache entry, no output file)"
            }
            Failure::Data => "; a cell or a row of the source could not be read",
            Failure::Other => "",
        };
        PreprocessError::Invalid(format!("{} failed: {message}{hint}", self.engine))
    }
}

/// `df` collected (a future for [`Query::run`]).
pub async fn collect(df: DataFrame) -> datafusion::error::Result<Vec<RecordBatch>> {
    df.collect().await
}
