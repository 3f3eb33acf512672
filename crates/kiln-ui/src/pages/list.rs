//! GET / — every run of every pipeline, newest first: status, start, duration, cache
//! hits, the main test metrics and the chosen compression candidate; filtered by
//! pipeline and status and sorted by any column through the URL's query, with boxes to
//! pick runs to compare.

use super::summary::{MAIN_METRICS, RunSummary, lower_is_better};
use super::{param, query};
use crate::App;
use crate::html::{duration, esc, num, page, url, utc};
use crate::runs::RunState;
use axum::extract::{RawQuery, State};
use axum::response::Html;
use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::fmt::Write;
use std::sync::Arc;

/// The list's query: filters, sort and how many rows.
#[derive(Clone)]
struct View {
    pipeline: Option<String>,
    status: Option<RunState>,
    sort: Option<String>,
    descending: bool,
    /// Rows shown at most (`?limit=`, 0 for all).
    limit: usize,
    /// A run ticked for comparison when the page opens (`?check=PIPELINE/ID`, from a
    /// run page's "compare with…").
    check: Option<String>,
}

/// Rows the list shows unless `?limit=` says otherwise: the page stays light with
/// thousands of runs.
const DEFAULT_LIMIT: usize = 500;

impl View {
    fn href(&self, sort: &str, descending: bool) -> String {
        let mut q = Vec::new();
        if let Some(p) = &self.pipeline {
            q.push(format!("pipeline={}", url(p)));
        }
        if let Some(s) = self.status {
            q.push(format!("status={}", s.as_str()));
        }
        q.push(format!("sort={}", url(sort)));
        q.push(format!("order={}", if descending { "desc" } else { "asc" }));
        if self.limit != DEFAULT_LIMIT {
            q.push(format!("limit={}", self.limit));
        }
        format!("/?{}", q.join("&"))
    }
}

