//! A preprocess stage of a pipeline on DataFusion in this process and on a real local
//! Ballista cluster (a `kiln-scheduler` and two `kiln-executor` processes on loopback,
//! so every plan is serialized and sent) gives the local engine's dataset: the same
//! split membership, exact counts, profile means within 1e-9 relative, features within
//! 1e-6; a bad row is named by file and row as locally; a scheduler that is unreachable
//! or dies mid-run is a clear error that leaves no cache entry.

mod common;

use common::{Cluster, port, table};
use kiln_core::Dataset;
use kiln_core::artifact::profile::Profile;
use kiln_pipeline::{RunOptions, parse, run};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn pipeline(extra: &str, steps: &str) -> String {
    format!(
        r#"version = 1
name = "cluster"
seed = 7
[stages.data]
uses = "preprocess"
source = {{ format = "csv", path = "data-*.csv" }}
target = "label"
split = {{ valid = 0.15, test = 0.2, row_id = "id" }}
steps = {steps}
{extra}
"#
    )
}

const STEPS: &str = r#"[
  { op = "impute", strategy = "median", columns = ["a"] },
  { op = "clip", lower_quantile = 0.05, upper_quantile = 0.95, columns = ["d"] },
  { op = "log1p", columns = ["d"] },
  { op = "standardize", columns = ["a", "b"] },
  { op = "piecewise_linear", columns = ["e"], bins = 4 },
  { op = "impute", strategy = "most_frequent", columns = ["c"] },
  { op = "one_hot", columns = ["c"] },
  { op = "ordinal", columns = ["f"] },
]"#;

/// Runs the pipeline text in `dir`; the preprocess stage's cache entry, or the error.
fn run_in(dir: &Path, text: &str) -> Result<PathBuf, String> {
    kiln_cluster::install();
    let file = dir.join("pipeline.toml");
    std::fs::write(&file, text).unwrap();
    let p = parse(&file, text, &[]).map_err(|e| format!("{e:?}"))?;
    let runs = dir.join("runs");
    let report = run(&p, &RunOptions::new(&runs)).map_err(|e| e.to_string())?;
    if !report.ok {
        return Err(report.failure.map(|f| f.to_string()).unwrap_or_default());
    }
    Ok(runs.join(".cache").join(&report.stages[0].hash))
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + a.abs().max(b.abs()))
}

/// Every check of "the same dataset" between two artifacts.
fn assert_same(local: &Path, other: &Path) {
    let (ls, lsplits) = kiln_preprocess::read_artifact(local).unwrap();
    let (os, osplits) = kiln_preprocess::read_artifact(other).unwrap();
    assert_eq!(ls.feature_names, os.feature_names);
    assert_eq!(ls.class_labels, os.class_labels);
    assert_eq!(ls.input_columns, os.input_columns);
    assert_eq!(ls.transforms.len(), os.transforms.len());
    // the fitted parameters (f32) agree to the last bits
    let lj = serde_json::to_value(&ls.transforms).unwrap();
    let oj = serde_json::to_value(&os.transforms).unwrap();
    assert_json_close(&lj, &oj, 1e-6);
    for (s, (l, o)) in lsplits.iter().zip(&osplits).enumerate() {
        assert_eq!(l.n_rows(), o.n_rows(), "split {s}: rows");
        assert_eq!(l.labels, o.labels, "split {s}: labels");
        assert_rows_close(l, o, s);
    }
    let lp: Profile = kiln_core::artifact::load(local).unwrap();
    let op: Profile = kiln_core::artifact::load(other).unwrap();
    assert_eq!(lp.rows, op.rows);
    assert_eq!(lp.train_class_counts, op.train_class_counts);
    assert_eq!(lp.columns.len(), op.columns.len());
    for (a, b) in lp.columns.iter().zip(&op.columns) {
        assert_eq!(
            (&a.name, &a.dtype, a.missing, a.distinct),
            (&b.name, &b.dtype, b.missing, b.distinct)
        );
        for (x, y, what) in [
            (a.mean, b.mean, "mean"),
            (a.min, b.min, "min"),
            (a.max, b.max, "max"),
        ] {
            assert!(
                (x.is_nan() && y.is_nan()) || close(x, y, 1e-9),
                "{} {what}: {x} vs {y}",
                a.name
            );
        }
    }
}

