//! One stage's section on the run page, by kind: the data profile with histograms, the
//! training curves with the kept epoch marked, the compression candidates, the test
//! metrics (gates, confusion matrix, per-class scores, importance, figures), and the
//! deployed bundle (parity, ONNX graph summary, the model card).

use super::summary::MAIN_METRICS;
use crate::html::{Chart, Series, chart, esc, histogram_svg, num, problem, table, url};
use crate::markdown;
use crate::read::{Loaded, StageArtifacts, StageView};
use crate::runs::RunEntry;
use kiln_core::artifact::candidates::{Candidates, Timings};
use kiln_core::artifact::history::History;
use kiln_core::artifact::metrics::Metrics;
use kiln_core::artifact::profile::Profile;
use kiln_evaluate::VariantMetrics;
use std::collections::BTreeMap;
use std::fmt::Write;

/// Columns of the profile shown at most (MNIST has 784).
const MAX_COLUMNS: usize = 100;
/// Up to this many columns the profile table is open; more are folded.
const OPEN_COLUMNS: usize = 20;

/// The section of stage `v`.
pub(crate) fn section(run: &RunEntry, v: &StageView) -> String {
    let r = &v.record;
    let mut s = format!(
        "<section class=\"stage\" id=\"stage-{id}\"><h2>{id} <span class=\"muted\">({kind})</span> <span class=\"status status-{st}\">{st}</span></h2>",
        id = esc(&r.id),
        kind = r.uses,
        st = r.status
    );
    s += &match &v.artifacts {
        StageArtifacts::None => "<p class=\"muted\">No output in this run.</p>".to_string(),
        StageArtifacts::Missing => problem(
            &r.id,
            "run.json says this stage has output, but its folder is missing (removed by `kiln gc`?) or leads outside the runs folder",
        ),
        StageArtifacts::Preprocess {
            profile,
            histograms,
        } => preprocess(profile, histograms),
        StageArtifacts::Train { history, sweep } => {
            let mut s = loaded("history.json", history, |h| train(&r.id, h));
            if let Some(sweep) = sweep {
                s += &loaded("sweep.json", sweep, |sw| {
                    let rows: Vec<Vec<String>> = sw
                        .trials
                        .iter()
                        .map(|t| {
                            vec![
                                t.trial.to_string(),
                                num(t.lr),
                                t.batch_size.to_string(),
                                format!("{:?}", t.hidden),
                                num(t.best_valid_metric),
                                t.best_epoch.to_string(),
                                if t.chosen {
                                    "✓".into()
                                } else {
                                    String::new()
                                },
                            ]
                        })
                        .collect();
                    format!(
                        "<h3>sweep</h3>{}",
                        table(
                            "sweep",
                            &[
                                "trial",
                                "lr",
                                "batch",
                                "hidden",
                                "best valid",
                                "best epoch",
                                "chosen"
                            ],
                            &rows
                        )
                    )
                });
            }
            s
        }
        StageArtifacts::Optimize {
            candidates,
            timings,
        } => loaded("candidates.json", candidates, |c| {
            optimize(c, timings.as_ref())
        }),
        StageArtifacts::Evaluate {
            metrics,
            details,
            importance,
            verdict,
            figures,
        } => {
            let mut s = loaded("metrics.json", metrics, metrics_table);
            s += &loaded("verdict.json", verdict, |v| {
                let rows: Vec<Vec<String>> = v
                    .gates
                    .iter()
                    .map(|g| {
                        vec![
                            esc(&g.variant),
                            esc(&g.metric),
                            esc(&g.condition),
                            num(g.value),
                            if g.passed {
                                "passed".into()
                            } else {
                                "<strong class=\"status-failed\">failed</strong>".into()
                            },
                        ]
                    })
                    .collect();
                format!(
                    "<h3>gates: {}</h3><p>{}</p>{}",
                    if v.blessed { "blessed" } else { "not blessed" },
                    esc(&v.reason),
                    table(
                        "gates",
                        &["variant", "metric", "condition", "value", "result"],
                        &rows
                    )
                )
            });
            s += &loaded("confusion.json", details, |d| {
                d.values().map(confusion).collect::<String>()
            });
            if let Some(imp) = importance {
                s += &loaded("importance.json", imp, |list| {
                    let top = list
                        .iter()
                        .map(|f| f.drop.abs())
                        .fold(0.0f64, f64::max)
                        .max(1e-12);
                    let rows: Vec<Vec<String>> = list
                        .iter()
                        .take(20)
                        .map(|f| {
                            vec![
                                esc(&f.feature),
                                num(f.drop),
                                format!(
                                    "<svg width=\"160\" height=\"10\"><rect width=\"{:.1}\" height=\"10\" fill=\"#7d93c2\"/></svg>",
                                    f.drop.max(0.0) / top * 160.0
                                ),
                            ]
                        })
                        .collect();
                    format!(
                        "<h3>permutation importance (top {} of {})</h3>{}",
                        rows.len(),
                        list.len(),
                        table("importance", &["feature", "metric drop", ""], &rows)
                    )
                });
            }
            if !figures.is_empty() {
                s += "<h3>figures</h3><div class=\"figures\">";
                for f in figures {
                    let _ = write!(
                        s,
                        "<a href=\"{src}\"><img src=\"{src}\" alt=\"{f}\" loading=\"lazy\"></a>",
                        src = esc(&format!(
                            "/runs/{}/{}/files/{}/{}",
                            url(&run.pipeline),
                            url(&run.id),
                            url(&r.id),
                            url(f)
                        )),
                        f = esc(f)
                    );
                }
                s += "</div>";
            }
            s
        }
        StageArtifacts::Deploy {
            parity,
            bundle,
            card,
            onnx,
        } => {
            let mut s = loaded("bundle.json", bundle, |b| {
                let rows: Vec<Vec<String>> = b
                    .models
                    .iter()
                    .map(|m| {
                        vec![
                            esc(&m.variant),
                            format!("<code>{}</code>", esc(&m.file)),
                            bytes(m.bytes),
                        ]
                    })
                    .collect();
                format!(
                    "<h3>bundle</h3><p>preprocessing in the graph: {}</p>{}",
                    if b.preprocessing_baked { "yes" } else { "no" },
                    table("bundle", &["variant", "file", "size"], &rows)
                )
            });
            s += &loaded("parity.json", parity, |p| {
                let rows: Vec<Vec<String>> = p
                    .variants
                    .iter()
                    .map(|(name, r)| {
                        vec![
                            esc(name),
                            r.n_rows.to_string(),
                            format!("{:.1e}", r.max_abs_logit),
                            format!("{:.1e}", r.max_abs_prob),
                            num(r.argmax_agreement),
                            format!("{:.1e}", r.tolerance),
                            if r.passed {
                                "passed".into()
                            } else {
                                "<strong class=\"status-failed\">failed</strong>".into()
                            },
                        ]
                    })
                    .collect();
                format!(
                    "<h3>parity: ONNX Runtime against kiln's forward pass</h3>{}",
                    table(
                        "parity",
                        &[
                            "variant",
                            "rows",
                            "max |Δ logit|",
                            "max |Δ prob|",
                            "argmax agreement",
                            "tolerance",
                            "result"
                        ],
                        &rows
                    )
                )
            });
            for (file, summary) in onnx {
                s += &loaded(file, summary, |o| {
                    let ops: Vec<String> = o
                        .ops
                        .iter()
                        .map(|(op, n)| format!("{} ×{n}", esc(op)))
                        .collect();
                    format!(
                        "<h3>ONNX graph: <code>{}</code></h3><ul class=\"onnx\"><li>size {} · opset {} · {} initializers</li><li>inputs: {}</li><li>outputs: {}</li><li>ops: {}</li></ul>",
                        esc(file),
                        bytes(o.bytes),
                        o.opset,
                        o.initializers,
                        esc(&o.inputs.join(", ")),
                        esc(&o.outputs.join(", ")),
                        ops.join(", ")
                    )
                });
            }
            if let Some(card) = card {
                s += &loaded("model_card.md", card, |c| {
                    format!(
                        "<h3>model card</h3><div class=\"card\">{}</div>",
                        markdown::to_html(c)
                    )
                });
            }
            s
        }
    };
    s += "</section>";
    s
}

