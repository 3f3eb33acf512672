//! `kiln serve`: a deployed model behind HTTP (axum on tokio) — POST /v1/predict with raw
//! rows (the fitted preprocessing applied as by `kiln predict`), /healthz, /readyz and
//! Prometheus /metrics, over a bounded pool of ONNX Runtime sessions.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use kiln_core::{FeatureError, Rows};
use kiln_core::{Predictions, Predictor, Schema, Task, TextColumn};
use kiln_deploy::Bundle;
use kiln_deploy::OrtModel;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// What `kiln serve` was asked to do.
pub struct Options {
    /// A deploy folder or an .onnx file with schema.json beside it.
    pub model: PathBuf,
    /// Where to listen (port 0: any free port; the bound address is printed).
    pub addr: SocketAddr,
    /// ONNX Runtime sessions, i.e. requests run at once.
    pub sessions: usize,
    /// Most rows in one request.
    pub max_batch: usize,
    /// Largest request body in bytes.
    pub max_body: usize,
    /// Per-request limit on waiting for a session plus inference, in milliseconds.
    pub timeout_ms: u64,
}

/// Loads the model, binds, prints `listening on http://ADDR` on stdout and serves until
/// SIGTERM or Ctrl-C.
pub fn serve(opts: Options) -> Result<(), String> {
    if opts.sessions == 0 || opts.max_batch == 0 || opts.timeout_ms == 0 || opts.max_body == 0 {
        return Err(
            "--sessions, --max-batch, --max-body and --timeout-ms must be at least 1".into(),
        );
    }
    let bundle = Bundle::open(&opts.model).map_err(|e| e.to_string())?;
    if bundle.baked {
        tracing::info!(
            "{}: the preprocessing is in the graph; raw values go in as they are",
            bundle.onnx.display()
        );
    }
    let mut models = Vec::with_capacity(opts.sessions);
    for _ in 0..opts.sessions {
        // one intra-op thread per session: concurrency comes from the pool
        models.push(bundle.session(1).map_err(|e| e.to_string())?);
    }
    let app = Arc::new(App {
        text: bundle.schema.text_columns(),
        fills: fills(&bundle.schema),
        schema: bundle.schema,
        pool: Pool {
            permits: Arc::new(Semaphore::new(opts.sessions)),
            models: Mutex::new(models),
            size: opts.sessions,
        },
        metrics: Metrics::default(),
        ready: AtomicBool::new(true),
        max_batch: opts.max_batch,
        max_body: opts.max_body,
        timeout: Duration::from_millis(opts.timeout_ms),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the tokio runtime: {e}"))?;
    rt.block_on(run(app, opts.addr, opts.max_body, bundle.onnx))
}

async fn run(
    app: Arc<App>,
    addr: SocketAddr,
    max_body: usize,
    onnx: PathBuf,
) -> Result<(), String> {
    // Signal handlers are installed before the address is announced, so a SIGTERM sent
    // as soon as the server answers always means a graceful shutdown.
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("handling SIGTERM: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("handling SIGINT: {e}"))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("binding {addr}: {e}"))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("reading the bound address: {e}"))?;
    // The first stdout line, parsed by callers that asked for port 0.
    println!("listening on http://{bound}");
    tracing::info!(
        "serving {} on http://{bound} with {} session(s), max batch {} rows, max body {max_body} bytes, timeout {} ms",
        onnx.display(),
        app.pool.size,
        app.max_batch,
        app.timeout.as_millis()
    );
    let router = Router::new()
        .route("/v1/predict", post(predict_handler))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(app.clone(), track))
        .with_state(app.clone());
    let shutting_down = app.clone();
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            shutting_down.ready.store(false, Ordering::SeqCst);
            tracing::info!("{name}: shutting down, finishing the requests in flight");
        })
        .await
        .map_err(|e| format!("serving: {e}"))?;
    tracing::info!("stopped");
    Ok(())
}

/// Shared server state.
struct App {
    schema: Schema,
    /// The schema's text columns, worked out once (it walks every transform).
    text: Vec<String>,
    /// Per input column, whether a missing value is allowed (see [`fills`]).
    fills: Vec<bool>,
    pool: Pool,
    metrics: Metrics,
    /// False once shutdown has begun.
    ready: AtomicBool,
    max_batch: usize,
    max_body: usize,
    timeout: Duration,
}

