//! The pages and JSON endpoints, one module each: the runs list, one run, the
//! comparison, a running run's progress, and the figure files a run page shows.

pub(crate) mod compare;
pub(crate) mod files;
pub(crate) mod list;
pub(crate) mod live;
pub(crate) mod run;
pub(crate) mod stage;
pub(crate) mod summary;

use crate::App;
use crate::html::{esc, page};
use crate::runs::Refused;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use std::sync::Arc;

/// The query string's pairs, decoded (repeated keys kept, in order).
pub(crate) fn query(raw: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The first value of `key`, if not empty.
pub(crate) fn param<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter()
        .find(|(k, v)| k == key && !v.is_empty())
        .map(|(_, v)| v.as_str())
}

/// An error page with `status`.
pub(crate) fn error_page(app: &App, status: StatusCode, title: &str, message: &str) -> Response {
    let body = format!(
        "<h1>{}</h1><p class=\"problem\">{}</p><p><a href=\"/\">all runs</a></p>",
        esc(title),
        esc(message)
    );
    (
        status,
        Html(page(
            title,
            &app.runs.root().display().to_string(),
            None,
            &body,
        )),
    )
        .into_response()
}

/// The page for a path the runs folder refused.
pub(crate) fn refused(app: &App, r: &Refused) -> Response {
    let status = match r {
        Refused::Missing(_) => StatusCode::NOT_FOUND,
        Refused::BadName(_) | Refused::Outside(_) => StatusCode::FORBIDDEN,
    };
    error_page(app, status, "not shown", &r.to_string())
}

/// Runs `page` on tokio's blocking pool: every page reads files (and /proc), which must
/// not hold up the I/O workers.
pub(crate) async fn blocking(page: impl FnOnce() -> Response + Send + 'static) -> Response {
    tokio::task::spawn_blocking(page).await.unwrap_or_else(|e| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("rendering the page failed: {e}\n"),
        )
            .into_response()
    })
}

/// Any other path.
pub(crate) async fn not_found(State(app): State<Arc<App>>) -> Response {
    error_page(
        &app,
        StatusCode::NOT_FOUND,
        "no such page",
        "kiln ui has no page at this address",
    )
}