fn assert_rows_close(l: &Dataset, o: &Dataset, s: usize) {
    for (i, (x, y)) in l.features.iter().zip(&o.features).enumerate() {
        assert!(
            close(f64::from(*x), f64::from(*y), 1e-6),
            "split {s} row {} feature {}: {x} vs {y}",
            i / l.n_features(),
            l.feature_names[i % l.n_features()]
        );
    }
}

fn assert_json_close(a: &serde_json::Value, b: &serde_json::Value, tol: f64) {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!(close(x, y, tol), "{x} vs {y}");
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len());
            for (x, y) in x.iter().zip(y) {
                assert_json_close(x, y, tol);
            }
        }
        (Value::Object(x), Value::Object(y)) => {
            assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>());
            for (k, v) in x {
                assert_json_close(v, &y[k], tol);
            }
        }
        _ => assert_eq!(a, b),
    }
}

#[test]
fn datafusion_and_a_ballista_cluster_give_the_local_dataset() {
    let dir = tempfile::tempdir().unwrap();
    table(dir.path(), 3000);
    let local = run_in(dir.path(), &pipeline("", STEPS)).unwrap();
    let streamed = run_in(dir.path(), &pipeline("load = \"stream\"", STEPS)).unwrap();
    // the local paths agree with each other byte for byte
    for f in ["manifest.json", "schema.json"] {
        assert_eq!(
            std::fs::read(local.join(f)).unwrap(),
            std::fs::read(streamed.join(f)).unwrap(),
            "{f}"
        );
    }
    let (_, splits) = kiln_preprocess::read_artifact(&local).unwrap();
    let rows: Vec<usize> = splits.iter().map(Dataset::n_rows).collect();
    assert_eq!(rows.iter().sum::<usize>(), 3000);
    // the seeded hash: about 65 / 15 / 20 %
    assert!(
        (1800..2100).contains(&rows[0]) && (350..550).contains(&rows[1]),
        "{rows:?}"
    );

    let datafusion = run_in(dir.path(), &pipeline("engine = \"datafusion\"", STEPS)).unwrap();
    assert_same(&local, &datafusion);

    let cluster = Cluster::start(dir.path(), 2);
    let text = pipeline(
        &format!("engine = \"ballista\"\nscheduler = \"{}\"", cluster.url),
        STEPS,
    );
    let ballista = run_in(dir.path(), &text).unwrap();
    assert_same(&local, &ballista);
    // the shards come in the row id's order: the same bytes on every run
    assert_eq!(
        std::fs::read(datafusion.join("manifest.json")).unwrap(),
        std::fs::read(ballista.join("manifest.json")).unwrap()
    );
}

#[test]
fn a_bad_row_is_named_by_file_and_row_as_locally() {
    let dir = tempfile::tempdir().unwrap();
    table(dir.path(), 400);
    let f = dir.path().join("data-1.csv");
    let text = std::fs::read_to_string(&f).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    // line 121 of data-1.csv is its row 120: a word where b holds numbers
    let mut cells: Vec<&str> = lines[120].split(',').collect();
    cells[2] = "oops";
    lines[120] = cells.join(",");
    std::fs::write(&f, lines.join("\n") + "\n").unwrap();
    let steps = r#"[{ op = "impute", strategy = "mean", columns = ["a"] }, { op = "one_hot", columns = ["c", "f"] }]"#;
    let typed = "column_types = { b = \"number\" }";
    let local = run_in(dir.path(), &pipeline(typed, steps)).unwrap_err();
    assert!(
        local.contains("data-1.csv: row 120 column `b` holds `oops`"),
        "{local}"
    );
    let df = run_in(
        dir.path(),
        &pipeline(&format!("{typed}\nengine = \"datafusion\""), steps),
    )
    .unwrap_err();
    assert!(
        df.contains("data-1.csv: row 120 column `b` holds `oops`"),
        "{df}"
    );
    // on a cluster too: the executors' parse error comes back through the scheduler
    let cluster = Cluster::start(dir.path(), 1);
    let ballista = run_in(
        dir.path(),
        &pipeline(
            &format!(
                "{typed}\nengine = \"ballista\"\nscheduler = \"{}\"",
                cluster.url
            ),
            steps,
        ),
    )
    .unwrap_err();
    assert!(
        ballista.contains("data-1.csv: row 120 column `b` holds `oops`"),
        "{ballista}"
    );
    assert_no_entry(dir.path());
}

