//! `cargo xtask bench cluster`, the yardstick of the distributed issue: the same
//! preprocess stage (impute, standardize, one-hot; the seeded hash split on `id`) of a
//! generated table (20M rows unless `--rows`: an id, 4 numbers with empty cells, 2
//! categories, a 3-class label) on polars' streaming engine, on DataFusion in kiln's
//! process, and on a loopback Ballista cluster (`kiln-scheduler` and 1 or 2
//! `kiln-executor`s); wall time of the stage and peak memory of every process. One
//! 2-core machine shows what distribution costs, not a speed-up.

use std::fs;
use std::path::Path;
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

/// The engines measured, as (label, the stage's extra lines, executors).
const ENGINES: [(&str, &str, usize); 4] = [
    ("polars streaming (local)", "load = \"stream\"", 0),
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
    fn start(dir: &Path, executors: usize) -> Result<Cluster> {
        let bin = paths::target_dir().join("release");
        let spawn = |c: &mut Command| {
            c.stdout(Stdio::null())
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

/// Wall time and peak memory of one preprocess on each engine, `pairs` times.
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
    let fig = |what: String, unit: &'static str| Figure {
        name: format!("{label}: {what}"),
        unit,
        higher_is_better: false,
        kiln: vec![],
        peer: vec![],
    };
    let mut figures = Vec::new();
    let mut wall: Vec<Figure> = ENGINES
        .iter()
        .map(|(e, _, _)| fig(format!("preprocess wall time, {e}"), "s"))
        .collect();
    let mut rss: Vec<Figure> = ENGINES
        .iter()
        .map(|(e, _, _)| fig(format!("peak memory of kiln's process, {e}"), "MiB"))
        .collect();
    let mut sched = fig("peak memory of the scheduler".into(), "MiB");
    let mut exec = fig("peak memory of each executor (largest)".into(), "MiB");
    for i in 0..pairs {
        for (k, (name, extra, executors)) in ENGINES.iter().enumerate() {
            eprintln!("xtask: cluster {label}, run {}/{pairs}: {name}", i + 1);
            let scratch = crate::bench::tempdir_in(&dir)?;
            let cluster = match executors {
                0 => None,
                n => Some(Cluster::start(&scratch, *n)?),
            };
            let mut stage = pipeline_head(
                &format!("cluster-{rows}"),
                &csv,
                r#"{ op = "one_hot", columns = ["cat_a", "cat_b"] },"#,
                r#"valid = 0.1, test = 0.1, row_id = "id""#,
            );
            stage.push_str(extra);
            stage.push('\n');
            if let Some(c) = &cluster {
                stage.push_str(&format!("scheduler = \"{}\"\n", c.url));
            }
            let pipe = scratch.join("pipeline.toml");
            fs::write(&pipe, stage)
                .map_err(|e| Failure::msg(format!("{}: {e}", pipe.display())))?;
            let mut run = Command::new(&kiln);
            run.arg("run")
                .arg(&pipe)
                .arg("--runs-dir")
                .arg(scratch.join("runs"));
            let (w, m) = timed(tools, &mut run)?;
            wall[k].kiln.push(w);
            rss[k].kiln.push(m);
            if let Some(c) = &cluster {
                let peaks = c.peaks();
                if *executors == 2 {
                    sched.kiln.push(peaks[0]);
                    exec.kiln
                        .push(peaks[1..].iter().copied().fold(0.0, f64::max));
                }
            }
            drop(cluster);
            let _ = fs::remove_dir_all(&scratch);
        }
    }
    // each other engine against polars streaming, kiln's local engine at this size
    let local_wall = wall[0].kiln.clone();
    let local_rss = rss[0].kiln.clone();
    for (k, (w, m)) in wall.into_iter().zip(rss).enumerate() {
        let (mut w, mut m) = (w, m);
        if k > 0 {
            w.peer = local_wall.clone();
            m.peer = local_rss.clone();
        }
        figures.push(w);
        figures.push(m);
    }
    sched.name.push_str(" (2 executors)");
    exec.name.push_str(" (2 executors)");
    figures.extend([sched, exec]);
    Ok(figures)
}