/// N ONNX Runtime sessions (`Session::run` takes `&mut self`): a permit of the semaphore
/// entitles its holder to take one model out of the vector.
struct Pool {
    permits: Arc<Semaphore>,
    models: Mutex<Vec<OrtModel>>,
    size: usize,
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
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", message)
    }
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

async fn predict_handler(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match predict_json(&app, body).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => {
            app.metrics.error(e.kind);
            if e.status.is_server_error() {
                tracing::warn!("{}: {}", e.status, e.message);
            }
            (e.status, Json(json!({ "error": e.message }))).into_response()
        }
    }
}

async fn predict_json(
    app: &Arc<App>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Value, ApiError> {
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "request body is larger than {} bytes (--max-body)",
                    app.max_body
                ),
            )
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("reading the request body: {}", r.body_text()),
            )
        }
    })?;
    let value: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("malformed JSON: {e}"),
        )
    })?;
    let (raw, n) = parse_rows(&app.schema, (&app.text, &app.fills), &value, app.max_batch)?;
    if n == 0 {
        return Ok(json!({ "predictions": [] }));
    }
    let cells = text_cells(&app.schema, &app.text, &value)?;
    let rows = Rows {
        n_rows: n,
        values: raw,
        text: cells,
    };
    let features = app.schema.features(&rows).map_err(|e| match e {
        FeatureError::Schema(m) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", m),
        FeatureError::NotFinite { row, column } => ApiError::invalid(format!(
            "row {row} column `{column}` is not a finite number after preprocessing"
        )),
    })?;

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
    // Inference blocks: it runs on the blocking pool, and the lease (model and permit)
    // returns to the pool when it ends, even if this request has timed out meanwhile.
    let job = tokio::task::spawn_blocking(move || {
        let model = lease
            .model
            .as_mut()
            .ok_or_else(|| "no session in the pool".to_string())?;
        model.predict(&features, n).map_err(|e| e.to_string())
    });
    let result = tokio::time::timeout_at(deadline, job)
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
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e))?;
    app.metrics.rows.fetch_add(n as u64, Ordering::Relaxed);
    Ok(json!({ "predictions": output(&app.schema, &result) }))
}

/// Raw values (row-major, `input_columns` order) and the row count from a request body:
/// `{"rows": [{column: value, ...}, ...]}` or `{"instances": [[value, ...], ...]}`.
fn parse_rows(
    schema: &Schema,
    (text, fills): (&[String], &[bool]),
    v: &Value,
    max_batch: usize,
) -> Result<(Vec<f32>, usize), ApiError> {
    let cols = &schema.input_columns;
    let usage = || {
        format!(
            "the body must be a JSON object with `rows` (objects by column name) or `instances` (arrays of {} values in the order {})",
            cols.len(),
            cols.join(", ")
        )
    };
    let Some(obj) = v.as_object() else {
        return Err(ApiError::invalid(usage()));
    };
    if let Some(k) = obj.keys().find(|k| *k != "rows" && *k != "instances") {
        return Err(ApiError::invalid(format!(
            "unknown field `{k}`; {}",
            usage()
        )));
    }
    let (key, items) = match (obj.get("rows"), obj.get("instances")) {
        (Some(r), None) => ("rows", r),
        (None, Some(i)) => ("instances", i),
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(format!(
                "give `rows` or `instances`, not both; {}",
                usage()
            )));
        }
        (None, None) => return Err(ApiError::invalid(usage())),
    };
    let Some(items) = items.as_array() else {
        return Err(ApiError::invalid(format!(
            "`{key}` must be an array; {}",
            usage()
        )));
    };
    if items.len() > max_batch {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "{} rows exceed the batch limit of {max_batch} (--max-batch); split the request",
                items.len()
            ),
        ));
    }
    let mut raw = Vec::with_capacity(items.len() * cols.len());
    for (i, item) in items.iter().enumerate() {
        if key == "rows" {
            let Some(row) = item.as_object() else {
                return Err(ApiError::invalid(format!(
                    "rows[{i}] is not an object of column values"
                )));
            };
            if let Some(k) = row.keys().find(|k| !cols.contains(k)) {
                let hint = kiln_core::nearest(k, cols)
                    .map(|n| format!(" (did you mean `{n}`?)"))
                    .unwrap_or_default();
                return Err(ApiError::invalid(format!(
                    "rows[{i}]: unknown column `{k}`{hint}; the model takes {}",
                    cols.join(", ")
                )));
            }
            for (j, c) in cols.iter().enumerate() {
                let Some(x) = row.get(c) else {
                    return Err(ApiError::invalid(format!(
                        "rows[{i}]: missing column `{c}`"
                    )));
                };
                let at = || format!("rows[{i}] column `{c}`");
                if text.contains(c) {
                    cell_text(x, at)?;
                    raw.push(f32::NAN);
                } else {
                    raw.push(number(x, fills[j], at)?);
                }
            }
        } else {
            let Some(vals) = item.as_array() else {
                return Err(ApiError::invalid(format!(
                    "instances[{i}] is not an array of {} values",
                    cols.len()
                )));
            };
            if vals.len() != cols.len() {
                return Err(ApiError::invalid(format!(
                    "instances[{i}] has {} values but the model takes {} ({})",
                    vals.len(),
                    cols.len(),
                    cols.join(", ")
                )));
            }
            for (j, (x, c)) in vals.iter().zip(cols).enumerate() {
                let at = || format!("instances[{i}][{j}] (column `{c}`)");
                if text.contains(c) {
                    cell_text(x, at)?;
                    raw.push(f32::NAN);
                } else {
                    raw.push(number(x, fills[j], at)?);
                }
            }
        }
    }
    Ok((raw, items.len()))
}

