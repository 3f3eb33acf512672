//! `cargo xtask bench serve`, reliability part: /healthz and one-row predict latency while
//! `kiln serve` is flooded (idle connections, slowloris heads, and clients posting large
//! bodies back to back), and the server's RSS sampled every second over a 60 s keep-alive
//! load. Loopback only; every loop is bounded in time.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::bench::Figure;
use crate::bench_serve::{load, percentile, rss_mib};

/// Rows in each large request of the flood (the digits row repeated).
pub(crate) const LARGE_ROWS: usize = 300_000;
/// Idle connections held open during the flood (reopened when the server cuts them).
const IDLE: usize = 200;
/// Slowloris connections during the flood: a header byte every second.
const SLOWLORIS: usize = 50;
/// Clients posting the large body back to back.
const HEAVY: usize = 2;

fn figure(name: String, unit: &'static str, kiln: f64) -> Figure {
    Figure {
        name,
        unit,
        higher_is_better: false,
        kiln: vec![kiln],
        peer: vec![],
    }
}

/// One request on a fresh connection (`Connection: close`): the latency in ms of a 200.
fn once(addr: &str, method: &str, path: &str, body: &[u8]) -> Option<f64> {
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    s.write_all(&req).ok()?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).ok()?;
    resp.starts_with(b"HTTP/1.1 200")
        .then(|| t.elapsed().as_secs_f64() * 1e3)
}

/// /healthz on a fresh connection every 100 ms until `until`: latencies (ms) and failures.
fn probe_healthz(addr: &str, until: Instant) -> (Vec<f64>, usize) {
    let (mut lat, mut failed) = (Vec::new(), 0);
    while Instant::now() < until {
        match once(addr, "GET", "/healthz", b"") {
            Some(ms) => lat.push(ms),
            None => failed += 1,
        }
        thread::sleep(Duration::from_millis(100));
    }
    lat.sort_by(f64::total_cmp);
    (lat, failed)
}

/// Keeps `n` connections open that never send a byte (reconnecting those the server
/// closed) until `stop`.
fn idle_flood(addr: &str, n: usize, stop: &AtomicBool) {
    let mut conns: Vec<Option<TcpStream>> = (0..n).map(|_| None).collect();
    while !stop.load(Ordering::Relaxed) {
        for c in conns.iter_mut() {
            let closed = match c {
                None => true,
                Some(s) => {
                    let mut b = [0u8; 16];
                    // non-blocking peek: 0 bytes (or an error) means the server closed it
                    let _ = s.set_nonblocking(true);
                    match s.peek(&mut b) {
                        Ok(n) => n == 0,
                        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                    }
                }
            };
            if closed {
                *c = TcpStream::connect(addr).ok();
            }
        }
        thread::sleep(Duration::from_millis(250));
    }
}

