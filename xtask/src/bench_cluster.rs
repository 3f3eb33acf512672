//! `cargo xtask bench cluster`, the yardstick of the distributed issue: the same
//! preprocess stage (impute, standardize, one-hot; the seeded hash split on `id`) of a
//! generated table (20M rows unless `--rows`: an id, 4 numbers with empty cells, 2
//! categories, a 3-class label) on polars' streaming engine, on DataFusion in kiln's
//! process, and on a loopback Ballista cluster (`kiln-scheduler` and 1 or 2
//! `kiln-executor`s); then the batch scoring of the whole table by a model trained on
//! its first rows (`kiln predict`, locally and with `--engine`); wall time and peak
//! memory of every process. One 2-core machine shows what distribution costs, not a
//! speed-up.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::bench::{Figure, timed};
use crate::bench_prep::{TableShape, make_table, pipeline_head};
use crate::bench_serve::status_mib;
use crate::cmd::{Failure, Result};
use crate::paths;
use crate::setup;

const SHAPE: TableShape = TableShape {
    numeric: 4,
    high_card: 0,
    id: true,
};

/// The engines measured, as (label, the preprocess stage's extra lines, executors); the
/// first, local, one scores with plain `kiln predict`.
const ENGINES: [(&str, &str, usize); 4] = [
    (
        "local (polars streaming; kiln predict)",
        "load = \"stream\"",
        0,
    ),
    ("DataFusion in-process", "engine = \"datafusion\"", 0),
    ("Ballista, 1 executor", "engine = \"ballista\"", 1),
    ("Ballista, 2 executors", "engine = \"ballista\"", 2),
];

fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Failure::msg(format!("no free port: {e}")))
}

