//! Batch scoring (`kiln predict --engine …`) on DataFusion in this process and on a real
//! loopback Ballista cluster (a `kiln-scheduler`, two `kiln-executor`s that run the model
//! through ONNX Runtime in `kiln_predict`) gives the predictions the local reader and
//! ONNX Runtime give, row by row; a bad cell or an unimputed gap is named by file, row
//! and column as locally; a scheduler or executor killed mid-scoring is a clear error
//! and leaves no output.

mod common;

use common::{Cluster, table};
use kiln_cluster::score::{Request, Scored, score};
use kiln_core::{NoProgress, Rows};
use kiln_pipeline::{RunOptions, parse, run};
use kiln_preprocess::Engine;
use kiln_preprocess::stream::Scan;
use std::path::{Path, PathBuf};

/// Trains and deploys a small model on `dir`'s table; the deploy folder.
fn deploy(dir: &Path) -> PathBuf {
    let text = r#"version = 1
name = "score"
seed = 5
[stages.data]
uses = "preprocess"
source = { format = "csv", path = "data-*.csv" }
target = "label"
split = { valid = 0.15, test = 0.2, row_id = "id" }
steps = [
  { op = "impute", strategy = "median", columns = ["a"] },
  { op = "clip", lower_quantile = 0.05, upper_quantile = 0.95, columns = ["d"] },
  { op = "log1p", columns = ["d"] },
  { op = "standardize", columns = ["a", "b", "e"] },
  { op = "impute", strategy = "most_frequent", columns = ["c"] },
  { op = "one_hot", columns = ["c"] },
  { op = "ordinal", columns = ["f"] },
]
[stages.train]
uses = "train"
input = "data"
model = { hidden = [16] }
epochs = 4
batch_size = 64
[stages.ship]
uses = "deploy"
input = "train"
"#;
    let file = dir.join("pipeline.toml");
    std::fs::write(&file, text).unwrap();
    let p = parse(&file, text, &[]).unwrap();
    let runs = dir.join("runs");
    let report = run(&p, &RunOptions::new(&runs)).unwrap();
    assert!(report.ok, "{:?}", report.failure.map(|f| f.to_string()));
    let ship = report.stages.iter().find(|s| s.id == "ship").unwrap();
    runs.join(".cache").join(&ship.hash)
}

/// The local predictions of every row of `dir`'s table, by id: label and probabilities
/// (the files read as `kiln predict` reads them, ONNX Runtime in batches of 1024).
fn local(model: &Path, dir: &Path) -> Vec<(String, Vec<f32>)> {
    let mut bundle = kiln_deploy::Bundle::open(model).unwrap();
    let text = bundle.schema.text_columns();
    let mut out = Vec::new();
    for f in ["data-0.csv", "data-1.csv"] {
        let path = dir.join(f);
        let columns = bundle.schema.input_columns.clone();
        let mut chunks = Vec::new();
        Scan::open(&path, &columns, &text, None, 1 << 20)
            .unwrap()
            .for_each(|c| {
                chunks.push(c.rows);
                Ok(())
            })
            .unwrap();
        for c in chunks {
            let p = bundle.predict(&Rows::from(c)).unwrap();
            let labels = bundle.labels(&p);
            for (label, probs) in labels.into_iter().zip(p.probabilities.chunks(p.n_outputs)) {
                out.push((label, probs.to_vec()));
            }
        }
    }
    out
}

/// One row of an output: id, prediction, probabilities.
type OutRow = (String, String, Vec<f32>);

/// An output CSV's header and rows.
fn read_output(path: &Path) -> (Vec<String>, Vec<OutRow>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap().split(',').map(String::from).collect();
    let rows = lines
        .map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            let p = cells[2..].iter().map(|c| c.parse().unwrap()).collect();
            (cells[0].to_string(), cells[1].to_string(), p)
        })
        .collect();
    (header, rows)
}

fn request<'a>(model: &'a Path, input: &'a Path, output: &'a Path) -> Request<'a> {
    Request {
        model,
        input,
        output,
        engine: Engine::Datafusion,
        scheduler: None,
        row_id: "id",
    }
}