/// `n` slowloris clients: a request head that never ends, one byte a second (reconnecting
/// when cut) until `stop`.
fn slowloris(addr: &str, n: usize, stop: &AtomicBool) {
    let mut conns: Vec<Option<TcpStream>> = (0..n).map(|_| None).collect();
    while !stop.load(Ordering::Relaxed) {
        for c in conns.iter_mut() {
            let ok = match c {
                Some(s) => s.write_all(b"a").is_ok(),
                None => false,
            };
            if !ok {
                *c = TcpStream::connect(addr).ok().and_then(|mut s| {
                    s.write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: ").ok()?;
                    Some(s)
                });
            }
        }
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(1) && !stop.load(Ordering::Relaxed) {
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The flood: /healthz and one-row predict latency before and during it.
pub(crate) fn flood(addr: &str, row_body: &str, large_body: &str, secs: f64) -> Vec<Figure> {
    eprintln!("xtask: serve: /healthz alone for 3 s");
    let (calm, _) = probe_healthz(addr, Instant::now() + Duration::from_secs(3));
    eprintln!(
        "xtask: serve: flood for {secs} s: {IDLE} idle connections, {SLOWLORIS} slowloris, {HEAVY} clients posting {LARGE_ROWS} rows ({:.1} MB) back to back",
        large_body.len() as f64 / 1e6
    );
    let stop = AtomicBool::new(false);
    let heavy_done = AtomicUsize::new(0);
    let heavy_failed = AtomicUsize::new(0);
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let (probes, predict) = thread::scope(|s| {
        s.spawn(|| idle_flood(addr, IDLE, &stop));
        s.spawn(|| slowloris(addr, SLOWLORIS, &stop));
        for _ in 0..HEAVY {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    match once(addr, "POST", "/v1/predict", large_body.as_bytes()) {
                        Some(_) => heavy_done.fetch_add(1, Ordering::Relaxed),
                        None => heavy_failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            });
        }
        // let the flood build up before measuring
        thread::sleep(Duration::from_secs(2));
        let predict = s.spawn(|| load(addr, row_body, 1, secs - 2.0));
        let probes = probe_healthz(addr, until);
        let predict = predict.join().ok();
        stop.store(true, Ordering::Relaxed);
        (probes, predict)
    });
    let (lat, failed) = probes;
    let mut figures = vec![
        figure(
            "healthz latency p50, server idle".into(),
            "ms",
            percentile(&calm, 0.5),
        ),
        figure(
            "healthz latency p50 under the flood (fresh connection per probe, every 100 ms)".into(),
            "ms",
            percentile(&lat, 0.5),
        ),
        figure(
            "healthz latency p99 under the flood".into(),
            "ms",
            percentile(&lat, 0.99),
        ),
        figure(
            "healthz latency max under the flood".into(),
            "ms",
            lat.last().copied().unwrap_or(f64::NAN),
        ),
        figure(
            "healthz probes failed under the flood".into(),
            "count",
            failed as f64,
        ),
    ];
    if let Some(p) = predict {
        figures.push(figure(
            "1-row predict latency p50 under the flood (1 keep-alive client)".into(),
            "ms",
            percentile(&p.latencies, 0.5),
        ));
        figures.push(figure(
            "1-row predict latency p99 under the flood".into(),
            "ms",
            percentile(&p.latencies, 0.99),
        ));
    }
    figures.push(Figure {
        name: format!("{LARGE_ROWS}-row requests answered during the flood"),
        unit: "count",
        higher_is_better: true,
        kiln: vec![heavy_done.load(Ordering::Relaxed) as f64],
        peer: vec![],
    });
    figures
}

/// `clients` keep-alive clients posting one row for `secs` seconds, the server's RSS read
/// every second: at the start, the largest, at the end.
pub(crate) fn soak(addr: &str, pid: u32, row_body: &str, clients: usize, secs: u64) -> Vec<Figure> {
    eprintln!("xtask: serve: {clients} keep-alive clients for {secs} s, RSS every second");
    let start = rss_mib(pid);
    let done = AtomicBool::new(false);
    let (run, samples) = thread::scope(|s| {
        let run = s.spawn(|| {
            let r = load(addr, row_body, clients, secs as f64);
            done.store(true, Ordering::Relaxed);
            r
        });
        let mut samples = Vec::new();
        while !done.load(Ordering::Relaxed) {
            thread::sleep(Duration::from_secs(1));
            samples.push(rss_mib(pid));
        }
        (run.join().ok(), samples)
    });
    let end = rss_mib(pid);
    let max = samples.iter().copied().fold(start, f64::max);
    let mut figures = vec![
        figure(
            format!("RSS before the {secs} s keep-alive load"),
            "MiB",
            start,
        ),
        figure(
            format!("RSS max over the {secs} s load (sampled every second)"),
            "MiB",
            max,
        ),
        figure(format!("RSS after the {secs} s load"), "MiB", end),
    ];
    if let Some(r) = run {
        figures.push(Figure {
            name: format!("requests/s over the {secs} s load, {clients} clients"),
            unit: "req/s",
            higher_is_better: true,
            kiln: vec![r.latencies.len() as f64 / r.seconds],
            peer: vec![],
        });
        figures.push(figure(
            format!("errors over the {secs} s load"),
            "count",
            r.errors as f64,
        ));
    }
    figures
}
