//! GET /runs/{pipeline}/{run} — one run: its header, the live section while it runs,
//! the stage graph, each stage's artifacts (`stage`), the resolved config, and the
//! inputs and versions it ran with.

use super::stage;
use crate::App;
use crate::html::{Chart, Series, chart, duration, esc, page, problem, url, utc};
use crate::read::{self, StageView};
use crate::runs::{RunEntry, RunState};
use axum::extract::{Path, State};
use axum::response::{Html, IntoResponse, Response};
use kiln_core::artifact::progress::{EpochPoint, RunProgress};
use kiln_core::artifact::run::RunManifest;
use std::fmt::Write;
use std::sync::Arc;

/// GET /runs/{pipeline}/{run}.
pub(crate) async fn handler(
    State(app): State<Arc<App>>,
    Path((pipeline, run)): Path<(String, String)>,
) -> Response {
    super::blocking(move || match app.runs.run(&pipeline, &run) {
        Ok(entry) => Html(render(&app, &entry)).into_response(),
        Err(r) => super::refused(&app, &r),
    })
    .await
}

fn render(app: &App, entry: &RunEntry) -> String {
    let title = entry.key();
    let root = app.runs.root().display().to_string();
    let m = match &entry.manifest {
        Ok(m) => m,
        Err(e) => {
            let body = format!(
                "<h1>{}</h1><p class=\"status status-broken\">broken</p>{}<p>The run folder has no readable run.json: the run may have been killed while it started, or the file was changed by hand. Its stage folders are left as they are.</p>",
                esc(&title),
                problem("run.json", e)
            );
            return page(&title, &root, None, &body);
        }
    };
    let state = entry.state();
    let stages = read::stages(entry);
    let mut s = head(entry, m, state);
    let live = (state == RunState::Running)
        .then(|| format!("/runs/{}/{}/progress", url(&entry.pipeline), url(&entry.id)));
    if live.is_some() {
        s += &live_section(entry);
    }
    s += &graph(&stages);
    for v in &stages {
        s += &stage::section(entry, v);
    }
    s += &config(m);
    page(&title, &root, live.as_deref(), &s)
}

/// Title, state, times, versions and the failure.
fn head(entry: &RunEntry, m: &RunManifest, state: RunState) -> String {
    let mut s = format!(
        "<h1>{} <span class=\"muted\">/</span> {}</h1><p><span class=\"status status-{st}\" id=\"run-status\">{st}</span> · started {} · {} · kiln {}{}</p>",
        esc(&entry.pipeline),
        esc(&entry.id),
        utc(m.started),
        duration(m.seconds),
        esc(&m.kiln_version),
        m.git_commit
            .as_ref()
            .map_or(String::new(), |c| format!(" · git {}", esc(c))),
        st = state.as_str(),
    );
    if state == RunState::Interrupted {
        let _ = write!(
            s,
            "<p class=\"problem\">run.json says running, but its process ({}) is gone: the run was interrupted. Run the pipeline again; its completed stages come from the cache.</p>",
            m.pid
        );
    }
    if let Some(f) = &m.failure {
        s += &problem("failed", f);
    }
    let _ = write!(
        s,
        "<p><a href=\"/?pipeline={p}&amp;check={k}\" id=\"compare-with\">compare with…</a> (this run ticked on the runs list of its pipeline) · pipeline file <code>{f}</code> · seed {seed}</p>",
        k = url(&entry.key()),
        p = url(&entry.pipeline),
        f = esc(&m.file),
        seed = m.seed
    );
    s
}

/// The stage graph: stages in columns by their depth along `inputs` and `requires` (each
/// box names what it reads and which verdict it needs), or in execution order for a
/// run.json from before those were recorded; each with its kind, status, time and cache
/// hit.
fn graph(stages: &[StageView]) -> String {
    let mut depth: Vec<usize> = Vec::with_capacity(stages.len());
    for v in stages {
        let d = v
            .record
            .inputs
            .iter()
            .chain(&v.record.requires)
            .filter_map(|up| stages.iter().position(|o| o.record.id == *up))
            .filter(|&i| i < depth.len())
            .map(|i| depth[i] + 1)
            .max()
            .unwrap_or(0);
        depth.push(d);
    }
    if depth.iter().all(|&d| d == 0) {
        depth = (0..stages.len()).collect();
    }
    let layers = depth.iter().copied().max().map_or(0, |m| m + 1);
    let mut s = String::from("<h2>Stages</h2><div class=\"graph\" id=\"graph\">");
    for layer in 0..layers {
        if layer > 0 {
            s += "<span class=\"edge\">→</span>";
        }
        s += "<div class=\"layer\">";
        for (v, _) in stages.iter().zip(&depth).filter(|(_, d)| **d == layer) {
            s += &node(v);
        }
        s += "</div>";
    }
    s += "</div>";
    let notes: Vec<String> = stages
        .iter()
        .filter_map(|v| {
            let r = &v.record;
            let why = r.message.clone().or_else(|| {
                (!r.rerun_because.is_empty())
                    .then(|| format!("reran because {}", r.rerun_because.join("; ")))
            })?;
            Some(format!(
                "<li><strong>{}</strong>: {}</li>",
                esc(&r.id),
                esc(&why)
            ))
        })
        .collect();
    if !notes.is_empty() {
        let _ = write!(s, "<ul class=\"notes\">{}</ul>", notes.concat());
    }
    s
}

