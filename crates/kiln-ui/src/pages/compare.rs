//! GET /compare?run=PIPELINE/ID&run=… — 2 to 5 runs side by side: the config keys that
//! differ, the test metrics with their deltas against the first run, the training
//! curves overlaid, and the compression candidates.

use super::list::better;
use super::summary::RunSummary;
use super::{error_page, query};
use crate::App;
use crate::diff;
use crate::html::{Chart, Series, chart, duration, esc, num, page, table, url, utc};
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use kiln_core::artifact::candidates::Candidates;
use kiln_core::artifact::history::History;
use kiln_core::artifact::run::StageKind;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::sync::Arc;

/// Runs compared at most.
const MAX_RUNS: usize = 5;

/// GET /compare.
pub(crate) async fn handler(State(app): State<Arc<App>>, RawQuery(raw): RawQuery) -> Response {
    let keys: Vec<String> = query(raw.as_deref())
        .into_iter()
        .filter(|(k, _)| k == "run")
        .map(|(_, v)| v)
        .collect();
    if keys.len() < 2 || keys.len() > MAX_RUNS {
        return error_page(
            &app,
            StatusCode::BAD_REQUEST,
            "compare",
            &format!(
                "pick 2 to {MAX_RUNS} runs to compare ({} given): tick them on the runs list and press compare",
                keys.len()
            ),
        );
    }
    super::blocking(move || compare(&app, &keys)).await
}

/// The page for `keys` (2 to 5 `PIPELINE/RUN-ID`).
fn compare(app: &App, keys: &[String]) -> Response {
    let mut runs = Vec::new();
    for k in keys {
        let Some((p, id)) = k.split_once('/') else {
            return error_page(
                app,
                StatusCode::BAD_REQUEST,
                "compare",
                &format!("`{k}` is not PIPELINE/RUN-ID"),
            );
        };
        match app.runs.run(p, id) {
            Ok(e) => runs.push(RunSummary::read(e)),
            Err(r) => return super::refused(app, &r),
        }
    }
    Html(render(app, &runs)).into_response()
}

/// The first stage of `kind` with output, its folder.
fn stage_dir(r: &RunSummary, kind: StageKind) -> Option<std::path::PathBuf> {
    let m = r.entry.manifest.as_ref().ok()?;
    m.stages
        .iter()
        .find(|s| s.uses == kind && s.status.has_output())
        .and_then(|s| r.entry.stage_dir(&s.id))
}

fn render(app: &App, runs: &[RunSummary]) -> String {
    let names: Vec<String> = runs.iter().map(|r| r.entry.key()).collect();
    let mut s = format!("<h1>Compare {} runs</h1>", runs.len());
    let head_rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                format!(
                    "<a href=\"/runs/{}/{}\">{}</a>",
                    url(&r.entry.pipeline),
                    url(&r.entry.id),
                    esc(&r.entry.key())
                ),
                format!(
                    "<span class=\"status status-{0}\">{0}</span>",
                    r.state.as_str()
                ),
                r.started.map(utc).unwrap_or_default(),
                r.seconds.map(duration).unwrap_or_default(),
                esc(r.chosen.as_deref().unwrap_or("")),
            ]
        })
        .collect();
    s += &table(
        "compared",
        &["run", "status", "started", "duration", "chosen candidate"],
        &head_rows,
    );

    // config: only what differs
    let flat: Vec<BTreeMap<String, String>> = runs
        .iter()
        .map(|r| {
            r.entry
                .manifest
                .as_ref()
                .map(|m| diff::flatten(&m.resolved))
                .unwrap_or_default()
        })
        .collect();
    let differing = diff::differing(&flat);
    s += "<h2>Config: what differs</h2>";
    if differing.is_empty() {
        s += "<p id=\"config-diff-empty\">The resolved configs are the same.</p>";
    } else {
        let _ = write!(s, "<table id=\"config-diff\"><thead><tr><th>key</th>");
        for n in &names {
            let _ = write!(s, "<th>{}</th>", esc(n));
        }
        s += "</tr></thead><tbody>";
        for (key, values) in &differing {
            let _ = write!(
                s,
                "<tr data-key=\"{0}\"><th><code>{0}</code></th>",
                esc(key)
            );
            for v in values {
                let _ = match v {
                    Some(v) => write!(s, "<td><code>{}</code></td>", esc(v)),
                    None => write!(s, "<td class=\"muted\">(not set)</td>"),
                };
            }
            s += "</tr>";
        }
        s += "</tbody></table>";
    }

    s += &metrics(runs, &names);
    s += &curves(runs);
    s += &candidates(runs, &names);
    page("compare", &app.runs.root().display().to_string(), None, &s)
}

