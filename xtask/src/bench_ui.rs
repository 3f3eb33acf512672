//! `cargo xtask bench ui`: `kiln ui` over a runs folder of 200 runs (one real digits-mlp
//! run, its folder repeated with other ids and start times, its stages linked to the same
//! cache entries as repeated runs are): the server's answer time for the runs list, a run
//! page and a comparison (raw HTTP), the page load in headless Chromium (the
//! `bench_ui_browser` example: HTML, assets, script and charts), and the server's RSS.
//! There is no peer: the goals are the (load under 1 s, RSS under 100 MiB).

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::bench::{Figure, json_line};
use crate::bench_serve::{Server, listening, rss_mib, status_mib};
use crate::cmd::{self, Failure, Result};
use crate::paths;
use crate::setup;

/// Runs in the folder.
const RUNS: usize = 200;
/// Server answers timed per page.
const REQUESTS: usize = 20;
/// Browser loads per page.
const LOADS: usize = 10;

fn io(p: &Path) -> impl Fn(std::io::Error) -> Failure + '_ {
    move |e| Failure::msg(format!("{}: {e}", p.display()))
}

/// The runs folder: one real run of digits-mlp, then copies of it up to `RUNS` runs.
fn make_runs(root: &Path, tools: &setup::Tools, kiln: &Path, dir: &Path) -> Result<Vec<String>> {
    let _ = fs::remove_dir_all(dir);
    let mut run = Command::new(kiln);
    run.arg("run")
        .arg(root.join("pipelines/digits-mlp.toml"))
        .arg("--runs-dir")
        .arg(dir)
        .stdout(Stdio::null());
    tools.apply(&mut run);
    eprintln!("xtask: ui: one real run of pipelines/digits-mlp.toml");
    cmd::run(
        &mut run,
        "build kiln first (cargo build --release -p kiln-cli)",
    )?;
    let pipeline = dir.join("digits-mlp");
    let latest = fs::read_link(pipeline.join("latest")).map_err(io(&pipeline))?;
    let real_id = latest.to_string_lossy().into_owned();
    let real = pipeline.join(&real_id);
    let manifest = fs::read_to_string(real.join("run.json")).map_err(io(&real))?;
    let started = crate::bench::field(&manifest, "started")? as u64;
    let mut ids = vec![real_id.clone()];
    for i in 1..RUNS {
        let id = format!("20200101-{:06}", i);
        let copy = pipeline.join(&id);
        fs::create_dir_all(&copy).map_err(io(&copy))?;
        let (old_id, old_start) = (
            format!("\"run_id\": \"{real_id}\""),
            format!("\"started\": {started}"),
        );
        if !manifest.contains(&old_id) || !manifest.contains(&old_start) {
            return Err(Failure::msg(format!(
                "{}: no `{old_id}` or `{old_start}` to rewrite in the copies",
                real.join("run.json").display()
            )));
        }
        let text = manifest
            .replace(&old_id, &format!("\"run_id\": \"{id}\""))
            .replace(
                &old_start,
                &format!("\"started\": {}", started - (RUNS - i) as u64 * 60),
            );
        fs::write(copy.join("run.json"), text).map_err(io(&copy))?;
        for e in fs::read_dir(&real).map_err(io(&real))?.flatten() {
            if let Ok(target) = fs::read_link(e.path()) {
                std::os::unix::fs::symlink(target, copy.join(e.file_name())).map_err(io(&copy))?;
            }
        }
        ids.push(id);
    }
    Ok(ids)
}

/// `kiln ui --runs-dir DIR --addr 127.0.0.1:0` and its address.
fn start(kiln: &Path, dir: &Path) -> Result<(Server, String)> {
    let mut ui = Command::new(kiln);
    ui.arg("ui")
        .arg("--runs-dir")
        .arg(dir)
        .args(["--addr", "127.0.0.1:0"]);
    listening(ui)
}