/// The output at `path` holds the local predictions of all 3000 rows, in id order.
fn assert_local(path: &Path, scored: &Scored, expected: &[(String, Vec<f32>)]) {
    assert_eq!(scored.rows, 3000);
    assert_eq!(scored.files, 2);
    let (header, rows) = read_output(path);
    assert_eq!(
        header,
        ["id", "prediction", "p_maybe", "p_no", "p_yes"],
        "the columns of kiln predict, after the id"
    );
    assert_eq!(rows.len(), expected.len());
    let mut differ = 0;
    for (i, ((id, label, p), (want_label, want_p))) in rows.iter().zip(expected).enumerate() {
        assert_eq!(id, &i.to_string(), "rows in id order");
        assert_eq!(p.len(), want_p.len());
        for (x, y) in p.iter().zip(want_p) {
            assert!((x - y).abs() <= 1e-5, "row {i}: p {p:?} vs {want_p:?}");
        }
        // a label may differ only where two classes tie to within the tolerance
        if label != want_label {
            let mut sorted = want_p.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            assert!(
                sorted[0] - sorted[1] < 1e-5,
                "row {i}: {label} vs {want_label}"
            );
            differ += 1;
        }
    }
    assert!(differ <= 1, "{differ} labels differ");
    // accuracy against the input's target, as kiln predict reports it
    let (name, accuracy) = scored.score.clone().unwrap();
    assert_eq!(name, "accuracy");
    let right = expected
        .iter()
        .enumerate()
        .filter(|(i, (l, _))| *l == ["yes", "no", "maybe"][(i * 13 + i / 7) % 3])
        .count();
    assert!(
        (accuracy - right as f64 / 3000.0).abs() <= 1.0 / 3000.0,
        "{accuracy}"
    );
}

#[test]
fn datafusion_and_a_ballista_cluster_score_as_kiln_predict_does() {
    let dir = tempfile::tempdir().unwrap();
    table(dir.path(), 3000);
    let model = deploy(dir.path());
    let expected = local(&model, dir.path());
    assert_eq!(expected.len(), 3000);
    let input = dir.path().join("data-*.csv");

    let df_out = dir.path().join("datafusion.csv");
    let scored = score(&request(&model, &input, &df_out), &NoProgress).unwrap();
    assert_local(&df_out, &scored, &expected);
    assert!(scored.extra.is_empty(), "{:?}", scored.extra);

    // the model file, not the folder, and a folder of files as the input
    let parts = dir.path().join("parts");
    std::fs::create_dir(&parts).unwrap();
    for f in ["data-0.csv", "data-1.csv"] {
        std::fs::copy(dir.path().join(f), parts.join(f)).unwrap();
    }
    let cluster = Cluster::start(dir.path(), 2);
    let ballista_out = dir.path().join("ballista.csv");
    let onnx = model.join("model.onnx");
    let mut req = request(&onnx, &parts, &ballista_out);
    req.engine = Engine::Ballista;
    req.scheduler = Some(&cluster.url);
    let scored = score(&req, &NoProgress).unwrap();
    assert_local(&ballista_out, &scored, &expected);
    // the executors ran the model, not kiln's process
    let sessions: usize = ["executor-0.log", "executor-1.log"]
        .iter()
        .map(|f| {
            std::fs::read_to_string(dir.path().join(f))
                .unwrap_or_default()
                .matches("kiln_predict: opened an ONNX Runtime session")
                .count()
        })
        .sum();
    assert!(sessions >= 1, "no executor opened the model");
    assert_eq!(
        std::fs::read(&df_out).unwrap(),
        std::fs::read(&ballista_out).unwrap(),
        "DataFusion and the cluster write the same bytes"
    );
}

