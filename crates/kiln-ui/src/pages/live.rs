//! GET /runs/{pipeline}/{run}/progress — what a running run's page polls: the run's
//! state, its stages' statuses (run.json) and progress.json (the running stage, its
//! phase, the epochs done).

use crate::App;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kiln_core::artifact::progress::RunProgress;
use serde::Serialize;
use std::sync::Arc;

/// The answer.
#[derive(Debug, Serialize)]
pub(crate) struct Live {
    /// `running`, `ok`, `failed`, `interrupted`, `broken`.
    state: &'static str,
    /// Each stage's id and status.
    stages: Vec<StageState>,
    /// progress.json (empty when absent or unreadable: it is rewritten atomically, so
    /// that only happens before the first write).
    progress: RunProgress,
}

/// A stage's id and status.
#[derive(Debug, Serialize)]
struct StageState {
    id: String,
    status: &'static str,
}

/// GET /runs/{pipeline}/{run}/progress.
pub(crate) async fn handler(
    State(app): State<Arc<App>>,
    Path((pipeline, run)): Path<(String, String)>,
) -> Response {
    super::blocking(move || live(&app, &pipeline, &run)).await
}

/// The answer for the run `pipeline/run`.
fn live(app: &App, pipeline: &str, run: &str) -> Response {
    let entry = match app.runs.run(pipeline, run) {
        Ok(e) => e,
        Err(r) => return (StatusCode::NOT_FOUND, r.to_string()).into_response(),
    };
    let progress = kiln_core::artifact::load(&entry.dir).unwrap_or_default();
    let stages = entry
        .manifest
        .as_ref()
        .map(|m| {
            m.stages
                .iter()
                .map(|s| StageState {
                    id: s.id.clone(),
                    status: s.status.as_str(),
                })
                .collect()
        })
        .unwrap_or_default();
    (
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        Json(Live {
            state: entry.state().as_str(),
            stages,
            progress,
        }),
    )
        .into_response()
}