/// Milliseconds of one GET of `path` on a new connection, to the last byte; fails unless
/// the status is 200.
fn get_ms(addr: &str, path: &str) -> Result<f64> {
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).map_err(|e| Failure::msg(format!("{addr}: {e}")))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| Failure::msg(format!("{addr}: {e}")))?;
    let mut body = Vec::new();
    s.read_to_end(&mut body)
        .map_err(|e| Failure::msg(format!("{addr}: {e}")))?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    let head = String::from_utf8_lossy(&body[..body.len().min(20)]).into_owned();
    if !head.starts_with("HTTP/1.1 200") {
        return Err(Failure::msg(format!("GET {path}: {head}")));
    }
    Ok(ms)
}

/// The page loads of `url` in headless Chromium, in ms.
fn browser_ms(tools: &setup::Tools, url: &str) -> Result<Vec<f64>> {
    let example = paths::target_dir().join("release/examples/bench_ui_browser");
    let mut c = Command::new(example);
    c.arg(url).arg(LOADS.to_string());
    tools.apply(&mut c);
    let line = json_line(&mut c)?;
    let inner = line
        .split_once('[')
        .and_then(|(_, r)| r.split_once(']'))
        .map(|(l, _)| l)
        .ok_or_else(|| Failure::msg(format!("bench_ui_browser printed {line}")))?;
    let ms = inner
        .split(',')
        .map(|v| {
            v.trim()
                .parse()
                .map_err(|_| Failure::msg(format!("bench_ui_browser printed {line}")))
        })
        .collect::<Result<Vec<f64>>>()?;
    if ms.len() != LOADS {
        return Err(Failure::msg(format!(
            "bench_ui_browser printed {} loads, not {LOADS}: {line}",
            ms.len()
        )));
    }
    Ok(ms)
}

fn figure(name: String, unit: &'static str, kiln: Vec<f64>) -> Figure {
    Figure {
        name,
        unit,
        higher_is_better: false,
        kiln,
        peer: Vec::new(),
    }
}

/// The figures of `bench ui`.
pub(crate) fn bench_ui(root: &Path, tools: &setup::Tools) -> Result<Vec<Figure>> {
    let kiln = paths::target_dir().join("release/kiln");
    let dir: PathBuf = paths::target_dir().join("bench/ui/runs");
    let ids = make_runs(root, tools, &kiln, &dir)?;
    let (server, addr) = start(&kiln, &dir)?;
    let run_page = format!("/runs/digits-mlp/{}", ids[0]);
    let compare = format!(
        "/compare?run=digits-mlp/{}&run=digits-mlp/{}",
        ids[0], ids[1]
    );
    let mut figures = Vec::new();
    for (label, path) in [
        (format!("runs list ({RUNS} runs)"), "/".to_string()),
        (
            "run page (digits-mlp, 5 stages)".to_string(),
            run_page.clone(),
        ),
        ("compare (2 runs)".to_string(), compare),
    ] {
        get_ms(&addr, &path)?;
        let ms = (0..REQUESTS)
            .map(|_| get_ms(&addr, &path))
            .collect::<Result<Vec<f64>>>()?;
        figures.push(figure(format!("{label}: server answer"), "ms", ms));
    }
    for (label, path) in [
        (format!("runs list ({RUNS} runs)"), "/".to_string()),
        ("run page (digits-mlp)".to_string(), run_page),
    ] {
        let ms = browser_ms(tools, &format!("http://{addr}{path}"))?;
        figures.push(figure(
            format!("{label}: page load in Chromium (goal < 1000 ms)"),
            "ms",
            ms,
        ));
    }
    let pid = server.0.id();
    figures.push(figure(
        "kiln ui RSS after the loads (goal < 100 MiB)".into(),
        "MiB",
        vec![rss_mib(pid)],
    ));
    figures.push(figure(
        "kiln ui peak RSS (VmHWM)".into(),
        "MiB",
        vec![status_mib(pid, "VmHWM:")],
    ));
    drop(server);
    Ok(figures)
}
