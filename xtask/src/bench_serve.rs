//! `cargo xtask bench serve`: `kiln serve` under load (N keep-alive clients over raw HTTP,
//! std threads; req/s, p50 / p99 latency, errors, server RSS), its reliability figures
//! (bench_reliability.rs: latency under a flood, RSS over a 60 s soak) and `kiln predict`
//! against Python onnxruntime (bench/peers/predict_ort.py) on the same deployed digits
//! model and rows, at batch 1 and 1024.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::bench::{Figure, json_line, wall_time};
use crate::cmd::{self, Failure, Result};
use crate::paths;
use crate::setup;

/// Options of the serve bench.
pub(crate) struct ServeOptions {
    /// Seconds of measured load (after a 2 s warm-up).
    pub seconds: u64,
    /// Concurrent keep-alive clients.
    pub clients: usize,
    /// A B pairs of the predict comparison.
    pub pairs: usize,
    /// Seconds of the flood (reliability).
    pub flood_seconds: u64,
    /// Seconds of the keep-alive soak whose RSS is sampled (reliability).
    pub soak_seconds: u64,
}

/// `kiln serve --model ship --addr 127.0.0.1:0 EXTRA`, once it has printed its address.
fn start(
    kiln: &Path,
    ship: &Path,
    tools: &setup::Tools,
    extra: &[&str],
) -> Result<(Server, String)> {
    let mut serve = Command::new(kiln);
    serve
        .arg("serve")
        .arg("--model")
        .arg(ship)
        .args(["--addr", "127.0.0.1:0"])
        .args(extra);
    tools.apply(&mut serve);
    listening(serve)
}

/// Starts a kiln server command (`serve`, `ui`) given `--addr 127.0.0.1:0` and returns
/// it with the address its first stdout line announces.
pub(crate) fn listening(mut command: Command) -> Result<(Server, String)> {
    command.stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = command
        .spawn()
        .map_err(|e| cmd::spawn_error(&command, &e, "build kiln first"))?;
    let stdout = child.stdout.take();
    let server = Server(child);
    let mut first = String::new();
    if let Some(out) = stdout {
        let _ = BufReader::new(out).read_line(&mut first);
    }
    let addr = first
        .trim()
        .strip_prefix("listening on http://")
        .ok_or_else(|| {
            Failure::msg(format!(
                "`{}` did not start: {first:?}",
                cmd::describe(&command)
            ))
        })?
        .to_string();
    Ok((server, addr))
}

/// How many times the digits rows are repeated in the predict input (1,797 × 10 rows).
const REPEAT: usize = 10;

/// A running `kiln serve` or `kiln ui`, killed when dropped.
pub(crate) struct Server(pub(crate) Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Resident memory of a process in MiB, from `/proc/<pid>/status` (VmRSS).
pub(crate) fn rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmRSS:")
}

/// A memory line of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:` the peak) in MiB.
pub(crate) fn status_mib(pid: u32, key: &str) -> f64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// What one load phase measured.
pub(crate) struct Load {
    /// Latency of every successful request, in ms.
    pub(crate) latencies: Vec<f64>,
    pub(crate) errors: usize,
    pub(crate) seconds: f64,
}

/// One keep-alive connection's request / response, returning the status.
fn exchange(
    w: &mut TcpStream,
    r: &mut BufReader<TcpStream>,
    request: &[u8],
) -> std::io::Result<u16> {
    w.write_all(request)?;
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut length = None;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("connection closed in the headers"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse::<usize>().ok();
        }
    }
    let length = length.ok_or_else(|| std::io::Error::other("no content-length"))?;
    let mut body = vec![0; length];
    r.read_exact(&mut body)?;
    Ok(status)
}

