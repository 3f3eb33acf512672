//! `kiln serve`: a deployed model behind HTTP (axum routes on hyper and tokio) — POST
//! /v1/predict with raw rows (the fitted preprocessing applied as by `kiln predict`),
//! /healthz, /readyz and Prometheus /metrics, over a bounded pool of ONNX Runtime sessions.
//!
//! This file loads the model, checks the limits and runs the accept loop: a connection cap
//! (beyond it a short answer: the probes still work), per-connection timeouts (conn.rs)
//! and a shutdown that waits for the requests in flight at most `--shutdown-timeout-ms`.
//! routes.rs holds the handlers, parse.rs turns bodies into features, metrics.rs /metrics.

mod conn;
mod images;
mod metrics;
mod parse;
mod routes;

use conn::ConnLimits;
use kiln_deploy::Bundle;
use routes::{App, Pool};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

/// Bounds of `--sessions`: each session holds the model and an ONNX Runtime arena.
pub const SESSIONS: std::ops::RangeInclusive<u64> = 1..=256;
/// Bounds of `--max-batch` (rows).
pub const MAX_BATCH: std::ops::RangeInclusive<u64> = 1..=10_000_000;
/// Bounds of `--max-body` (bytes): 1 GiB at most.
pub const MAX_BODY: std::ops::RangeInclusive<u64> = 1..=(1 << 30);
/// Bounds of the timeouts in milliseconds: one hour at most.
pub const TIMEOUT_MS: std::ops::RangeInclusive<u64> = 1..=3_600_000;
/// Bounds of `--shutdown-timeout-ms` (0: cut the connections at once).
pub const SHUTDOWN_MS: std::ops::RangeInclusive<u64> = 0..=3_600_000;
/// Bounds of `--max-connections` (lowered further to fit the open-file limit).
pub const MAX_CONNECTIONS: std::ops::RangeInclusive<u64> = 1..=1_000_000;

/// Connections beyond the cap that are answered at once (probes as usual, the rest 503);
/// past these, a connection is closed as soon as it is accepted.
const OVER_LIMIT_SLOTS: usize = 32;
/// File descriptors kept for the process itself (listener, runtime, ONNX Runtime, stdio)
/// when the connection cap is fitted to the open-file limit.
const FDS_KEPT: u64 = 64;

/// What `kiln serve` was asked to do.
pub struct Options {
    /// A deploy folder or an .onnx file with schema.json beside it.
    pub model: PathBuf,
    /// Where to listen (port 0: any free port; the bound address is printed).
    pub addr: SocketAddr,
    /// ONNX Runtime sessions, i.e. requests run at once.
    pub sessions: u64,
    /// Most rows in one request.
    pub max_batch: u64,
    /// Largest request body in bytes.
    pub max_body: u64,
    /// Per-request limit on waiting for a session plus inference, in milliseconds.
    pub timeout_ms: u64,
    /// Most milliseconds for a request's head, from the connection's opening or its
    /// previous response.
    pub header_timeout_ms: u64,
    /// Most milliseconds for a request's whole body.
    pub body_timeout_ms: u64,
    /// Most milliseconds without progress on a connection that waits on its client.
    pub idle_timeout_ms: u64,
    /// Most connections open at once.
    pub max_connections: u64,
    /// Most milliseconds between SIGTERM / SIGINT and the exit.
    pub shutdown_timeout_ms: u64,
}

impl Options {
    /// Every numeric option within its bounds (clap checks them too; this is for callers
    /// that build `Options` themselves).
    fn check(&self) -> Result<(), String> {
        let checks: [(&str, u64, &std::ops::RangeInclusive<u64>); 9] = [
            ("--sessions", self.sessions, &SESSIONS),
            ("--max-batch", self.max_batch, &MAX_BATCH),
            ("--max-body", self.max_body, &MAX_BODY),
            ("--timeout-ms", self.timeout_ms, &TIMEOUT_MS),
            ("--header-timeout-ms", self.header_timeout_ms, &TIMEOUT_MS),
            ("--body-timeout-ms", self.body_timeout_ms, &TIMEOUT_MS),
            ("--idle-timeout-ms", self.idle_timeout_ms, &TIMEOUT_MS),
            ("--max-connections", self.max_connections, &MAX_CONNECTIONS),
            (
                "--shutdown-timeout-ms",
                self.shutdown_timeout_ms,
                &SHUTDOWN_MS,
            ),
        ];
        for (flag, v, range) in checks {
            if !range.contains(&v) {
                return Err(format!(
                    "{flag} {v} is out of range: give {} to {}",
                    range.start(),
                    range.end()
                ));
            }
        }
        Ok(())
    }
}