/// Per input column, whether the schema fills a missing value (`Schema::fills_missing`,
/// which walks every transform: worked out once per server, not per cell).
fn fills(schema: &Schema) -> Vec<bool> {
    schema
        .input_columns
        .iter()
        .map(|c| schema.fills_missing(c))
        .collect()
}

/// The cells of the schema's text columns from a body that [`parse_rows`] accepted.
fn text_cells(
    schema: &Schema,
    text: &[String],
    v: &Value,
) -> Result<Vec<(String, TextColumn)>, ApiError> {
    let cols = &schema.input_columns;
    let mut out = Vec::new();
    for c in text {
        let j = cols.iter().position(|n| n == c).unwrap_or(0);
        let items: &[Value] = v
            .get("rows")
            .or_else(|| v.get("instances"))
            .and_then(Value::as_array)
            .map_or(&[], |a| a.as_slice());
        let mut cells = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let x = item
                .get(c.as_str())
                .or_else(|| item.get(j))
                .unwrap_or(&Value::Null);
            cells.push(cell_text(x, || format!("row {i} column `{c}`"))?);
        }
        out.push((
            c.clone(),
            TextColumn::from_cells(cells.iter().map(|s| s.as_deref())),
        ));
    }
    Ok(out)
}

/// A raw value of a text (categorical) column: a string, a number or boolean (as its
/// JSON text), or null (missing); arrays and objects are rejected naming `at`.
fn cell_text(x: &Value, at: impl Fn() -> String) -> Result<Option<String>, ApiError> {
    match x {
        Value::String(s) => Ok(Some(s.clone())),
        Value::Null => Ok(None),
        Value::Number(_) | Value::Bool(_) => Ok(Some(x.to_string())),
        Value::Array(_) | Value::Object(_) => Err(ApiError::invalid(format!(
            "{} is not text; this column takes a string (or null)",
            at()
        ))),
    }
}

/// A raw value as f32: a finite JSON number, or null (missing, NaN) where the schema
/// imputes or drops the column (`nullable`); null elsewhere, text, NaN / infinity (as
/// text) and numbers beyond f32 are rejected naming `at`.
fn number(x: &Value, nullable: bool, at: impl Fn() -> String) -> Result<f32, ApiError> {
    let bad =
        |what: String| ApiError::invalid(format!("{} {what}; expected a finite number", at()));
    match x {
        Value::Number(n) => {
            let v = n.as_f64().unwrap_or(f64::NAN) as f32;
            if v.is_finite() {
                Ok(v)
            } else {
                Err(bad(format!("is {n}, not finite as a 32-bit float")))
            }
        }
        Value::Null if nullable => Ok(f32::NAN),
        Value::Null => Err(bad("is null".into())),
        Value::String(s) => Err(bad(format!(
            "is the string {x}{}",
            if s.parse::<f64>().is_ok_and(|v| !v.is_finite()) {
                " (non-finite)"
            } else {
                ""
            }
        ))),
        Value::Bool(_) => Err(bad(format!("is the boolean {x}"))),
        Value::Array(_) | Value::Object(_) => Err(bad("is not a number".into())),
    }
}

