//! The HTTP routes: POST /v1/predict (body read under `--body-timeout-ms`, parsed on the
//! blocking pool when large, inference on a pooled ONNX Runtime session), /healthz,
//! /readyz and /metrics, the request-counting middleware, and the small router that answers
//! connections beyond `--max-connections`.

use super::metrics::{self, Metrics};
use super::parse::{Batch, Shape};
use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use kiln_core::Predictor;
use kiln_deploy::OrtModel;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Bodies up to this size are parsed on the I/O worker that read them (microseconds);
/// larger ones on the blocking pool, so that no request keeps /healthz waiting.
const INLINE_PARSE_BYTES: usize = 16 * 1024;

/// Shared server state.
pub(super) struct App {
    pub(super) shape: Shape,
    pub(super) pool: Pool,
    pub(super) metrics: Metrics,
    /// False once shutdown has begun.
    pub(super) ready: AtomicBool,
    /// `--max-body`.
    pub(super) max_body: usize,
    /// `--timeout-ms`: waiting for a session plus inference.
    pub(super) timeout: Duration,
    /// `--body-timeout-ms`: the whole request body, from the handler's first read.
    pub(super) body_timeout: Duration,
    /// `--max-connections` as enforced (after the open-file limit).
    pub(super) max_connections: usize,
}

/// N ONNX Runtime sessions (`Session::run` takes `&mut self`): a permit of the semaphore
/// entitles its holder to take one model out of the vector.
pub(super) struct Pool {
    pub(super) permits: Arc<Semaphore>,
    pub(super) models: Mutex<Vec<OrtModel>>,
    pub(super) size: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A model taken out of the pool; it goes back when dropped, even if inference panicked.
struct Lease {
    app: Arc<App>,
    model: Option<OrtModel>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(m) = self.model.take() {
            lock(&self.app.pool.models).push(m);
        }
    }
}

/// An error answered as `{"error": "..."}`, counted by kind in /metrics.
#[derive(Debug)]
pub(super) struct ApiError {
    pub(super) status: StatusCode,
    pub(super) kind: &'static str,
    pub(super) message: String,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
        }
    }

    pub(super) fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", message)
    }

    fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

/// The routes of a connection under the cap.
pub(super) fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/predict", post(predict_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .layer(middleware::from_fn_with_state(app.clone(), track))
        .with_state(app)
}

/// The routes of a connection beyond the cap: the probes answer as usual, anything else
/// is 503 (counted in `kiln_serve_connections_over_limit_total`, not per route).
pub(super) fn over_limit_router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route_layer(middleware::from_fn_with_state(app.clone(), track))
        .fallback(over_limit)
        .with_state(app)
}

async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    let available = app.pool.permits.available_permits();
    let ready = app.ready.load(Ordering::SeqCst) && app.pool.size > 0;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "status": if ready { "ready" } else { "shutting down" },
            "sessions": app.pool.size,
            "available": available,
        })),
    )
        .into_response()
}

async fn over_limit(State(app): State<Arc<App>>) -> Response {
    let mut r = (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({
            "error": format!(
                "the server has {} connections open, its limit (--max-connections); retry later",
                app.max_connections
            )
        })),
    )
        .into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

async fn metrics_handler(State(app): State<Arc<App>>) -> Response {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        app.metrics.render(app.pool.permits.available_permits()),
    )
        .into_response()
}

/// Counts every response by route and status and times it.
async fn track(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let started = Instant::now();
    let response = next.run(req).await;
    app.metrics
        .record(&route, response.status().as_u16(), started.elapsed());
    response
}

async fn predict_handler(State(app): State<Arc<App>>, req: Request) -> Response {
    match predict(&app, req).await {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(e) => {
            app.metrics.error(e.kind);
            if e.status.is_server_error() {
                tracing::warn!("{}: {}", e.status, e.message);
            }
            let mut r = (e.status, Json(json!({ "error": e.message }))).into_response();
            if matches!(
                e.status,
                StatusCode::REQUEST_TIMEOUT | StatusCode::PAYLOAD_TOO_LARGE
            ) {
                // the rest of the body is not read: the connection cannot carry another
                // request
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            r
        }
    }
}

/// The request body, at most `--max-body` bytes, all of it within `--body-timeout-ms`.
async fn read_body(app: &App, req: Request) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "request body is larger than {} bytes (--max-body)",
                app.max_body
            ),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > app.max_body as u64) {
        return Err(too_large());
    }
    let body: Body = req.into_body();
    match tokio::time::timeout(app.body_timeout, Limited::new(body, app.max_body).collect()).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the request body did not arrive within {} ms (--body-timeout-ms)",
                app.body_timeout.as_millis()
            ),
        )),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Ok(Err(e)) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("reading the request body: {e}"),
        )),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

/// A blocking job on tokio's blocking pool; a panic in it is a 500.
async fn blocking<T: Send + 'static>(
    job: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(job)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
}

/// The JSON response body of a predict request.
async fn predict(app: &Arc<App>, req: Request) -> Result<Bytes, ApiError> {
    let multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/form-data")
        })
        .map(str::to_string);
    let body = read_body(app, req).await?;
    // JSON parsing, image decoding and preprocessing are CPU-bound in the body's size: off
    // the I/O workers unless the body is small
    let Batch { features, rows } = if let Some(content_type) = multipart {
        let uploads = super::images::from_multipart(&app.shape, &content_type, body).await?;
        let job = app.clone();
        blocking(move || super::images::prepare(&job.shape, &uploads)).await?
    } else if body.len() <= INLINE_PARSE_BYTES {
        app.shape.prepare(&body)?
    } else {
        let job = app.clone();
        blocking(move || job.shape.prepare(&body)).await?
    };
    if rows == 0 {
        return Ok(Bytes::from_static(br#"{"predictions":[]}"#));
    }

    let deadline = tokio::time::Instant::now() + app.timeout;
    let permit = tokio::time::timeout_at(deadline, app.pool.permits.clone().acquire_owned())
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                format!(
                    "all {} session(s) stayed busy for {} ms; retry later",
                    app.pool.size,
                    app.timeout.as_millis()
                ),
            )
        })?
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", "shutting down"))?;
    let model = lock(&app.pool.models).pop();
    let mut lease = Lease {
        app: app.clone(),
        model,
        _permit: permit,
    };
    // Inference (and writing the answer) blocks: it runs on the blocking pool, and the
    // lease (model and permit) returns to the pool when it ends, even if this request has
    // timed out meanwhile.
    let job = tokio::task::spawn_blocking(move || {
        let model = lease
            .model
            .as_mut()
            .ok_or_else(|| ApiError::internal("no session in the pool"))?;
        let p = model
            .predict(&features, rows)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        Ok::<_, ApiError>(lease.app.shape.answer(&p))
    });
    let answer = tokio::time::timeout_at(deadline, job)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                format!(
                    "inference did not finish within {} ms",
                    app.timeout.as_millis()
                ),
            )
        })?
        .map_err(|e| ApiError::internal(e.to_string()))??;
    app.metrics.rows(rows);
    Ok(Bytes::from(answer))
}