/// GET /.
pub(crate) async fn handler(State(app): State<Arc<App>>, RawQuery(raw): RawQuery) -> Html<String> {
    let q = query(raw.as_deref());
    let view = View {
        pipeline: param(&q, "pipeline").map(str::to_owned),
        status: param(&q, "status").and_then(RunState::parse),
        sort: param(&q, "sort").map(str::to_owned),
        descending: param(&q, "order") != Some("asc"),
        limit: param(&q, "limit")
            .and_then(|l| l.parse().ok())
            .unwrap_or(DEFAULT_LIMIT),
        check: param(&q, "check").map(str::to_owned),
    };
    let app2 = app.clone();
    let rows = tokio::task::spawn_blocking(move || {
        app2.runs
            .list()
            .into_iter()
            .map(RunSummary::read)
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    Html(render(&app, rows, &view))
}

fn render(app: &App, all: Vec<RunSummary>, view: &View) -> String {
    let pipelines: BTreeSet<String> = all.iter().map(|r| r.entry.pipeline.clone()).collect();
    let total = all.len();
    let mut rows: Vec<RunSummary> = all
        .into_iter()
        .filter(|r| {
            view.pipeline
                .as_ref()
                .is_none_or(|p| *p == r.entry.pipeline)
        })
        .filter(|r| view.status.is_none_or(|s| s == r.state))
        .collect();
    let metrics: Vec<&str> = MAIN_METRICS
        .into_iter()
        .filter(|m| rows.iter().any(|r| r.metrics.contains_key(*m)))
        .collect();
    if let Some(key) = &view.sort {
        sort(&mut rows, key, view.descending);
    }
    let mut s = String::from("<h1>Runs</h1>");
    s += &filters(&pipelines, view);
    if rows.is_empty() {
        s += if total == 0 {
            "<p class=\"muted\">No runs here yet. Run a pipeline (<code>cargo xtask pipeline</code> or <code>kiln run pipelines/iris.toml</code>) and reload.</p>"
        } else {
            "<p class=\"muted\">No run matches the filter.</p>"
        };
        return page("runs", &app.runs.root().display().to_string(), None, &s);
    }
    let matching = rows.len();
    if view.limit > 0 {
        rows.truncate(view.limit);
    }
    s += "<form method=\"get\" action=\"/compare\">";
    s += "<table class=\"runs\" id=\"runs\"><thead><tr><th></th>";
    for (key, label) in [
        ("pipeline", "pipeline"),
        ("run", "run"),
        ("status", "status"),
        ("started", "started"),
        ("duration", "duration"),
        ("cache", "cache hits"),
    ] {
        s += &header(view, key, label, false);
    }
    for m in &metrics {
        s += &header(view, m, &format!("test {m}"), true);
    }
    s += "<th>variant</th><th>chosen candidate</th></tr></thead><tbody>";
    for r in &rows {
        let key = r.entry.key();
        let _ = write!(
            s,
            "<tr data-run=\"{k}\"><td><input type=\"checkbox\" name=\"run\" value=\"{k}\" aria-label=\"compare {k}\"{checked}></td>\
<td>{p}</td><td><a href=\"/runs/{pu}/{iu}\">{i}</a></td><td class=\"status status-{st}\">{st}</td><td>{start}</td><td class=\"n\">{dur}</td><td class=\"n\">{cache}</td>",
            k = esc(&key),
            checked = if view.check.as_deref() == Some(key.as_str()) {
                " checked"
            } else {
                ""
            },
            p = esc(&r.entry.pipeline),
            pu = url(&r.entry.pipeline),
            iu = url(&r.entry.id),
            i = esc(&r.entry.id),
            st = r.state.as_str(),
            start = r.started.map(utc).unwrap_or_default(),
            dur = r.seconds.map(duration).unwrap_or_default(),
            cache = r.cache.map(|(c, d)| format!("{c}/{d}")).unwrap_or_default(),
        );
        for m in &metrics {
            let v = r.metrics.get(*m).map(|v| num(*v)).unwrap_or_default();
            let _ = write!(s, "<td class=\"n\" data-metric=\"{m}\">{v}</td>");
        }
        let _ = write!(
            s,
            "<td>{}</td><td>{}</td></tr>",
            esc(r.variant.as_deref().unwrap_or("")),
            esc(r.chosen.as_deref().unwrap_or(""))
        );
        if let Err(e) = &r.entry.manifest {
            let _ = write!(
                s,
                "<tr class=\"broken\"><td></td><td colspan=\"{}\" class=\"problem\">{}</td></tr>",
                8 + metrics.len(),
                esc(e)
            );
        }
    }
    let _ = write!(
        s,
        "</tbody></table><button type=\"submit\" id=\"compare\">compare selected (2–5)</button></form>\
<p class=\"muted\">{} of {total} runs shown.{}</p>",
        rows.len(),
        if rows.len() < matching {
            format!(
                " <a href=\"{}\" id=\"show-all\">show all {matching}</a>",
                esc(&View {
                    limit: 0,
                    ..view.clone()
                }
                .href(view.sort.as_deref().unwrap_or("started"), view.descending))
            )
        } else {
            String::new()
        }
    );
    page("runs", &app.runs.root().display().to_string(), None, &s)
}

/// A sortable column's header: a link that sorts by it (again: the other way).
fn header(view: &View, key: &str, label: &str, numeric: bool) -> String {
    let active = view.sort.as_deref() == Some(key);
    let next_desc = if active { !view.descending } else { true };
    let arrow = match (active, view.descending) {
        (false, _) => "",
        (true, true) => " ▼",
        (true, false) => " ▲",
    };
    format!(
        "<th{}><a href=\"{}\" data-sort=\"{}\">{}{arrow}</a></th>",
        if numeric { " class=\"n\"" } else { "" },
        esc(&view.href(key, next_desc)),
        esc(key),
        esc(label)
    )
}

/// The filter form: pipeline and status.
fn filters(pipelines: &BTreeSet<String>, view: &View) -> String {
    let mut s = String::from(
        "<form class=\"filters\" method=\"get\" action=\"/\"><label>pipeline<select name=\"pipeline\" id=\"filter-pipeline\"><option value=\"\">all</option>",
    );
    for p in pipelines {
        let sel = if view.pipeline.as_deref() == Some(p) {
            " selected"
        } else {
            ""
        };
        let _ = write!(s, "<option{sel}>{}</option>", esc(p));
    }
    s += "</select></label><label>status<select name=\"status\" id=\"filter-status\"><option value=\"\">all</option>";
    for st in RunState::ALL {
        let sel = if view.status == Some(st) {
            " selected"
        } else {
            ""
        };
        let _ = write!(s, "<option{sel}>{}</option>", st.as_str());
    }
    s += "</select></label><button type=\"submit\">filter</button></form>";
    s
}

/// Sorts by `key` (a column or a metric); rows without a value go last either way.
fn sort(rows: &mut [RunSummary], key: &str, descending: bool) {
    let dir = |o: Ordering| if descending { o.reverse() } else { o };
    match key {
        "pipeline" => rows.sort_by(|a, b| dir(a.entry.pipeline.cmp(&b.entry.pipeline))),
        "run" | "started" => rows.sort_by(|a, b| dir(a.entry.id.cmp(&b.entry.id))),
        "status" => rows.sort_by(|a, b| dir(a.state.cmp(&b.state))),
        "cache" => by_number(
            rows,
            |r| {
                r.cache
                    .filter(|c| c.1 > 0)
                    .map(|(c, d)| c as f64 / d as f64)
            },
            descending,
        ),
        "duration" => by_number(rows, |r| r.seconds, descending),
        metric => by_number(rows, |r| r.metrics.get(metric).copied(), descending),
    }
}

fn by_number(rows: &mut [RunSummary], f: impl Fn(&RunSummary) -> Option<f64>, descending: bool) {
    rows.sort_by(|a, b| match (f(a), f(b)) {
        (Some(x), Some(y)) => {
            let o = x.total_cmp(&y);
            if descending { o.reverse() } else { o }
        }
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    });
}

/// Whether a metric's delta `d` (new minus old) is an improvement.
pub(crate) fn better(metric: &str, d: f64) -> bool {
    if lower_is_better(metric) {
        d < 0.0
    } else {
        d > 0.0
    }
}