/// `f(value)`, or the file's problem.
fn loaded<T>(file: &str, v: &Loaded<T>, f: impl FnOnce(&T) -> String) -> String {
    match v {
        Ok(v) => f(v),
        Err(e) => problem(file, e),
    }
}

/// `1.2 KiB`.
pub(crate) fn bytes(n: u64) -> String {
    let n = n as f64;
    if n < 1024.0 {
        format!("{n} B")
    } else if n < 1024.0 * 1024.0 {
        format!("{:.1} KiB", n / 1024.0)
    } else {
        format!("{:.1} MiB", n / 1024.0 / 1024.0)
    }
}

fn preprocess(
    profile: &Loaded<Profile>,
    histograms: &Loaded<(usize, BTreeMap<String, crate::read::Histogram>)>,
) -> String {
    loaded("profile.json", profile, |p| {
        let mut s = format!(
            "<h3>data profile</h3><p>rows: train {} · valid {} · test {} · {} features</p>",
            p.rows.train, p.rows.valid, p.rows.test, p.n_features
        );
        if !p.train_class_counts.is_empty() {
            let classes: Vec<String> = p
                .train_class_counts
                .iter()
                .map(|(c, n)| format!("{} {n}", esc(c)))
                .collect();
            let _ = write!(s, "<p>train classes: {}</p>", classes.join(" · "));
        }
        let hist = histograms.as_ref().ok();
        let rows: Vec<Vec<String>> = p
            .columns
            .iter()
            .take(MAX_COLUMNS)
            .map(|c| {
                vec![
                    esc(&c.name),
                    esc(&c.dtype),
                    format!("{} ({:.1} %)", c.missing, c.null_share * 100.0),
                    format!("{} … {}", num(c.min), num(c.max)),
                    num(c.mean),
                    format!(
                        "{}{}",
                        if c.distinct_estimated { "≈ " } else { "" },
                        c.distinct
                    ),
                    hist.and_then(|(_, h)| h.get(&c.name))
                        .map(histogram_svg)
                        .unwrap_or_default(),
                ]
            })
            .collect();
        let t = table(
            "profile",
            &[
                "column",
                "type",
                "missing",
                "range",
                "mean",
                "distinct",
                "histogram",
            ],
            &rows,
        );
        let open = if p.columns.len() <= OPEN_COLUMNS {
            " open"
        } else {
            ""
        };
        let _ = write!(
            s,
            "<details{open}><summary>{} columns: type, missing, range, histogram</summary>{t}</details>",
            p.columns.len()
        );
        if p.columns.len() > MAX_COLUMNS {
            let _ = write!(
                s,
                "<p class=\"muted\">First {MAX_COLUMNS} of {} columns.</p>",
                p.columns.len()
            );
        }
        match histograms {
            Ok((n, _)) => {
                let _ = write!(
                    s,
                    "<p class=\"muted\">Range and mean: the raw train split. Histograms: each feature as the model sees it (after the steps), over the first train shard ({n} rows).</p>"
                );
            }
            Err(e) => s += &problem("histograms", e),
        }
        s
    })
}