/// One stage's box.
fn node(v: &StageView) -> String {
    let r = &v.record;
    let time = if r.status.has_output() || r.seconds > 0.0 {
        format!(" {:.2} s", r.seconds)
    } else {
        String::new()
    };
    let mut links = String::new();
    if !r.inputs.is_empty() {
        let _ = write!(
            links,
            "<small class=\"in\">← {}</small>",
            esc(&r.inputs.join(", "))
        );
    }
    if !r.requires.is_empty() {
        let _ = write!(
            links,
            "<small class=\"in\">needs {}'s verdict</small>",
            esc(&r.requires.join(", "))
        );
    }
    format!(
        "<a class=\"node status-{st}\" data-stage=\"{id}\" href=\"#stage-{id}\"><span class=\"id\">{id}</span> <small>{kind} · <span class=\"st\">{st}</span>{time}{cache}</small>{links}</a>",
        id = esc(&r.id),
        kind = r.uses,
        st = r.status,
        cache = if r.status == kiln_core::artifact::run::StageStatus::Cached {
            " · cache hit"
        } else {
            ""
        },
    )
}

/// The running stage, its phase and the epochs done so far (the page's script adds
/// epochs as progress.json gains them).
fn live_section(entry: &RunEntry) -> String {
    let progress: RunProgress = kiln_core::artifact::load(&entry.dir).unwrap_or_default();
    let phase = if progress.stage.is_empty() {
        "between stages".to_string()
    } else {
        format!("{}: {}", progress.stage, progress.phase)
    };
    let mut rows = String::new();
    for e in &progress.epochs {
        let _ = write!(
            rows,
            "<tr data-epoch=\"{}\"><td>{}/{}</td><td class=\"n\">{:.4}</td><td class=\"n\">{:.4}</td><td class=\"n\">{:.4}</td></tr>",
            e.epoch, e.epoch, e.of, e.train_loss, e.valid_loss, e.valid_metric
        );
    }
    format!(
        "<section id=\"live\"><h2>Live</h2><p>now: <strong id=\"live-phase\">{}</strong> <span class=\"muted\">(follows progress.json every second)</span></p>\
<div class=\"charts\">{}</div><table id=\"live-epochs\"><thead><tr><th>epoch</th><th class=\"n\">train loss</th><th class=\"n\">valid loss</th><th class=\"n\">valid metric</th></tr></thead><tbody data-stage=\"{stage}\">{rows}</tbody></table></section>",
        esc(&phase),
        chart("live-curves", &live_chart(&progress.epochs)),
        stage = esc(&progress.stage),
    )
}

fn live_chart(epochs: &[EpochPoint]) -> Chart {
    let line = |label: &str, f: fn(&EpochPoint) -> f64| Series {
        label: label.into(),
        values: epochs.iter().map(|e| Some(f(e))).collect(),
    };
    // a sweep's trials each count epochs from 1: then x is the order of completion, as
    // the page's script draws it (uPlot needs x to increase)
    let increasing = epochs.windows(2).all(|w| w[1].epoch > w[0].epoch);
    Chart {
        title: "loss and validation metric so far".into(),
        xlabel: if increasing {
            "epoch".into()
        } else {
            "epochs completed (all trials)".into()
        },
        x: epochs
            .iter()
            .enumerate()
            .map(|(i, e)| if increasing { e.epoch } else { i + 1 } as f64)
            .collect(),
        series: vec![
            line("train loss", |e| e.train_loss),
            line("valid loss", |e| e.valid_loss),
            line("valid metric", |e| e.valid_metric),
        ],
        best: None,
    }
}

/// The resolved config per stage, the input files and the versions.
fn config(m: &RunManifest) -> String {
    let mut s = String::from("<h2 id=\"config\">Resolved config</h2>");
    for (stage, v) in &m.resolved {
        let text = serde_json::to_string_pretty(v).unwrap_or_default();
        let _ = write!(
            s,
            "<h3>{}</h3><pre class=\"config\" data-stage=\"{}\">{}</pre>",
            esc(stage),
            esc(stage),
            esc(&text)
        );
    }
    let files: Vec<Vec<String>> = m
        .input_files
        .iter()
        .map(|(f, h)| {
            vec![
                format!("<code>{}</code>", esc(f)),
                format!("<code>{}</code>", esc(h)),
            ]
        })
        .collect();
    if !files.is_empty() {
        s += "<h3>input files</h3>";
        s += &crate::html::table("files", &["file", "hash"], &files);
    }
    let versions: Vec<Vec<String>> = m
        .versions
        .iter()
        .map(|(k, v)| vec![esc(k), esc(v)])
        .chain(
            m.onnxruntime
                .iter()
                .map(|o| vec!["onnxruntime".into(), esc(o)]),
        )
        .collect();
    s += "<details><summary>versions and build</summary>";
    s += &crate::html::table("versions", &["library", "version"], &versions);
    let _ = write!(
        s,
        "<p class=\"muted\">build {}</p></details>",
        esc(&m.build)
    );
    s
}