fn wait_for(port: u16) -> Result<()> {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if start.elapsed() > Duration::from_secs(60) {
            return Err(Failure::msg(format!(
                "nothing listens on port {port} after 60 s"
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// A loopback cluster: the scheduler, then the executors.
struct Cluster {
    procs: Vec<Child>,
    url: String,
}

impl Cluster {
    fn start(tools: &setup::Tools, dir: &Path, executors: usize) -> Result<Cluster> {
        let bin = paths::target_dir().join("release");
        let spawn = |c: &mut Command| {
            // the executors run models through ONNX Runtime: the library kiln uses
            tools
                .apply(c)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| Failure::msg(format!("{}: {e}", c.get_program().to_string_lossy())))
        };
        let sp = free_port()?;
        let mut procs = vec![spawn(
            Command::new(bin.join("kiln-scheduler")).args(["--bind", &format!("127.0.0.1:{sp}")]),
        )?];
        wait_for(sp)?;
        for i in 0..executors {
            let (p, g) = (free_port()?, free_port()?);
            let work = dir.join(format!("executor-{i}"));
            fs::create_dir_all(&work)
                .map_err(|e| Failure::msg(format!("{}: {e}", work.display())))?;
            procs.push(spawn(
                Command::new(bin.join("kiln-executor"))
                    .args(["--scheduler", &format!("127.0.0.1:{sp}")])
                    .args(["--port", &p.to_string(), "--grpc-port", &g.to_string()])
                    // the budget DataFusion has in kiln's process (memory_mb's default)
                    .args(["--memory-mb", "1024"])
                    .arg("--work-dir")
                    .arg(&work),
            )?);
            wait_for(g)?;
        }
        std::thread::sleep(Duration::from_secs(2));
        Ok(Cluster {
            procs,
            url: format!("df://127.0.0.1:{sp}"),
        })
    }

    /// Peak memory (MiB) of each process, scheduler first.
    fn peaks(&self) -> Vec<f64> {
        self.procs
            .iter()
            .map(|c| status_mib(c.id(), "VmHWM:"))
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.procs {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Rows of the table's head that the scored model is trained on.
const TRAIN_ROWS: usize = 200_000;

/// One engine's figures: wall time and the peak memory of kiln's process.
struct Measured {
    wall: Figure,
    rss: Figure,
}

/// The command one run measures, from (the engine's index in [`ENGINES`], a scratch
/// folder, the cluster's `df://` address).
type MakeCommand<'a> = dyn Fn(usize, &Path, Option<&str>) -> Result<Command> + 'a;

/// Per engine of [`ENGINES`], the wall time and peak memory of `command(engine, scratch,
/// cluster url)` run `pairs` times, each engine's beside the local engine's; then the
/// scheduler's and the largest executor's peak memory with 2 executors.
fn measure(
    tools: &setup::Tools,
    dir: &Path,
    what: &str,
    label: &str,
    pairs: usize,
    command: &MakeCommand,
) -> Result<Vec<Figure>> {
    let fig = |what: String, unit: &'static str| Figure {
        name: format!("{label}: {what}"),
        unit,
        higher_is_better: false,
        kiln: vec![],
        peer: vec![],
    };
    let mut per: Vec<Measured> = ENGINES
        .iter()
        .map(|(e, _, _)| Measured {
            wall: fig(format!("{what} wall time, {e}"), "s"),
            rss: fig(format!("{what} peak memory of kiln's process, {e}"), "MiB"),
        })
        .collect();
    let mut sched = fig(
        format!("{what} peak memory of the scheduler (2 executors)"),
        "MiB",
    );
    let mut exec = fig(
        format!("{what} peak memory of each executor (largest; 2 executors)"),
        "MiB",
    );
    for i in 0..pairs {
        for (k, (name, _, executors)) in ENGINES.iter().enumerate() {
            eprintln!("xtask: cluster {label}, {what} {}/{pairs}: {name}", i + 1);
            let scratch = crate::bench::tempdir_in(dir)?;
            let cluster = match executors {
                0 => None,
                n => Some(Cluster::start(tools, &scratch, *n)?),
            };
            let mut run = command(k, &scratch, cluster.as_ref().map(|c| c.url.as_str()))?;
            let (w, m) = timed(tools, &mut run)?;
            per[k].wall.kiln.push(w);
            per[k].rss.kiln.push(m);
            if let Some(c) = &cluster
                && *executors == 2
            {
                let peaks = c.peaks();
                sched.kiln.push(peaks[0]);
                exec.kiln
                    .push(peaks[1..].iter().copied().fold(0.0, f64::max));
            }
            drop(cluster);
            let _ = fs::remove_dir_all(&scratch);
        }
    }
    // each other engine against the local one
    let (local_wall, local_rss) = (per[0].wall.kiln.clone(), per[0].rss.kiln.clone());
    let mut figures = Vec::new();
    for (k, m) in per.into_iter().enumerate() {
        let Measured { mut wall, mut rss } = m;
        if k > 0 {
            wall.peer = local_wall.clone();
            rss.peer = local_rss.clone();
        }
        figures.extend([wall, rss]);
    }
    figures.extend([sched, exec]);
    Ok(figures)
}

fn write(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).map_err(|e| Failure::msg(format!("{}: {e}", path.display())))
}

/// The preprocess stage of the bench's pipelines over `csv`.
fn stage(name: &str, csv: &Path) -> String {
    pipeline_head(
        name,
        csv,
        r#"{ op = "one_hot", columns = ["cat_a", "cat_b"] },"#,
        r#"valid = 0.1, test = 0.1, row_id = "id""#,
    )
}

/// Trains and deploys a small model on the table's first [`TRAIN_ROWS`] rows (the same
/// columns, locally); its deploy folder.
fn deployed(tools: &setup::Tools, kiln: &Path, dir: &Path, rows: usize) -> Result<PathBuf> {
    let n = TRAIN_ROWS.min(rows);
    let head = dir.join(format!("head-{n}.csv"));
    make_table(&head, n, SHAPE)?;
    let pipe = dir.join("score-model.toml");
    let mut text = stage("cluster-score-model", &head);
    text.push_str(
        r#"
[stages.train]
uses = "train"
input = "data"
model = { hidden = [32] }
epochs = 2

[stages.ship]
uses = "deploy"
input = "train"
"#,
    );
    write(&pipe, &text)?;
    let runs = dir.join(format!("score-runs-{n}"));
    let mut run = Command::new(kiln);
    run.arg("run").arg(&pipe).arg("--runs-dir").arg(&runs);
    timed(tools, &mut run)?;
    Ok(runs.join("cluster-score-model/latest/ship"))
}

/// Wall time and peak memory of one preprocess, then one scoring of the whole table, on
/// each engine, `pairs` times.
pub(crate) fn bench_cluster(
    tools: &setup::Tools,
    rows: usize,
    pairs: usize,
) -> Result<Vec<Figure>> {
    let dir = paths::target_dir().join("bench/cluster");
    let kiln = paths::target_dir().join("release/kiln");
    let csv = dir.join(format!("table-{rows}.csv"));
    eprintln!("xtask: generating {} (once)", csv.display());
    make_table(&csv, rows, SHAPE)?;
    let label = if rows.is_multiple_of(1_000_000) {
        format!("{}M rows", rows / 1_000_000)
    } else {
        format!("{rows} rows")
    };
    let preprocess = |k: usize, scratch: &Path, url: Option<&str>| -> Result<Command> {
        let mut text = stage(&format!("cluster-{rows}"), &csv);
        text.push_str(ENGINES[k].1);
        text.push('\n');
        if let Some(url) = url {
            text.push_str(&format!("scheduler = \"{url}\"\n"));
        }
        let pipe = scratch.join("pipeline.toml");
        write(&pipe, &text)?;
        let mut run = Command::new(&kiln);
        run.arg("run")
            .arg(&pipe)
            .arg("--runs-dir")
            .arg(scratch.join("runs"));
        Ok(run)
    };
    let mut figures = measure(tools, &dir, "preprocess", &label, pairs, &preprocess)?;

    eprintln!("xtask: training the scored model on the table's first {TRAIN_ROWS} rows");
    let model = deployed(tools, &kiln, &dir, rows)?;
    let score = |k: usize, scratch: &Path, url: Option<&str>| -> Result<Command> {
        let mut run = Command::new(&kiln);
        run.arg("predict")
            .arg("--model")
            .arg(&model)
            .arg("--input")
            .arg(&csv)
            .arg("--output")
            .arg(scratch.join("predictions.parquet"));
        match k {
            0 => {}
            1 => {
                run.args(["--engine", "datafusion", "--row-id", "id"]);
            }
            _ => {
                run.args(["--engine", "ballista", "--row-id", "id", "--scheduler"])
                    .arg(url.unwrap_or_default());
            }
        }
        Ok(run)
    };
    figures.extend(measure(tools, &dir, "scoring", &label, pairs, &score)?);
    Ok(figures)
}
