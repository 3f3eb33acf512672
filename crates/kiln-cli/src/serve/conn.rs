//! One accepted connection: HTTP/1.1 through hyper's connection builder with its header
//! read timeout (`--header-timeout-ms`), an idle timeout (`--idle-timeout-ms`) on the
//! socket, and a graceful close when the server shuts down; and the short, keep-alive-free
//! answer given to a connection beyond `--max-connections`.

use super::routes::App;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

/// A connection beyond the cap gets this long to send its request head, and this long
/// in all before it is closed.
const OVER_LIMIT_HEAD: Duration = Duration::from_secs(1);
const OVER_LIMIT_TOTAL: Duration = Duration::from_secs(2);

/// The connection-level limits.
#[derive(Clone, Copy, Debug)]
pub(super) struct ConnLimits {
    /// `--header-timeout-ms`.
    pub(super) header: Duration,
    /// `--idle-timeout-ms`.
    pub(super) idle: Duration,
}

/// Serves one connection under the cap until the client closes it, a timeout closes it,
/// or `stop` turns true (then the request in progress, if any, finishes first: hyper's
/// graceful shutdown).
pub(super) async fn serve(
    stream: TcpStream,
    app: Arc<App>,
    router: Router,
    limits: ConnLimits,
    mut stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let busy = Arc::new(AtomicUsize::new(0));
    let io = IdleIo::new(stream, limits.idle, busy.clone(), app.clone());
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let guard = Busy::enter(&busy);
        let call = router.clone().oneshot(req);
        async move {
            let response = call.await;
            drop(guard);
            response
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    let stopping = async move {
        // the guard `wait_for` returns is not held across the drain below
        let _ = stop.wait_for(|s| *s).await.map(|_| ());
    };
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = stopping => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            app.metrics.closed("header_timeout", 1);
        }
        tracing::debug!("connection: {e}");
    }
}

/// Answers a connection beyond the cap: /healthz and /readyz as usual, anything else 503;
/// one request, then closed, all within [`OVER_LIMIT_TOTAL`].
pub(super) async fn over_limit(stream: TcpStream, router: Router, header: Duration) {
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        router.clone().oneshot(req)
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header.min(OVER_LIMIT_HEAD))
        .keep_alive(false);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(OVER_LIMIT_TOTAL, conn).await;
}

/// Marks a connection busy (a request is being handled) while alive.
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn enter(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Busy(count.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A socket that fails with `TimedOut` once it has made no progress for `idle` while
/// waiting on the client: reading with no request being handled (a new connection that
/// sends nothing, a keep-alive connection between requests, a head that stalls), or
/// writing a response the client does not read. While a request is handled (its body
/// is bounded by `--body-timeout-ms`, the work by `--timeout-ms`) reads do not count.
struct IdleIo {
    io: TcpStream,
    idle: Duration,
    busy: Arc<AtomicUsize>,
    app: Arc<App>,
    timer: Pin<Box<Sleep>>,
    armed: bool,
}

impl IdleIo {
    fn new(io: TcpStream, idle: Duration, busy: Arc<AtomicUsize>, app: Arc<App>) -> Self {
        IdleIo {
            io,
            idle,
            busy,
            app,
            timer: Box::pin(tokio::time::sleep(idle)),
            armed: false,
        }
    }

    /// Called when the socket is not ready: starts the idle clock if it is not running,
    /// and fails once it has run out. A read while a request is being handled stops it.
    fn stalled(&mut self, cx: &mut Context<'_>, reading: bool) -> Poll<io::Error> {
        if reading && self.busy.load(Ordering::SeqCst) > 0 {
            self.armed = false;
            return Poll::Pending;
        }
        if !self.armed {
            self.timer.as_mut().reset(Instant::now() + self.idle);
            self.armed = true;
        }
        ready!(self.timer.as_mut().poll(cx));
        self.armed = false;
        self.app.metrics.closed("idle_timeout", 1);
        Poll::Ready(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "no progress for {} ms (--idle-timeout-ms)",
                self.idle.as_millis()
            ),
        ))
    }

    /// The outcome of an operation on the socket: progress stops the idle clock.
    fn progress<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<T>>,
        reading: bool,
    ) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(r) => {
                self.armed = false;
                Poll::Ready(r)
            }
            Poll::Pending => self.stalled(cx, reading).map(Err),
        }
    }
}

impl AsyncRead for IdleIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        this.progress(cx, r, true)
    }
}

impl AsyncWrite for IdleIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.progress(cx, r, false)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.progress(cx, r, false)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
