//! kiln's preprocess stage and batch scoring on DataFusion, in this process
//! (`engine = "datafusion"`) or on a DataFusion Ballista cluster (`engine = "ballista"`),
//! and kiln's scheduler and executor binaries, which know kiln's scalar functions
//! (`kiln_split`, and `kiln_predict`, a deployed model's forward pass).
//!
//! The steps are fitted by kiln-preprocess's own code over statistics the engine
//! computes ([`fit`]), each fitted transform is lowered once into DataFusion expressions
//! ([`lower`]), and the last query's rows are written by kiln as the same sharded dataset
//! artifact the local engine writes ([`run`]). Scoring ([`score`]) lowers a bundle's
//! transforms the same way and runs the model inside the query. A program that links
//! this crate calls [`install`] so that pipelines can name these engines.

pub mod fit;
pub mod lower;
pub mod predict_udf;
mod profile;
pub mod query;
pub mod run;
pub mod score;
pub mod session;
pub mod udf;

use std::path::Path;

/// Why a session could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config cannot run on this engine.
    #[error("{0}")]
    Config(String),
    /// The scheduler does not answer.
    #[error(
        "cannot reach the Ballista scheduler at {url} ({why}); start one (`kiln-scheduler`, docs/scale.md) or fix the address (`scheduler` in the pipeline file, `--scheduler` for kiln predict)"
    )]
    Unreachable {
        /// The address.
        url: String,
        /// Why.
        why: String,
    },
    /// The source cannot be registered.
    #[error("{source_name}: DataFusion cannot read the source: {why}")]
    Source {
        /// The first file.
        source_name: String,
        /// Why.
        why: String,
    },
    /// The engine failed otherwise.
    #[error("DataFusion: {0}")]
    Engine(String),
}

/// The remote engine kiln-preprocess calls for `engine = "datafusion"` / `"ballista"`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cluster;

impl kiln_preprocess::RemoteEngine for Cluster {
    fn run(
        &self,
        config: &kiln_preprocess::Config,
        out_dir: &Path,
        progress: &dyn kiln_core::Progress,
    ) -> kiln_preprocess::Result<kiln_preprocess::Streamed> {
        run::run(config, out_dir, progress)
    }
}

/// Registers [`Cluster`] with kiln-preprocess; true the first time.
pub fn install() -> bool {
    kiln_preprocess::register_remote(Box::new(Cluster))
}

/// The body of `kiln-scheduler` and `kiln-executor`: logs to stderr (`RUST_LOG`, default
/// `info`), runs `server` on a multi-threaded tokio runtime, and turns its end into the
/// exit code (an error printed as `error: …`).
pub fn serve<E: std::fmt::Display>(
    server: impl std::future::Future<Output = Result<(), E>>,
) -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(false)
        .init();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start tokio: {e}"))
        .and_then(|rt| rt.block_on(server).map_err(|e| e.to_string()));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