/// Loads the model, binds, prints `listening on http://ADDR` on stdout and serves until
/// SIGTERM or Ctrl-C.
pub fn serve(opts: Options) -> Result<(), String> {
    opts.check()?;
    let sessions = opts.sessions as usize;
    let max_connections = fit_connections(opts.max_connections as usize, open_file_limit())?;
    let bundle = Bundle::open(&opts.model).map_err(|e| e.to_string())?;
    if bundle.baked {
        tracing::info!(
            "{}: the preprocessing is in the graph; raw values go in as they are",
            bundle.onnx.display()
        );
    }
    let mut models = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        // one intra-op thread per session: concurrency comes from the pool
        models.push(bundle.session(1).map_err(|e| e.to_string())?);
    }
    let app = Arc::new(App {
        shape: parse::Shape::new(bundle.schema, opts.max_batch as usize),
        pool: Pool {
            permits: Arc::new(Semaphore::new(sessions)),
            models: Mutex::new(models),
            size: sessions,
        },
        metrics: metrics::Metrics::new(sessions),
        ready: AtomicBool::new(true),
        max_body: opts.max_body as usize,
        timeout: Duration::from_millis(opts.timeout_ms),
        body_timeout: Duration::from_millis(opts.body_timeout_ms),
        max_connections,
    });
    let limits = ConnLimits {
        header: Duration::from_millis(opts.header_timeout_ms),
        idle: Duration::from_millis(opts.idle_timeout_ms),
    };
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // inference (one thread per session) and parsing of large bodies (one per core)
        .max_blocking_threads(sessions + cores)
        .build()
        .map_err(|e| format!("starting the tokio runtime: {e}"))?;
    let shutdown = Duration::from_millis(opts.shutdown_timeout_ms);
    let result = rt.block_on(run(app, opts.addr, limits, shutdown, bundle.onnx));
    // Inference still running on the blocking pool (past the deadline) is not waited for.
    rt.shutdown_timeout(Duration::from_millis(100));
    result
}

/// The soft limit on open files (`ulimit -n`), from /proc/self/limits; None if unlimited
/// or unknown.
fn open_file_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The connection cap: `requested`, lowered (with a warning) so that the connections, the
/// over-limit answers and the process's own descriptors fit the open-file limit — else a
/// flood would make `accept` fail and even /healthz unreachable.
fn fit_connections(requested: usize, fd_limit: Option<u64>) -> Result<usize, String> {
    let Some(limit) = fd_limit else {
        return Ok(requested);
    };
    let room = limit.saturating_sub(FDS_KEPT + OVER_LIMIT_SLOTS as u64);
    if room == 0 {
        return Err(format!(
            "the open-file limit ({limit}) leaves no room for connections: kiln serve keeps {} descriptors for itself and its over-limit answers; raise it (ulimit -n)",
            FDS_KEPT + OVER_LIMIT_SLOTS as u64
        ));
    }
    let room = usize::try_from(room).unwrap_or(usize::MAX);
    if requested > room {
        tracing::warn!(
            "--max-connections {requested} lowered to {room}: the open-file limit is {limit} (ulimit -n)"
        );
        return Ok(room);
    }
    Ok(requested)
}

