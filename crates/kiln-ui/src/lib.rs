//! `kiln ui`: a read-only local web page over a runs folder — every run, one run's
//! stages and artifacts, a comparison of 2–5 runs, and a run in progress followed live
//! from its progress.json.
//!
//! The server reads the files the engine writes (run.json, each stage's typed artifacts
//! through `kiln_core::artifact`) on every request and keeps no state of its own, so it
//! never writes to the runs folder and never takes a run's lock. The page is HTML built
//! here; the charts are drawn in the browser by uPlot, vendored at a pinned version and
//! embedded in the binary with kiln's own script and style (`assets`).
//!
//! Safety: it binds to loopback unless told otherwise, answers only requests whose `Host`
//! is an allowed name (`guard`: DNS rebinding), and resolves every path from the URL
//! inside the runs folder (`runs::RunsDir`), refusing anything that leads outside it.

mod assets;
mod diff;
mod guard;
mod html;
mod markdown;
mod onnx;
mod pages;
mod read;
mod runs;

use axum::Router;
use axum::routing::get;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub use runs::{RunState, RunsDir};

/// Errors that stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum UiError {
    /// The runs folder is missing or not a folder.
    #[error("{}: {message}", path.display())]
    RunsDir {
        /// The folder given.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
    /// The address could not be bound.
    #[error("binding {addr}: {source}; pick another port with --addr 127.0.0.1:PORT")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// Any other I/O failure of the server itself.
    #[error("{0}")]
    Io(String),
}

/// What `kiln ui` serves and where.
#[derive(Debug, Clone)]
pub struct Options {
    /// The runs folder (`runs/` by default).
    pub runs_dir: PathBuf,
    /// The address to bind (`127.0.0.1:8484` by default; port 0 picks a free one).
    pub addr: SocketAddr,
    /// Host names accepted besides loopback's (`localhost`, `127.0.0.1`, `[::1]`), e.g.
    /// the machine's name when the server is bound to another interface.
    pub allow_hosts: Vec<String>,
}

/// The shared state of every request.
pub(crate) struct App {
    pub(crate) runs: RunsDir,
}

/// A bound server, not yet serving: [`Server::addr`] tells the port when 0 was asked.
pub struct Server {
    listener: tokio::net::TcpListener,
    router: Router,
    addr: SocketAddr,
}

impl Server {
    /// Opens the runs folder and binds the address.
    pub async fn bind(opts: Options) -> Result<Server, UiError> {
        let runs = RunsDir::open(&opts.runs_dir)?;
        let listener = tokio::net::TcpListener::bind(opts.addr)
            .await
            .map_err(|source| UiError::Bind {
                addr: opts.addr,
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(|e| UiError::Io(format!("reading the bound address: {e}")))?;
        let hosts = guard::Hosts::new(addr, &opts.allow_hosts);
        let router = router(Arc::new(App { runs }), hosts);
        Ok(Server {
            listener,
            router,
            addr,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until the future is dropped or the listener fails.
    pub async fn run(self) -> Result<(), UiError> {
        axum::serve(self.listener, self.router)
            .await
            .map_err(|e| UiError::Io(format!("serving: {e}")))
    }

    /// Serves until `stop` completes (Ctrl-C, SIGTERM), finishing requests in flight.
    pub async fn run_until(
        self,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), UiError> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(stop)
            .await
            .map_err(|e| UiError::Io(format!("serving: {e}")))
    }
}

/// Every route, behind the Host check.
fn router(app: Arc<App>, hosts: guard::Hosts) -> Router {
    Router::new()
        .route("/", get(pages::list::handler))
        .route("/compare", get(pages::compare::handler))
        .route("/runs/{pipeline}/{run}", get(pages::run::handler))
        .route("/runs/{pipeline}/{run}/progress", get(pages::live::handler))
        .route(
            "/runs/{pipeline}/{run}/files/{stage}/{file}",
            get(pages::files::handler),
        )
        .route("/assets/{name}", get(assets::handler))
        .fallback(pages::not_found)
        .with_state(app)
        .layer(axum::middleware::map_response(guard::security_headers))
        .layer(axum::middleware::from_fn_with_state(
            hosts,
            guard::check_host,
        ))
}