/// Every variant's test metrics, one row per (variant, metric), deltas against the first run.
fn metrics(runs: &[RunSummary], names: &[String]) -> String {
    let mut keys: BTreeSet<(String, String)> = BTreeSet::new();
    for r in runs {
        if let Some(m) = &r.all_metrics {
            for (v, vals) in &m.variants {
                for k in vals.keys() {
                    keys.insert((v.clone(), k.clone()));
                }
            }
        }
    }
    let mut s = String::from("<h2>Test metrics</h2>");
    if keys.is_empty() {
        return s + "<p class=\"muted\">None of these runs has test metrics.</p>";
    }
    s += "<table id=\"metrics-compare\"><thead><tr><th>variant</th><th>metric</th>";
    for (i, n) in names.iter().enumerate() {
        let _ = write!(s, "<th class=\"n\">{}</th>", esc(n));
        if i > 0 {
            s += "<th class=\"n\" title=\"this run minus the first\">Δ vs first</th>";
        }
    }
    s += "</tr></thead><tbody>";
    let value =
        |r: &RunSummary, v: &str, k: &str| r.all_metrics.as_ref()?.variants.get(v)?.get(k).copied();
    for (v, k) in &keys {
        let _ = write!(
            s,
            "<tr data-variant=\"{}\" data-metric=\"{}\"><td>{}</td><td>{}</td>",
            esc(v),
            esc(k),
            esc(v),
            esc(k)
        );
        let first = value(&runs[0], v, k);
        for (i, r) in runs.iter().enumerate() {
            let x = value(r, v, k);
            let _ = write!(s, "<td class=\"n\">{}</td>", x.map(num).unwrap_or_default());
            if i > 0 {
                let cell = match (first, x) {
                    (Some(a), Some(b)) => {
                        let d = b - a;
                        let class = if d == 0.0 {
                            ""
                        } else if better(k, d) {
                            " delta-better"
                        } else {
                            " delta-worse"
                        };
                        format!(
                            "<td class=\"n{class}\">{}{}</td>",
                            if d > 0.0 { "+" } else { "" },
                            num(d)
                        )
                    }
                    _ => "<td></td>".into(),
                };
                s += &cell;
            }
        }
        s += "</tr>";
    }
    s + "</tbody></table>"
}

/// Validation loss and metric of each run's first training stage, overlaid.
fn curves(runs: &[RunSummary]) -> String {
    let histories: Vec<(String, History)> = runs
        .iter()
        .filter_map(|r| {
            let dir = stage_dir(r, StageKind::Train)?;
            let h = kiln_core::artifact::load::<History>(&dir).ok()?;
            Some((r.entry.id.clone(), h))
        })
        .collect();
    let mut s = String::from("<h2>Training curves</h2>");
    if histories.is_empty() {
        return s + "<p class=\"muted\">None of these runs has a training history.</p>";
    }
    let epochs: BTreeSet<usize> = histories
        .iter()
        .flat_map(|(_, h)| h.epochs.iter().map(|e| e.epoch))
        .collect();
    let x: Vec<f64> = epochs.iter().map(|e| *e as f64).collect();
    let series = |f: fn(&kiln_core::artifact::history::EpochRecord) -> f64| {
        histories
            .iter()
            .map(|(id, h)| Series {
                label: id.clone(),
                values: epochs
                    .iter()
                    .map(|ep| h.epochs.iter().find(|e| e.epoch == *ep).map(f))
                    .collect(),
            })
            .collect::<Vec<_>>()
    };
    let metric = histories[0].1.metric.clone();
    s += "<div class=\"charts\">";
    s += &chart(
        "compare-metric",
        &Chart {
            title: format!("valid {metric}"),
            xlabel: "epoch".into(),
            x: x.clone(),
            series: series(|e| e.valid_metric),
            best: None,
        },
    );
    s += &chart(
        "compare-loss",
        &Chart {
            title: "valid loss".into(),
            xlabel: "epoch".into(),
            x,
            series: series(|e| e.valid_loss),
            best: None,
        },
    );
    s += "</div>";
    let best: Vec<String> = histories
        .iter()
        .map(|(id, h)| format!("{}: epoch {}", esc(id), h.best_epoch))
        .collect();
    let _ = write!(s, "<p>kept epochs: {}</p>", best.join(" · "));
    s
}

/// Each candidate name, per run: ONNX size, valid score, chosen.
fn candidates(runs: &[RunSummary], names: &[String]) -> String {
    let per_run: Vec<Option<Candidates>> = runs
        .iter()
        .map(|r| {
            stage_dir(r, StageKind::Optimize)
                .and_then(|d| kiln_core::artifact::load::<Candidates>(&d).ok())
        })
        .collect();
    if per_run.iter().all(Option::is_none) {
        return String::new();
    }
    let mut all: Vec<String> = Vec::new();
    for c in per_run.iter().flatten() {
        for k in &c.candidates {
            if !all.contains(&k.name) {
                all.push(k.name.clone());
            }
        }
    }
    let mut head = vec!["candidate".to_string()];
    head.extend(names.iter().cloned());
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|name| {
            let mut row = vec![esc(name)];
            for c in &per_run {
                row.push(
                    c.as_ref()
                        .and_then(|c| c.candidates.iter().find(|k| &k.name == name))
                        .map_or(String::new(), |k| {
                            format!(
                                "{} · score {}{}",
                                super::stage::bytes(k.onnx_bytes as u64),
                                num(k.valid_accuracy),
                                if k.chosen {
                                    " · <strong>chosen</strong>"
                                } else {
                                    ""
                                }
                            )
                        }),
                );
            }
            row
        })
        .collect();
    let head: Vec<&str> = head.iter().map(String::as_str).collect();
    format!(
        "<h2>Compression candidates</h2>{}",
        table("candidates-compare", &head, &rows)
    )
}