/// No complete cache entry of a preprocess stage (a `.partial` folder may stay).
fn assert_no_entry(dir: &Path) {
    let cache = dir.join("runs/.cache");
    for e in std::fs::read_dir(&cache).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        assert!(
            name.ends_with(".partial")
                || name.starts_with('.')
                || !e.path().join("manifest.json").exists()
                || name.ends_with(".lock"),
            "a cache entry was kept: {name}"
        );
    }
}

#[test]
fn an_unreachable_or_dying_scheduler_is_a_clear_error_and_no_cache_entry() {
    let dir = tempfile::tempdir().unwrap();
    table(dir.path(), 200_000);
    let closed = port();
    let e = run_in(
        dir.path(),
        &pipeline(
            &format!("engine = \"ballista\"\nscheduler = \"df://127.0.0.1:{closed}\""),
            STEPS,
        ),
    )
    .unwrap_err();
    assert!(
        e.contains(&format!(
            "cannot reach the Ballista scheduler at df://127.0.0.1:{closed}"
        )),
        "{e}"
    );
    assert_no_entry(dir.path());

    let mut cluster = Cluster::start(dir.path(), 1);
    let text = pipeline(
        &format!("engine = \"ballista\"\nscheduler = \"{}\"", cluster.url),
        STEPS,
    );
    let e = mid_run(dir.path(), &text, || {
        cluster.scheduler.kill().unwrap();
        cluster.scheduler.wait().unwrap();
    });
    assert!(
        e.contains(&format!("the Ballista cluster at {} failed", cluster.url)),
        "{e}"
    );
    assert!(
        e.contains("check that the scheduler and its executors are running"),
        "{e}"
    );
    assert_no_entry(dir.path());
    drop(cluster);

    // an executor gone: the scheduler fails the job once no executor is left
    let mut cluster = Cluster::start_with(dir.path(), 1, 3);
    let text = pipeline(
        &format!("engine = \"ballista\"\nscheduler = \"{}\"", cluster.url),
        STEPS,
    );
    let e = mid_run(dir.path(), &text, || {
        cluster.executors[0].kill().unwrap();
        cluster.executors[0].wait().unwrap();
    });
    assert!(
        e.contains(&format!("the Ballista cluster at {} failed", cluster.url)),
        "{e}"
    );
    assert!(
        e.contains("check that the scheduler and its executors are running"),
        "{e}"
    );
    assert_no_entry(dir.path());
}

/// Runs `text` in `dir` and calls `kill` 1.5 s after its preprocess stage began (its
/// partial folder appeared; the fit alone runs dozens of queries); the run's error.
fn mid_run(dir: &Path, text: &str, kill: impl FnOnce()) -> String {
    let cache = dir.join("runs/.cache");
    let partials = || {
        std::fs::read_dir(&cache)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
                    .count()
            })
            .unwrap_or(0)
    };
    let before = partials();
    let (root, text) = (dir.to_path_buf(), text.to_string());
    let runner = std::thread::spawn(move || run_in(&root, &text));
    let start = Instant::now();
    while partials() == before {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the stage never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !runner.is_finished(),
        "the run ended before the kill; make the table larger"
    );
    kill();
    let e = runner.join().unwrap().unwrap_err();
    eprintln!("{e}");
    e
}