fn train(stage: &str, h: &History) -> String {
    let x: Vec<f64> = h.epochs.iter().map(|e| e.epoch as f64).collect();
    let line = |label: String, f: fn(&kiln_core::artifact::history::EpochRecord) -> f64| Series {
        label,
        values: h.epochs.iter().map(|e| Some(f(e))).collect(),
    };
    let best = Some(h.best_epoch as f64);
    let loss = Chart {
        title: "loss".into(),
        xlabel: "epoch".into(),
        x: x.clone(),
        series: vec![
            line("train loss".into(), |e| e.train_loss),
            line("valid loss".into(), |e| e.valid_loss),
        ],
        best,
    };
    let metric = Chart {
        title: h.metric.clone(),
        xlabel: "epoch".into(),
        x,
        series: vec![
            line(format!("train {}", h.metric), |e| e.train_metric),
            line(format!("valid {}", h.metric), |e| e.valid_metric),
        ],
        best,
    };
    let best_line = h.best().map_or(String::new(), |b| {
        format!(
            " — valid loss {}, valid {} {}",
            num(b.valid_loss),
            esc(&h.metric),
            num(b.valid_metric)
        )
    });
    format!(
        "<h3>training</h3><p>best epoch: <strong class=\"best-epoch\" id=\"best-epoch-{id}\">{}</strong> of {} run, kept by {}{}{}</p><div class=\"charts\">{}{}</div><p class=\"muted\">Drag across a chart to zoom, double-click to reset; the dashed green line marks the kept epoch.</p>",
        h.best_epoch,
        h.epochs.len(),
        esc(&h.kept_by.describe(&h.metric)),
        best_line,
        if h.stopped_early {
            " (stopped early)"
        } else {
            ""
        },
        chart(&format!("curves-{stage}-loss"), &loss),
        chart(&format!("curves-{stage}-metric"), &metric),
        id = esc(stage),
    )
}