/// `clients` threads, each on its own keep-alive connection, POST `body` until `secs` end.
pub(crate) fn load(addr: &str, body: &str, clients: usize, secs: f64) -> Load {
    let request = format!(
        "POST /v1/predict HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes();
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let results: Vec<(Vec<f64>, usize)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                let request = &request;
                s.spawn(move || {
                    let (mut lat, mut errors) = (Vec::new(), 0usize);
                    let mut conn: Option<(TcpStream, BufReader<TcpStream>)> = None;
                    while Instant::now() < deadline {
                        if conn.is_none() {
                            match TcpStream::connect(addr).and_then(|w| {
                                w.set_nodelay(true)?;
                                let r = BufReader::new(w.try_clone()?);
                                Ok((w, r))
                            }) {
                                Ok(c) => conn = Some(c),
                                Err(_) => {
                                    errors += 1;
                                    std::thread::sleep(Duration::from_millis(10));
                                    continue;
                                }
                            }
                        }
                        let Some((w, r)) = conn.as_mut() else {
                            continue;
                        };
                        let t = Instant::now();
                        match exchange(w, r, request) {
                            Ok(200) => lat.push(t.elapsed().as_secs_f64() * 1e3),
                            Ok(_) => errors += 1,
                            Err(_) => {
                                errors += 1;
                                conn = None;
                            }
                        }
                    }
                    (lat, errors)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let seconds = started.elapsed().as_secs_f64();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for (l, e) in results {
        latencies.extend(l);
        errors += e;
    }
    latencies.sort_by(f64::total_cmp);
    Load {
        latencies,
        errors,
        seconds,
    }
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn figure(name: String, unit: &'static str, higher_is_better: bool, kiln: f64) -> Figure {
    Figure {
        name,
        unit,
        higher_is_better,
        kiln: vec![kiln],
        peer: vec![],
    }
}

/// The python that runs the predict peer: the bench venv's when it has onnxruntime, else
/// the kiln venv's (which setup gives onnxruntime 1.31.1).
fn peer_python(venv: &Path, tools: &setup::Tools) -> Option<PathBuf> {
    let has_ort = |p: &Path| cmd::probe(Command::new(p).args(["-c", "import onnxruntime, numpy"]));
    let bench = venv.join("bin/python");
    if has_ort(&bench) {
        return Some(bench);
    }
    tools.python.clone().filter(|p| has_ort(p))
}

/// `cargo xtask bench serve`: the load and predict figures, and the reliability ones
/// (flood latency, RSS over the soak).
pub(crate) fn bench_serve(
    root: &Path,
    tools: &setup::Tools,
    venv: &Path,
    o: &ServeOptions,
) -> Result<(Vec<Figure>, Vec<Figure>)> {
    let kiln = paths::target_dir().join("release/kiln");
    let dir = paths::target_dir().join("bench/serve");
    fs::create_dir_all(&dir).map_err(|e| Failure::msg(format!("{}: {e}", dir.display())))?;
    // The deployed digits model (a stage-cache hit after the first bench).
    let runs = dir.join("runs");
    let mut deploy = Command::new(&kiln);
    deploy
        .arg("run")
        .arg(root.join("pipelines/digits-mlp.toml"))
        .arg("--runs-dir")
        .arg(&runs);
    tools.apply(&mut deploy);
    eprintln!("xtask: serve: deploying pipelines/digits-mlp.toml");
    cmd::run(
        &mut deploy,
        "build kiln first (cargo build --release -p kiln-cli)",
    )?;
    let ship = runs.join("digits-mlp/latest/ship");

    // One raw digits row as the request body.
    let csv = root.join("fixtures/digits.csv");
    let text = fs::read_to_string(&csv)
        .map_err(|e| Failure::msg(format!("{}: {e}; restore the fixture", csv.display())))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let label = header.iter().position(|c| *c == "label");
    let row: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split(',')
        .enumerate()
        .filter(|(i, _)| Some(*i) != label)
        .map(|(_, v)| v)
        .collect();
    let body = format!("{{\"instances\": [[{}]]}}", row.join(","));

    let (server, addr) = start(&kiln, &ship, tools, &[])?;
    let pid = server.0.id();
    let idle = rss_mib(pid);
    eprintln!(
        "xtask: serve: {} clients, 2 s warm-up, then {} s on {addr}",
        o.clients, o.seconds
    );
    let warm = load(&addr, &body, o.clients, 2.0);
    let rss_warm = rss_mib(pid);
    let run = load(&addr, &body, o.clients, o.seconds as f64);
    let rss_end = rss_mib(pid);
    drop(server);
    if run.latencies.is_empty() {
        return Err(Failure::msg(format!(
            "kiln serve answered no request ({} errors, {} in the warm-up); run it by hand to see why",
            run.errors, warm.errors
        )));
    }
    let c = o.clients;
    let mut figures = vec![
        figure(
            format!(
                "serve requests/s, {c} keep-alive clients, 1 row each, {} s",
                o.seconds
            ),
            "req/s",
            true,
            run.latencies.len() as f64 / run.seconds,
        ),
        figure(
            format!("serve latency p50, {c} clients"),
            "ms",
            false,
            percentile(&run.latencies, 0.5),
        ),
        figure(
            format!("serve latency p99, {c} clients"),
            "ms",
            false,
            percentile(&run.latencies, 0.99),
        ),
        figure(
            "serve errors (non-200 or broken connection)".into(),
            "count",
            false,
            run.errors as f64,
        ),
        figure("serve RSS idle".into(), "MiB", false, idle),
        figure(
            "serve RSS after the 2 s warm-up".into(),
            "MiB",
            false,
            rss_warm,
        ),
        figure("serve RSS after the run".into(), "MiB", false, rss_end),
    ];

    // Reliability: a fresh server for the flood (large bodies allowed), another for the
    // keep-alive soak, so that neither inherits the other's memory.
    let large = format!(
        "{{\"instances\": [{}]}}",
        vec![format!("[{}]", row.join(",")); crate::bench_reliability::LARGE_ROWS].join(",")
    );
    let (server, addr) = start(
        &kiln,
        &ship,
        tools,
        &["--max-batch", "400000", "--max-body", "67108864"],
    )?;
    let mut reliability =
        crate::bench_reliability::flood(&addr, &body, &large, o.flood_seconds as f64);
    drop(server);
    let (server, addr) = start(&kiln, &ship, tools, &[])?;
    // the same warm-up as above, then the soak
    load(&addr, &body, o.clients, 2.0);
    reliability.extend(crate::bench_reliability::soak(
        &addr,
        server.0.id(),
        &body,
        o.clients,
        o.soak_seconds,
    ));
    drop(server);

    // kiln predict vs Python onnxruntime on the same rows: the digits file repeated.
    let input = dir.join(format!("digits-x{REPEAT}.csv"));
    let mut big = String::from(text.lines().next().unwrap_or_default());
    big.push('\n');
    for _ in 0..REPEAT {
        for l in text.lines().skip(1).filter(|l| !l.trim().is_empty()) {
            big.push_str(l);
            big.push('\n');
        }
    }
    let rows = (text
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .count()
        * REPEAT) as f64;
    fs::write(&input, big).map_err(|e| Failure::msg(format!("{}: {e}", input.display())))?;
    let python = peer_python(venv, tools);
    if python.is_none() {
        eprintln!(
            "xtask: serve: no python with onnxruntime (bench venv or kiln venv); kiln predict runs alone"
        );
    }
    for batch in [1usize, 1024] {
        let timed = |c: &mut Command| -> Result<f64> { Ok(rows / wall_time(c)?) };
        let mut k = Command::new(&kiln);
        k.args(["predict", "--model"])
            .arg(&ship)
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(dir.join("kiln-preds.csv"))
            .args(["--batch", &batch.to_string()]);
        tools.apply(&mut k);
        let mut p = python.as_ref().map(|py| {
            let mut c = Command::new(py);
            c.arg(root.join("bench/peers/predict_ort.py"))
                .arg(&ship)
                .arg(&input)
                .arg(batch.to_string())
                .arg(dir.join("ort-preds.csv"));
            c
        });
        let mut f = figure(
            format!(
                "predict rows/s, batch {batch} ({} rows of CSV in, CSV out, process start included)",
                rows as usize
            ),
            "rows/s",
            true,
            f64::NAN,
        );
        f.kiln.clear();
        timed(&mut k)?;
        if let Some(p) = p.as_mut() {
            // a JSON line proves the script ran to the end
            json_line(p)?;
        }
        for i in 0..o.pairs {
            eprintln!("xtask: predict batch {batch}, pair {}/{}", i + 1, o.pairs);
            f.kiln.push(timed(&mut k)?);
            if let Some(p) = p.as_mut() {
                f.peer.push(timed(p)?);
            }
        }
        figures.push(f);
    }
    Ok((figures, reliability))
}