#[test]
fn a_bad_cell_or_a_gap_is_named_by_file_row_and_column() {
    let dir = tempfile::tempdir().unwrap();
    table(dir.path(), 600);
    let model = deploy(dir.path());
    let f = dir.path().join("data-1.csv");
    let clean = std::fs::read_to_string(&f).unwrap();
    let edit = |column: usize, value: &str| {
        let mut lines: Vec<String> = clean.lines().map(String::from).collect();
        // line 121 of data-1.csv is its row 120
        let mut cells: Vec<&str> = lines[120].split(',').collect();
        cells[column] = value;
        lines[120] = cells.join(",");
        std::fs::write(&f, lines.join("\n") + "\n").unwrap();
    };
    let input = dir.path().join("data-*.csv");
    let out = dir.path().join("out.csv");

    // a word in a column of numbers
    edit(2, "oops");
    let e = score(&request(&model, &input, &out), &NoProgress).unwrap_err();
    assert!(
        e.contains("data-1.csv: row 120 column `b` holds `oops`"),
        "{e}"
    );
    let cluster = Cluster::start(dir.path(), 1);
    let mut req = request(&model, &input, &out);
    req.engine = Engine::Ballista;
    req.scheduler = Some(&cluster.url);
    let e = score(&req, &NoProgress).unwrap_err();
    assert!(
        e.contains("data-1.csv: row 120 column `b` holds `oops`"),
        "{e}"
    );

    // an empty cell the model's steps do not impute (b is only standardized)
    edit(2, "");
    let e = score(&request(&model, &input, &out), &NoProgress).unwrap_err();
    assert!(
        e.contains("data-1.csv: row 120 column `b` is not a finite number after preprocessing"),
        "{e}"
    );
    assert!(!out.exists(), "no partial output is left");

    // no such row id, and no scheduler
    let mut req = request(&model, &input, &out);
    req.row_id = "idx";
    let e = score(&req, &NoProgress).unwrap_err();
    assert!(
        e.contains("the --row-id column `idx` not found (did you mean `id`?)"),
        "{e}"
    );
    let mut req = request(&model, &input, &out);
    req.engine = Engine::Ballista;
    let e = score(&req, &NoProgress).unwrap_err();
    assert!(e.contains("--engine ballista needs --scheduler"), "{e}");
}

#[test]
fn a_scheduler_or_an_executor_gone_mid_scoring_is_a_clear_error_and_no_output() {
    let dir = tempfile::tempdir().unwrap();
    table(dir.path(), 3000);
    let model = deploy(dir.path());
    let big = dir.path().join("big");
    std::fs::create_dir(&big).unwrap();
    table(&big, 500_000);
    let input = big.join("data-*.csv");
    let out = dir.path().join("out.csv");
    let partial = dir.path().join("out.csv.partial");
    for gone in ["scheduler", "executor"] {
        let mut cluster = Cluster::start_with(dir.path(), 1, 3);
        let (m, i, o, url) = (
            model.clone(),
            input.clone(),
            out.clone(),
            cluster.url.clone(),
        );
        let runner = std::thread::spawn(move || {
            let mut req = request(&m, &i, &o);
            req.engine = Engine::Ballista;
            req.scheduler = Some(&url);
            score(&req, &NoProgress)
        });
        // the output's temporary file is created just before the query is sent
        let start = std::time::Instant::now();
        while !partial.exists() {
            assert!(
                start.elapsed().as_secs() < 60,
                "scoring never started: {:?}",
                runner.is_finished()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(
            !runner.is_finished(),
            "scoring ended before the kill; make the table larger"
        );
        let child = match gone {
            "scheduler" => &mut cluster.scheduler,
            _ => &mut cluster.executors[0],
        };
        child.kill().unwrap();
        child.wait().unwrap();
        let e = runner.join().unwrap().unwrap_err();
        assert!(
            e.contains(&format!("the Ballista cluster at {} failed", cluster.url)),
            "{gone}: {e}"
        );
        assert!(
            e.contains("check that the scheduler and its executors are running"),
            "{gone}: {e}"
        );
        assert!(
            !out.exists() && !partial.exists(),
            "{gone}: an output was left"
        );
    }
}