/// One JSON object per row: label and class probabilities, or the regression value.
fn output(schema: &Schema, p: &Predictions) -> Vec<Value> {
    match schema.task {
        Task::Classification => {
            let k = p.n_outputs.max(1);
            p.argmax()
                .into_iter()
                .map(|c| {
                    schema
                        .class_labels
                        .get(c as usize)
                        .cloned()
                        .unwrap_or_default()
                })
                .enumerate()
                .map(|(i, label)| {
                    let probs: Map<String, Value> = schema
                        .class_labels
                        .iter()
                        .enumerate()
                        .map(|(j, c)| {
                            let v = p.probabilities.get(i * k + j).copied();
                            (c.clone(), v.map_or(Value::Null, f32_json))
                        })
                        .collect();
                    json!({ "label": label, "probabilities": probs })
                })
                .collect()
        }
        Task::Regression => p
            .logits
            .iter()
            .map(|&v| json!({ "value": f32_json(v) }))
            .collect(),
    }
}

/// An f32 as the shortest decimal that reads back as the same f32 (`0.99624443`, not the
/// f64 widening `0.9962444305419922`); null if not finite.
fn f32_json(v: f32) -> Value {
    v.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

async fn metrics_handler(State(app): State<Arc<App>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(&app.pool),
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

/// Upper bounds (seconds) of the latency histogram's buckets.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[derive(Default)]
struct Histogram {
    /// Per bucket (not cumulative), and one more for +Inf.
    counts: [u64; BUCKETS.len() + 1],
    sum: f64,
}

/// Request counters, error counters, latency histograms and rows predicted. The Prometheus
/// text exposition is written by hand in [`Metrics::render`] (no metrics crate).
#[derive(Default)]
struct Metrics {
    /// (route, status) -> responses.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// error kind -> errors.
    errors: Mutex<BTreeMap<&'static str, u64>>,
    /// route -> latency histogram.
    latency: Mutex<BTreeMap<String, Histogram>>,
    rows: AtomicU64,
}

impl Metrics {
    fn record(&self, route: &str, status: u16, took: Duration) {
        *lock(&self.requests)
            .entry((route.to_string(), status))
            .or_default() += 1;
        let s = took.as_secs_f64();
        let mut lat = lock(&self.latency);
        let h = lat.entry(route.to_string()).or_default();
        let b = BUCKETS
            .iter()
            .position(|&le| s <= le)
            .unwrap_or(BUCKETS.len());
        h.counts[b] += 1;
        h.sum += s;
    }

    fn error(&self, kind: &'static str) {
        *lock(&self.errors).entry(kind).or_default() += 1;
    }

    fn render(&self, pool: &Pool) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        o.push_str("# HELP kiln_serve_requests_total HTTP responses by route and status.\n");
        o.push_str("# TYPE kiln_serve_requests_total counter\n");
        for ((route, status), n) in lock(&self.requests).iter() {
            let _ = writeln!(
                o,
                "kiln_serve_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        o.push_str("# HELP kiln_serve_errors_total Failed /v1/predict requests by kind.\n");
        o.push_str("# TYPE kiln_serve_errors_total counter\n");
        for (kind, n) in lock(&self.errors).iter() {
            let _ = writeln!(o, "kiln_serve_errors_total{{kind=\"{kind}\"}} {n}");
        }
        o.push_str("# HELP kiln_serve_request_duration_seconds Request latency by route.\n");
        o.push_str("# TYPE kiln_serve_request_duration_seconds histogram\n");
        for (route, h) in lock(&self.latency).iter() {
            let mut cum = 0;
            for (i, le) in BUCKETS.iter().enumerate() {
                cum += h.counts[i];
                let _ = writeln!(
                    o,
                    "kiln_serve_request_duration_seconds_bucket{{route=\"{route}\",le=\"{le}\"}} {cum}"
                );
            }
            cum += h.counts[BUCKETS.len()];
            let _ = writeln!(
                o,
                "kiln_serve_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {cum}"
            );
            let _ = writeln!(
                o,
                "kiln_serve_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                o,
                "kiln_serve_request_duration_seconds_count{{route=\"{route}\"}} {cum}"
            );
        }
        o.push_str("# HELP kiln_serve_rows_predicted_total Rows predicted.\n");
        o.push_str("# TYPE kiln_serve_rows_predicted_total counter\n");
        let _ = writeln!(
            o,
            "kiln_serve_rows_predicted_total {}",
            self.rows.load(Ordering::Relaxed)
        );
        o.push_str("# HELP kiln_serve_sessions ONNX Runtime sessions in the pool.\n");
        o.push_str("# TYPE kiln_serve_sessions gauge\n");
        let _ = writeln!(o, "kiln_serve_sessions {}", pool.size);
        o.push_str("# HELP kiln_serve_sessions_available Sessions not running a request.\n");
        o.push_str("# TYPE kiln_serve_sessions_available gauge\n");
        let _ = writeln!(
            o,
            "kiln_serve_sessions_available {}",
            pool.permits.available_permits()
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Schema {
        Schema {
            version: 1,
            input_columns: vec!["a".into(), "b".into()],
            feature_names: vec!["a".into(), "b".into()],
            target: "y".into(),
            task: Task::Classification,
            class_labels: vec!["x".into(), "z".into()],
            transforms: vec![],
        }
    }

    fn err(body: &str) -> (StatusCode, String) {
        let v: Value = serde_json::from_str(body).unwrap();
        let e = parse_rows(&schema(), (&[], &fills(&schema())), &v, 2).unwrap_err();
        (e.status, e.message)
    }

    #[test]
    fn rows_and_instances_give_the_same_values_in_column_order() {
        let s = schema();
        let r: Value = serde_json::from_str(r#"{"rows": [{"b": 2, "a": 1.5}]}"#).unwrap();
        let i: Value = serde_json::from_str(r#"{"instances": [[1.5, 2]]}"#).unwrap();
        assert_eq!(
            parse_rows(&s, (&s.text_columns(), &fills(&s)), &r, 2).unwrap(),
            (vec![1.5, 2.0], 1)
        );
        assert_eq!(
            parse_rows(&s, (&s.text_columns(), &fills(&s)), &i, 2).unwrap(),
            (vec![1.5, 2.0], 1)
        );
    }

    #[test]
    fn null_is_missing_where_the_schema_imputes_the_column() {
        let mut s = schema();
        s.transforms.insert(
            0,
            kiln_core::Transform::Impute {
                columns: vec!["a".into()],
                strategy: "median".into(),
                values: vec![3.0],
            },
        );
        let v: Value = serde_json::from_str(r#"{"rows": [{"a": null, "b": 2}]}"#).unwrap();
        let (raw, n) = parse_rows(&s, (&s.text_columns(), &fills(&s)), &v, 2).unwrap();
        assert!(raw[0].is_nan() && raw[1] == 2.0 && n == 1, "{raw:?}");
        // the model's features: the null filled with the fitted value 3
        let x = s
            .features(&Rows {
                n_rows: 1,
                values: raw,
                text: Vec::new(),
            })
            .unwrap();
        assert_eq!(x, [3.0, 2.0]);
        let v: Value = serde_json::from_str(r#"{"instances": [[1, null]]}"#).unwrap();
        let m = parse_rows(&s, (&s.text_columns(), &fills(&s)), &v, 2)
            .unwrap_err()
            .message;
        assert!(m.contains("(column `b`) is null"), "{m}");
    }

    #[test]
    fn text_columns_take_strings_and_give_the_features_of_the_schema() {
        let mut s = schema();
        s.feature_names = vec!["a".into(), "b=u".into(), "b=v".into()];
        s.transforms = vec![kiln_core::Transform::OneHot {
            columns: vec!["b".into()],
            categories: vec![vec!["u".into(), "v".into()]],
        }];
        let v: Value = serde_json::from_str(
            r#"{"rows": [{"a": 1, "b": "v"}, {"a": 2, "b": null}, {"a": 3, "b": "new"}]}"#,
        )
        .unwrap();
        let (raw, n) = parse_rows(&s, (&s.text_columns(), &fills(&s)), &v, 3).unwrap();
        assert_eq!(n, 3);
        let cells = text_cells(&s, &s.text_columns(), &v).unwrap();
        let x = s
            .features(&Rows {
                n_rows: 3,
                values: raw,
                text: cells,
            })
            .unwrap();
        assert_eq!(x, [1.0, 0.0, 1.0, 2.0, 0.0, 0.0, 3.0, 0.0, 0.0]);
        let i: Value = serde_json::from_str(r#"{"instances": [[1, "u"]]}"#).unwrap();
        let (raw, _) = parse_rows(&s, (&s.text_columns(), &fills(&s)), &i, 3).unwrap();
        let x = s
            .features(&Rows {
                n_rows: 1,
                values: raw,
                text: text_cells(&s, &s.text_columns(), &i).unwrap(),
            })
            .unwrap();
        assert_eq!(x, [1.0, 1.0, 0.0]);
        let bad: Value = serde_json::from_str(r#"{"instances": [[1, [2]]]}"#).unwrap();
        let m = parse_rows(&s, (&s.text_columns(), &fills(&s)), &bad, 3)
            .unwrap_err()
            .message;
        assert!(m.contains("(column `b`) is not text"), "{m}");
    }

    #[test]
    fn bad_values_name_the_row_and_column() {
        let (s, m) = err(r#"{"rows": [{"a": 1, "b": 2}, {"a": null, "b": 2}]}"#);
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(m.contains("rows[1] column `a` is null"), "{m}");
        let (_, m) = err(r#"{"rows": [{"a": 1, "bb": 2}]}"#);
        assert!(m.contains("unknown column `bb` (did you mean `b`?)"), "{m}");
        let (_, m) = err(r#"{"rows": [{"a": 1}]}"#);
        assert!(m.contains("rows[0]: missing column `b`"), "{m}");
        let (_, m) = err(r#"{"instances": [[1, "NaN"]]}"#);
        assert!(
            m.contains("instances[0][1] (column `b`) is the string \"NaN\" (non-finite)"),
            "{m}"
        );
        let (_, m) = err(r#"{"instances": [[1, 1e300]]}"#);
        assert!(m.contains("not finite as a 32-bit float"), "{m}");
        let (_, m) = err(r#"{"instances": [[1, 2, 3]]}"#);
        assert!(
            m.contains("instances[0] has 3 values but the model takes 2 (a, b)"),
            "{m}"
        );
        let (s, m) = err(r#"{"instances": [[1, 2], [1, 2], [1, 2]]}"#);
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(m.contains("3 rows exceed the batch limit of 2"), "{m}");
        let (_, m) = err(r#"{"inputs": []}"#);
        assert!(m.contains("unknown field `inputs`"), "{m}");
        let (_, m) = err(r#"[1, 2]"#);
        assert!(m.contains("must be a JSON object"), "{m}");
    }

    #[test]
    fn outputs_are_labels_with_probabilities_or_values() {
        let p = Predictions {
            n_rows: 2,
            n_outputs: 2,
            logits: vec![0.0, 1.0, 3.0, -1.0],
            probabilities: vec![0.25, 0.75, 0.5, 0.5],
        };
        assert_eq!(
            Value::Array(output(&schema(), &p)),
            json!([
                {"label": "z", "probabilities": {"x": 0.25, "z": 0.75}},
                {"label": "x", "probabilities": {"x": 0.5, "z": 0.5}},
            ])
        );
        let mut s = schema();
        s.task = Task::Regression;
        s.class_labels.clear();
        let p = Predictions {
            n_rows: 2,
            n_outputs: 1,
            logits: vec![1.5, -2.0],
            probabilities: vec![],
        };
        assert_eq!(
            Value::Array(output(&s, &p)),
            json!([{"value": 1.5}, {"value": -2.0}])
        );
    }

    #[test]
    fn metrics_render_cumulative_buckets() {
        let m = Metrics::default();
        m.record("/v1/predict", 200, Duration::from_millis(3));
        m.record("/v1/predict", 422, Duration::from_secs(10));
        m.error("invalid_input");
        let pool = Pool {
            permits: Arc::new(Semaphore::new(1)),
            models: Mutex::new(Vec::new()),
            size: 1,
        };
        let t = m.render(&pool);
        assert!(
            t.contains("kiln_serve_requests_total{route=\"/v1/predict\",status=\"422\"} 1\n"),
            "{t}"
        );
        assert!(
            t.contains("kiln_serve_errors_total{kind=\"invalid_input\"} 1\n"),
            "{t}"
        );
        assert!(
            t.contains("_bucket{route=\"/v1/predict\",le=\"0.0025\"} 0\n"),
            "{t}"
        );
        assert!(
            t.contains("_bucket{route=\"/v1/predict\",le=\"0.005\"} 1\n"),
            "{t}"
        );
        assert!(
            t.contains("_bucket{route=\"/v1/predict\",le=\"5\"} 1\n"),
            "{t}"
        );
        assert!(
            t.contains("_bucket{route=\"/v1/predict\",le=\"+Inf\"} 2\n"),
            "{t}"
        );
        assert!(t.contains("_count{route=\"/v1/predict\"} 2\n"), "{t}");
        // the sum of the two latencies in seconds: 0.003 + 10
        let sum: f64 = t
            .split("kiln_serve_request_duration_seconds_sum{route=\"/v1/predict\"} ")
            .nth(1)
            .and_then(|r| r.lines().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{t}"));
        assert!((sum - 10.003).abs() < 1e-12, "{sum}");
    }
}
