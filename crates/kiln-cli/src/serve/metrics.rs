//! `/metrics`: the server's counters, gauges and latency histograms in a prometheus-client
//! registry, exposed in the OpenMetrics text format (which Prometheus scrapes).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::time::Duration;

/// The content type of [`Metrics::render`]'s text.
pub(super) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds (seconds) of the latency histogram's buckets (+Inf is added).
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatus {
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Route {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// Every metric of `kiln serve`, registered once; the handles are cheap atomic updates.
pub(super) struct Metrics {
    registry: Registry,
    requests: Family<RouteStatus, Counter>,
    errors: Family<Kind, Counter>,
    latency: Family<Route, Histogram, fn() -> Histogram>,
    rows: Counter,
    sessions: Gauge,
    sessions_available: Gauge,
    connections_open: Gauge,
    connections_over_limit: Counter,
    connections_closed: Family<Kind, Counter>,
}

impl Metrics {
    /// The registry with every metric, `sessions` set to the pool's size.
    pub(super) fn new(pool_size: usize) -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RouteStatus, Counter>::default();
        registry.register(
            "kiln_serve_requests",
            "HTTP responses by route and status",
            requests.clone(),
        );
        let errors = Family::<Kind, Counter>::default();
        registry.register(
            "kiln_serve_errors",
            "Failed /v1/predict requests by kind",
            errors.clone(),
        );
        let latency = Family::<Route, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "kiln_serve_request_duration_seconds",
            "Request latency by route",
            latency.clone(),
        );
        let rows = Counter::default();
        registry.register("kiln_serve_rows_predicted", "Rows predicted", rows.clone());
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let sessions = gauge(
            &mut registry,
            "kiln_serve_sessions",
            "ONNX Runtime sessions in the pool",
        );
        let sessions_available = gauge(
            &mut registry,
            "kiln_serve_sessions_available",
            "Sessions not running a request",
        );
        let connections_open = gauge(
            &mut registry,
            "kiln_serve_connections_open",
            "Open connections counted against --max-connections",
        );
        let connections_over_limit = Counter::default();
        registry.register(
            "kiln_serve_connections_over_limit",
            "Connections accepted beyond --max-connections: /healthz and /readyz answered, anything else 503; past 32 at once closed unanswered",
            connections_over_limit.clone(),
        );
        let connections_closed = Family::<Kind, Counter>::default();
        registry.register(
            "kiln_serve_connections_closed",
            "Connections the server closed by reason: header_timeout, idle_timeout, shutdown_deadline",
            connections_closed.clone(),
        );
        let m = Metrics {
            registry,
            requests,
            errors,
            latency,
            rows,
            sessions,
            sessions_available,
            connections_open,
            connections_over_limit,
            connections_closed,
        };
        m.sessions.set(sessions_i64(pool_size));
        m
    }

    /// One response: counted by route and status, its latency observed.
    pub(super) fn record(&self, route: &str, status: u16, took: Duration) {
        self.requests
            .get_or_create(&RouteStatus {
                route: route.to_string(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&Route {
                route: route.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// A failed /v1/predict request of this kind.
    pub(super) fn error(&self, kind: &'static str) {
        self.errors.get_or_create(&Kind { kind }).inc();
    }

    /// Rows predicted.
    pub(super) fn rows(&self, n: usize) {
        self.rows.inc_by(n as u64);
    }

    /// A connection was opened (`+1`) or closed (`-1`) under the cap.
    pub(super) fn connection(&self, delta: i64) {
        self.connections_open.inc_by(delta);
    }

    /// A connection beyond the cap.
    pub(super) fn over_limit(&self) {
        self.connections_over_limit.inc();
    }

    /// `n` connections closed by the server for `reason`.
    pub(super) fn closed(&self, reason: &'static str, n: u64) {
        self.connections_closed
            .get_or_create(&Kind { kind: reason })
            .inc_by(n);
    }

    /// The exposition, with the sessions not running a request now.
    pub(super) fn render(&self, available: usize) -> String {
        self.sessions_available.set(sessions_i64(available));
        let mut o = String::new();
        // writing to a String cannot fail
        let _ = prometheus_client::encoding::text::encode(&mut o, &self.registry);
        o
    }
}

fn sessions_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_cumulative_buckets() {
        let m = Metrics::new(3);
        m.record("/v1/predict", 200, Duration::from_millis(3));
        m.record("/v1/predict", 422, Duration::from_secs(10));
        m.error("invalid_input");
        m.rows(7);
        m.over_limit();
        m.closed("header_timeout", 2);
        let t = m.render(1);
        for line in [
            "# TYPE kiln_serve_requests counter",
            "kiln_serve_requests_total{route=\"/v1/predict\",status=\"422\"} 1",
            "kiln_serve_requests_total{route=\"/v1/predict\",status=\"200\"} 1",
            "kiln_serve_errors_total{kind=\"invalid_input\"} 1",
            "# TYPE kiln_serve_request_duration_seconds histogram",
            "kiln_serve_request_duration_seconds_bucket{le=\"0.0025\",route=\"/v1/predict\"} 0",
            "kiln_serve_request_duration_seconds_bucket{le=\"0.005\",route=\"/v1/predict\"} 1",
            "kiln_serve_request_duration_seconds_bucket{le=\"5.0\",route=\"/v1/predict\"} 1",
            "kiln_serve_request_duration_seconds_bucket{le=\"+Inf\",route=\"/v1/predict\"} 2",
            "kiln_serve_request_duration_seconds_count{route=\"/v1/predict\"} 2",
            "kiln_serve_rows_predicted_total 7",
            "kiln_serve_sessions 3",
            "kiln_serve_sessions_available 1",
            "kiln_serve_connections_open 0",
            "kiln_serve_connections_over_limit_total 1",
            "kiln_serve_connections_closed_total{kind=\"header_timeout\"} 2",
            "# EOF",
        ] {
            assert!(t.lines().any(|l| l == line), "no line {line:?} in\n{t}");
        }
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
