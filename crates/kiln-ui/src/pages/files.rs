//! GET /runs/{pipeline}/{run}/files/{stage}/{file} — a figure a stage drew (SVG or PNG),
//! read from inside the runs folder; any other kind of file is not served.

use crate::App;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// GET /runs/{pipeline}/{run}/files/{stage}/{file}.
pub(crate) async fn handler(
    State(app): State<Arc<App>>,
    Path((pipeline, run, stage, file)): Path<(String, String, String, String)>,
) -> Response {
    let ty = if file.ends_with(".svg") {
        "image/svg+xml"
    } else if file.ends_with(".png") {
        "image/png"
    } else {
        return super::error_page(
            &app,
            StatusCode::FORBIDDEN,
            "not shown",
            "kiln ui serves a stage's figures (.svg, .png) only",
        );
    };
    let path = match app.runs.resolve(&[&pipeline, &run, &stage, &file]) {
        Ok(p) => p,
        Err(r) => return super::refused(&app, &r),
    };
    match tokio::task::spawn_blocking(move || std::fs::read(&path))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, ty),
                // an SVG opened on its own runs no script
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'none'; style-src 'unsafe-inline'",
                ),
            ],
            bytes,
        )
            .into_response(),
        Err(e) => super::error_page(
            &app,
            StatusCode::NOT_FOUND,
            "not shown",
            &format!("{file}: {e}"),
        ),
    }
}
