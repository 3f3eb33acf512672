//! The `Host` header check: a page on another site that makes its name resolve to
//! 127.0.0.1 (DNS rebinding) sends its own name as `Host`, so only loopback names, the
//! bound address and the names given with `--allow-host` are answered.

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::sync::Arc;

/// The accepted `Host` values, lower-case, each with and without the port.
#[derive(Clone, Debug)]
pub(crate) struct Hosts(Arc<Vec<String>>);

impl Hosts {
    /// Loopback's names and the bound address, at the bound port, plus `extra` names.
    pub(crate) fn new(bound: SocketAddr, extra: &[String]) -> Hosts {
        let port = bound.port();
        let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "[::1]".into()];
        let ip = match bound {
            SocketAddr::V4(a) => a.ip().to_string(),
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
        };
        names.push(ip);
        names.extend(extra.iter().map(|h| h.to_ascii_lowercase()));
        let mut all = Vec::with_capacity(names.len() * 2);
        for n in names {
            all.push(format!("{n}:{port}"));
            all.push(n);
        }
        Hosts(Arc::new(all))
    }

    /// Whether `host` (the header's value) is accepted.
    pub(crate) fn allows(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        self.0.contains(&host)
    }
}

/// Middleware: 421 Misdirected Request for a missing or unknown `Host`.
pub(crate) async fn check_host(State(hosts): State<Hosts>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned);
    match host {
        Some(h) if hosts.allows(&h) => next.run(req).await,
        Some(h) => {
            tracing::warn!(host = %h, "refused a request for another host name");
            (
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "kiln ui does not answer for host `{h}`: open it as http://localhost:PORT, or start it with --allow-host {h}\n"
                ),
            )
                .into_response()
        }
        None => (
            StatusCode::BAD_REQUEST,
            "kiln ui needs a Host header\n".to_string(),
        )
            .into_response(),
    }
}

/// The page's content security policy: scripts and styles only from kiln ui itself
/// (uPlot sets its styles through the DOM), images from it or inline data, no plugins,
/// no framing, no `javascript:` links. A response that set its own keeps it.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; \
     form-action 'self'";

/// Middleware: the content security policy and `nosniff` on every answer.
pub(crate) async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            header::HeaderValue::from_static(CSP),
        );
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_and_the_bound_port_only() {
        let h = Hosts::new("127.0.0.1:8484".parse().unwrap(), &["box.lan".into()]);
        for ok in [
            "localhost:8484",
            "127.0.0.1:8484",
            "LOCALHOST",
            "[::1]:8484",
            "box.lan:8484",
        ] {
            assert!(h.allows(ok), "{ok}");
        }
        for bad in [
            "evil.example:8484",
            "localhost:9999",
            "127.0.0.2:8484",
            "",
            "localhost.evil.example",
        ] {
            assert!(!h.allows(bad), "{bad}");
        }
    }
}