fn optimize(c: &Candidates, timings: Option<&Loaded<Timings>>) -> String {
    let lat = |name: &str| {
        timings
            .and_then(|t| t.as_ref().ok())
            .and_then(|t| t.latency.iter().find(|l| l.name == name))
    };
    let rows: Vec<Vec<String>> = c
        .candidates
        .iter()
        .map(|k| {
            let l = lat(&k.name);
            vec![
                if k.chosen {
                    format!("<strong>{}</strong>", esc(&k.name))
                } else {
                    esc(&k.name)
                },
                k.params.to_string(),
                k.nonzeros.to_string(),
                bytes(k.onnx_bytes as u64),
                num(k.valid_accuracy),
                num(k.accuracy_drop),
                l.map_or(String::new(), |l| format!("{:.3} ms", l.batch1_ms)),
                l.map_or(String::new(), |l| format!("{:.2} ms", l.batch1024_ms)),
                if k.chosen {
                    "✓ chosen".into()
                } else {
                    String::new()
                },
                esc(&k.reason),
            ]
        })
        .collect();
    format!(
        "<h3>compression candidates</h3>{}",
        table(
            "candidates",
            &[
                "candidate",
                "params",
                "nonzeros",
                "ONNX size",
                "valid score",
                "drop",
                "latency (1 row)",
                "latency (1024 rows)",
                "",
                "why"
            ],
            &rows
        )
    )
}

/// Variants and baselines as rows, the metrics as columns.
pub(crate) fn metrics_table(m: &Metrics) -> String {
    let mut names: Vec<&str> = MAIN_METRICS
        .into_iter()
        .filter(|k| m.variants.values().any(|v| v.contains_key(*k)))
        .collect();
    for v in m.variants.values() {
        for k in v.keys() {
            if !names.contains(&k.as_str()) {
                names.push(k);
            }
        }
    }
    let mut head = vec!["variant"];
    head.extend(names.iter().copied());
    let row = |label: String, vals: &BTreeMap<String, f64>| {
        let mut r = vec![label];
        r.extend(
            names
                .iter()
                .map(|n| vals.get(*n).map(|v| num(*v)).unwrap_or_default()),
        );
        r
    };
    let rows: Vec<Vec<String>> = m
        .variants
        .iter()
        .map(|(k, v)| row(esc(k), v))
        .chain(m.baselines.iter().map(|(k, v)| {
            row(
                format!("{} <span class=\"muted\">(baseline)</span>", esc(k)),
                v,
            )
        }))
        .collect();
    format!("<h3>test metrics</h3>{}", table("metrics", &head, &rows))
}

/// A variant's confusion matrix (rows = truth) and per-class scores.
fn confusion(d: &VariantMetrics) -> String {
    if d.confusion.is_empty() {
        return String::new();
    }
    let labels: Vec<String> = (0..d.confusion.len())
        .map(|i| {
            d.per_class
                .get(i)
                .map_or_else(|| i.to_string(), |c| c.label.clone())
        })
        .collect();
    let mut s = format!(
        "<h3>confusion matrix: {} <span class=\"muted\">(rows = truth, columns = prediction; {})</span></h3><table class=\"cm\" id=\"cm-{}\"><thead><tr><th></th>",
        esc(&d.name),
        esc(&d.predictor),
        esc(&d.name)
    );
    for l in &labels {
        let _ = write!(s, "<th>{}</th>", esc(l));
    }
    s += "</tr></thead><tbody>";
    for (i, row) in d.confusion.iter().enumerate() {
        let _ = write!(s, "<tr><th>{}</th>", esc(&labels[i]));
        for (j, n) in row.iter().enumerate() {
            let _ = write!(
                s,
                "<td data-truth=\"{i}\" data-pred=\"{j}\"{}>{n}</td>",
                if i == j { " class=\"diag\"" } else { "" }
            );
        }
        s += "</tr>";
    }
    s += "</tbody></table>";
    let rows: Vec<Vec<String>> = d
        .per_class
        .iter()
        .map(|c| {
            vec![
                esc(&c.label),
                num(c.precision),
                num(c.recall),
                num(c.f1),
                c.support.to_string(),
            ]
        })
        .collect();
    s + &table(
        "per-class",
        &["class", "precision", "recall", "F1", "support"],
        &rows,
    )
}