async fn run(
    app: Arc<App>,
    addr: SocketAddr,
    limits: ConnLimits,
    shutdown: Duration,
    onnx: PathBuf,
) -> Result<(), String> {
    // Signal handlers are installed before the address is announced, so a SIGTERM sent
    // as soon as the server answers always means a graceful shutdown.
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("handling SIGTERM: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("handling SIGINT: {e}"))?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("binding {addr}: {e}"))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("reading the bound address: {e}"))?;
    // The first stdout line, parsed by callers that asked for port 0.
    println!("listening on http://{bound}");
    tracing::info!(
        "serving {} on http://{bound} with {} session(s), max batch {} rows, max body {} bytes, timeout {} ms; at most {} connections, header / body / idle timeouts {} / {} / {} ms, shutdown within {} ms",
        onnx.display(),
        app.pool.size,
        app.shape.max_batch,
        app.max_body,
        app.timeout.as_millis(),
        app.max_connections,
        limits.header.as_millis(),
        app.body_timeout.as_millis(),
        limits.idle.as_millis(),
        shutdown.as_millis(),
    );
    let router = routes::router(app.clone());
    let over_router = routes::over_limit_router(app.clone());
    let slots = Arc::new(Semaphore::new(app.max_connections));
    let over_slots = Arc::new(Semaphore::new(OVER_LIMIT_SLOTS));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    let name = loop {
        tokio::select! {
            biased;
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // out of descriptors, or a connection reset before it was
                        // accepted: wait a little rather than spin
                        tracing::warn!("accepting a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if let Ok(slot) = slots.clone().try_acquire_owned() {
                    let (app, router, stop) = (app.clone(), router.clone(), stop_rx.clone());
                    conns.spawn(async move {
                        app.metrics.connection(1);
                        conn::serve(stream, app.clone(), router, limits, stop).await;
                        app.metrics.connection(-1);
                        drop(slot);
                    });
                } else {
                    app.metrics.over_limit();
                    if let Ok(slot) = over_slots.clone().try_acquire_owned() {
                        let router = over_router.clone();
                        conns.spawn(async move {
                            conn::over_limit(stream, router, limits.header).await;
                            drop(slot);
                        });
                    } else {
                        drop(stream);
                    }
                }
            }
        }
    };
    drop(listener);
    app.ready.store(false, Ordering::SeqCst);
    let _ = stop_tx.send(true);
    tracing::info!(
        "{name}: shutting down, finishing the requests in flight ({} connection(s) open) within {} ms",
        conns.len(),
        shutdown.as_millis()
    );
    let drained = tokio::time::timeout(shutdown, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        let left = conns.len();
        app.metrics.closed("shutdown_deadline", left as u64);
        tracing::warn!(
            "{left} connection(s) still open {} ms after {name} (--shutdown-timeout-ms): closed",
            shutdown.as_millis()
        );
        conns.shutdown().await;
    }
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> Options {
        Options {
            model: PathBuf::from("m"),
            addr: "127.0.0.1:0".parse().unwrap(),
            sessions: 2,
            max_batch: 1024,
            max_body: 1 << 20,
            timeout_ms: 10_000,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            idle_timeout_ms: 5_000,
            max_connections: 512,
            shutdown_timeout_ms: 10_000,
        }
    }

    #[test]
    fn numeric_options_out_of_range_are_named() {
        assert_eq!(options().check(), Ok(()));
        let mut o = options();
        o.sessions = 99_999_999_999_999;
        assert_eq!(
            o.check(),
            Err("--sessions 99999999999999 is out of range: give 1 to 256".into())
        );
        let mut o = options();
        o.idle_timeout_ms = 0;
        assert!(
            o.check().unwrap_err().starts_with("--idle-timeout-ms 0"),
            "{:?}",
            o.check()
        );
        let mut o = options();
        o.shutdown_timeout_ms = 0;
        assert_eq!(o.check(), Ok(()), "0: cut at once");
    }

    #[test]
    fn the_connection_cap_fits_the_open_file_limit() {
        assert_eq!(fit_connections(512, None), Ok(512));
        assert_eq!(fit_connections(512, Some(1 << 20)), Ok(512));
        // 256 descriptors: 64 kept, 32 for over-limit answers
        assert_eq!(fit_connections(512, Some(256)), Ok(160));
        assert_eq!(fit_connections(100, Some(256)), Ok(100));
        let e = fit_connections(512, Some(90)).unwrap_err();
        assert!(e.contains("open-file limit (90)"), "{e}");
        assert!(open_file_limit().is_none_or(|n| n > 0));
    }
}
