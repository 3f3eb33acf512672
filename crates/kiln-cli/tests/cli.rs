//! Tests of the `kiln` binary as a user meets it: exit codes and messages for bad input.

mod common;

use common::{kiln, ok, root};
use std::path::Path;

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

const PIPE: &str = r#"version = 1
name = "cli"
[stages.data]
uses = "preprocess"
source = { format = "idx", train = "mnist/train", test = "mnist/t10k" }
steps = [{ op = "scale", by = 255.0 }]
[stages.train]
uses = "train"
input = "data"
model = { hidden = [8] }
epochs = 1
"#;

#[test]
fn unknown_key_exits_2_with_a_located_message_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "p.toml",
        &PIPE.replace("epochs = 1", "epohcs = 1"),
    );
    for args in [vec!["validate"], vec!["run"]] {
        let out = kiln()
            .args(&args)
            .arg(&f)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("p.toml:11:1: unknown key `epohcs`; did you mean `epochs`?"),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(
        !dir.path().join("runs").exists(),
        "an invalid file must not create runs/"
    );
}

#[test]
fn missing_and_corrupt_mnist_files_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "p.toml", PIPE);
    let out = kiln()
        .arg("run")
        .arg(&f)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mnist/train-images-idx3-ubyte.gz") && err.contains("not found"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    // A corrupt (truncated) image file.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/mnist");
    std::fs::create_dir_all(dir.path().join("mnist")).unwrap();
    for n in [
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ] {
        std::fs::copy(src.join(n), dir.path().join("mnist").join(n)).unwrap();
    }
    let img = std::fs::read(src.join("train-images-idx3-ubyte.gz")).unwrap();
    std::fs::write(
        dir.path().join("mnist/train-images-idx3-ubyte.gz"),
        &img[..img.len() / 3],
    )
    .unwrap();
    let out = kiln()
        .arg("run")
        .arg(&f)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("train-images-idx3-ubyte.gz") && err.contains("corrupt"),
        "{err}"
    );
    // No stage output in the cache (only the entry's lock file stays)
    let cache: Vec<_> = std::fs::read_dir(dir.path().join("runs/.cache"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_none_or(|x| x != "lock"))
        .collect();
    assert!(cache.is_empty(), "{cache:?}");
}

/// Kill `kiln run` during training after a checkpoint, run it again: it resumes, run.json
/// says from which epoch, and the weights equal an uninterrupted run's, bit for bit.
#[test]
fn a_killed_run_resumes_from_its_checkpoint_with_identical_weights() {
    killed_run_resumes("", "");
}

/// The same with the splits streamed from shards of 100 rows (11 train shards, 3 read
/// together): a kill during a streaming epoch leaves no cache entry, and the rerun
/// resumes to the uninterrupted run's bytes.
#[test]
fn a_killed_streaming_run_resumes_with_identical_weights() {
    killed_run_resumes(
        "shard_rows = 100\nload = \"stream\"\n",
        "data = { load = \"stream\", window = 3 }\n",
    );
}

/// Trains digits twice (once killed after a checkpoint and rerun); `data` and `train`
/// are added to the preprocess and train stages.
fn killed_run_resumes(data: &str, train: &str) {
    let dir = tempfile::tempdir().unwrap();
    let digits = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/digits.csv");
    let text = format!(
        r#"version = 1
name = "resume"
seed = 5
[stages.data]
uses = "preprocess"
source = {{ format = "csv", path = "{}" }}
steps = [{{ op = "scale", by = 16.0 }}]
split = {{ valid = 0.2, test = 0.2 }}
{data}[stages.train]
uses = "train"
input = "data"
model = {{ hidden = [32], dropout = 0.1 }}
epochs = 300
batch_size = 64
{train}"#,
        digits.display()
    );
    let f = write(dir.path(), "p.toml", &text);
    let weights = |runs: &str| {
        std::fs::read(
            dir.path()
                .join(runs)
                .join("resume/latest/train/weights.safetensors"),
        )
        .unwrap()
    };

    let first = ok(kiln()
        .args(["run", "--runs-dir", "a"])
        .arg(&f)
        .env("RUST_LOG", "kiln_pipeline=info")
        .current_dir(dir.path()));
    // the train stage says which way it read the splits
    assert_eq!(
        String::from_utf8_lossy(&first.stderr).contains("streaming the splits from their shards"),
        train.contains("stream"),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );

    let mut child = kiln()
        .args(["run", "--runs-dir", "b"])
        .arg(&f)
        .current_dir(dir.path())
        .spawn()
        .unwrap();
    let cache = dir.path().join("b/.cache");
    let started = std::time::Instant::now();
    let checkpoint_epoch = loop {
        let state = std::fs::read_dir(&cache)
            .ok()
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .find_map(|e| {
                let p = e.path().join("checkpoint/state.json");
                let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).ok()?).ok()?;
                v["epoch"].as_u64()
            });
        if let Some(e) = state.filter(|&e| e >= 2) {
            child.kill().unwrap();
            child.wait().unwrap();
            break e;
        }
        assert!(started.elapsed().as_secs() < 120, "no checkpoint appeared");
        assert!(
            child.try_wait().unwrap().is_none(),
            "training finished before it could be interrupted"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    };
    assert!(
        !dir.path().join("b/resume/latest").exists()
            || !dir.path().join("b/resume/latest/train").exists()
    );

    ok(kiln()
        .args(["run", "--runs-dir", "b"])
        .arg(&f)
        .current_dir(dir.path()));
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("b/resume/latest/run.json")).unwrap(),
    )
    .unwrap();
    let train = &manifest["stages"][1];
    assert_eq!(train["status"], "executed");
    let resumed = train["resumed_from_epoch"].as_u64().unwrap();
    assert!(
        resumed >= checkpoint_epoch,
        "resumed from {resumed}, checkpoint was at {checkpoint_epoch}"
    );
    assert_eq!(
        weights("a"),
        weights("b"),
        "resumed weights must equal the uninterrupted run's"
    );
}

/// Trains and deploys the iris pipeline into `runs`, returning the deploy folder.
fn deployed_iris(runs: &Path) -> std::path::PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    ok(kiln()
        .arg("run")
        .arg(root.join("pipelines/iris.toml"))
        .arg("--runs-dir")
        .arg(runs));
    runs.join("iris/latest/ship")
}

#[test]
fn predict_applies_the_fitted_preprocessing_and_reports_bad_rows() {
    let dir = tempfile::tempdir().unwrap();
    let ship = deployed_iris(&dir.path().join("runs"));
    assert!(
        ship.join("profile.json").is_file(),
        "the bundle carries profile.json"
    );
    let iris = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/iris.csv");

    // Raw rows in (the model standardizes them itself), labels and probabilities out; the
    // input's target column is used to score, not as a feature.
    let preds = dir.path().join("preds.csv");
    let out = kiln()
        .args(["predict", "--model"])
        .arg(&ship)
        .arg("--input")
        .arg(&iris)
        .arg("--output")
        .arg(&preds)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("150 rows predicted"), "{stdout}");
    let acc: f64 = stdout
        .split("accuracy against the input's target ")
        .nth(1)
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    let text = std::fs::read_to_string(&preds).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("prediction,p_setosa,p_versicolor,p_virginica")
    );
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 150);
    // Every row against kiln's reference forward pass of the trained model on the
    // features schema.json makes of the raw row: the same label, probabilities within
    // the parity tolerance.
    let schema: kiln_core::Schema = kiln_core::read_json(&ship.join("schema.json")).unwrap();
    let mut model =
        kiln_core::NativeModel::load(&dir.path().join("runs/iris/latest/train")).unwrap();
    let source = std::fs::read_to_string(&iris).unwrap();
    let mut raw = Vec::new();
    let mut truth = Vec::new();
    for line in source.lines().skip(1) {
        let cells: Vec<&str> = line.split(',').collect();
        raw.extend(cells[..4].iter().map(|c| c.parse::<f32>().unwrap()));
        truth.push(cells[4].to_string());
    }
    assert_eq!(
        schema.input_columns[..],
        ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    );
    let want =
        kiln_core::Predictor::predict(&mut model, &schema.apply(&raw).unwrap(), 150).unwrap();
    let mut right = 0;
    for (i, r) in rows.iter().enumerate() {
        let cells: Vec<&str> = r.split(',').collect();
        let p: Vec<f32> = cells[1..].iter().map(|c| c.parse().unwrap()).collect();
        for (a, b) in p.iter().zip(&want.probabilities[i * 3..i * 3 + 3]) {
            assert!(
                (a - b).abs() <= 1e-5,
                "row {i}: {r} vs {:?}",
                &want.probabilities[i * 3..]
            );
        }
        assert_eq!(
            cells[0],
            schema.class_labels[want.argmax()[i] as usize],
            "{r}"
        );
        right += usize::from(cells[0] == truth[i]);
    }
    // the printed accuracy is the labels' own (4 decimals), and the model is a good one
    // (scikit-learn's MLP: 0.97 on the whole file; docs/benchmarks.md)
    assert!(
        (acc - right as f64 / 150.0).abs() < 5e-5,
        "{acc} vs {right}/150"
    );
    assert!(right >= 140, "{right}/150");
    // the first iris row is a setosa
    assert!(rows[0].starts_with("setosa,"));

    // Parquet out works too, written whole or not at all.
    let pq = dir.path().join("preds.parquet");
    ok(kiln()
        .args(["predict", "--model"])
        .arg(ship.join("model.onnx"))
        .arg("--input")
        .arg(&iris)
        .arg("--output")
        .arg(&pq));
    assert!(std::fs::read(&pq).unwrap().starts_with(b"PAR1"));
    // read back: the same columns, in the same order, with the same values as preds.csv
    let names = ["prediction", "p_setosa", "p_versicolor", "p_virginica"].map(String::from);
    let back = kiln_preprocess::table::read_rows_with_text(&pq, &names, &names[..1]).unwrap();
    assert_eq!(back.columns, names);
    assert_eq!(back.n_rows, 150);
    let labels = &back.text[0].1;
    for (i, r) in rows.iter().enumerate() {
        let cells: Vec<&str> = r.split(',').collect();
        assert_eq!(labels.get(i), Some(cells[0]), "row {i}");
        for (j, cell) in cells.iter().enumerate().skip(1) {
            assert_eq!(
                back.values[i * 4 + j],
                cell.parse::<f32>().unwrap(),
                "row {i} column {j}: {r}"
            );
        }
    }
    // Several ONNX Runtime calls (--batch 7: 21 of 7 rows and one of 3) write the same
    // bytes as one call of 150 rows.
    let batched = dir.path().join("batched.csv");
    ok(kiln()
        .args(["predict", "--batch", "7", "--model"])
        .arg(&ship)
        .arg("--input")
        .arg(&iris)
        .arg("--output")
        .arg(&batched));
    assert_eq!(std::fs::read_to_string(&batched).unwrap(), text);

    // Bad input: a missing column (with the nearest name), a cell that is not a number,
    // values outside the training range (a warning, not an error).
    let source = std::fs::read_to_string(&iris).unwrap();
    let renamed = write(
        dir.path(),
        "renamed.csv",
        &source.replacen("sepal_length", "sepal_lenght", 1),
    );
    let mut lines: Vec<String> = source.lines().map(String::from).collect();
    lines[3] = lines[3].replacen("4.7", "abc", 1);
    let broken = write(dir.path(), "broken.csv", &(lines.join("\n") + "\n"));
    let mut wide: Vec<String> = source.lines().map(String::from).collect();
    wide[1] = wide[1].replacen("5.1", "51.0", 1);
    let wide = write(dir.path(), "wide.csv", &(wide.join("\n") + "\n"));
    let run = |input: &Path| {
        let o = kiln()
            .args(["predict", "--model"])
            .arg(&ship)
            .arg("--input")
            .arg(input)
            .arg("--output")
            .arg(dir.path().join("x.csv"))
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    let (code, err) = run(&renamed);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("`sepal_length` (did you mean `sepal_lenght`?)"),
        "{err}"
    );
    let (code, err) = run(&broken);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("row 3 column `sepal_length` holds `abc`"),
        "{err}"
    );
    assert!(
        !dir.path().join("x.csv").exists(),
        "nothing written on error"
    );
    let (code, err) = run(&wide);
    assert_eq!(code, Some(0), "{err}");
    let count = |e: &str| -> usize {
        e.split("column `sepal_length`: ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    };
    // test rows may already fall outside the train split's range; 51.0 adds one more
    let (_, clean) = run(&iris);
    assert_eq!(count(&err), count(&clean) + 1, "{err}");
    assert!(err.contains("outside the training range"), "{err}");
    assert!(!err.contains("panicked"));

    // --engine: the cluster engines need a kiln built with them, and --row-id; the
    // local engine takes neither --row-id nor --scheduler
    let engine = |args: &[&str]| {
        let o = kiln()
            .args(["predict", "--model"])
            .arg(&ship)
            .arg("--input")
            .arg(&iris)
            .arg("--output")
            .arg(dir.path().join("e.csv"))
            .args(args)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    let (code, err) = engine(&["--row-id", "id"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("--scheduler and --row-id go with --engine"),
        "{err}"
    );
    let (code, err) = engine(&["--engine", "datafusion", "--row-id", "sepal_length"]);
    if cfg!(feature = "cluster") {
        assert_eq!(code, Some(0), "{err}");
    } else {
        assert_eq!(code, Some(1));
        assert!(
            err.contains("--engine datafusion: this kiln was built without the `cluster` feature"),
            "{err}"
        );
        assert!(!dir.path().join("e.csv").exists());
    }
}

/// A table streams through `kiln predict` in chunks: any chunk size, CSV or Parquet, gives
/// the same bytes, score and warnings as one chunk, and a bad cell anywhere (inside the
/// rows polars infers types from, or long after them) is named by the file's own row.
#[test]
fn predict_streams_a_table_in_chunks_with_the_same_result() {
    let dir = tempfile::tempdir().unwrap();
    let ship = deployed_iris(&dir.path().join("runs"));
    let iris = std::fs::read_to_string(root().join("fixtures/iris.csv")).unwrap();
    let (header, body) = iris.split_once('\n').unwrap();
    // 12,000 rows: past the 10,000 rows the CSV reader infers column types from
    let body: Vec<&str> = body.lines().collect();
    let lines: Vec<&str> = (0..12_000).map(|i| body[i % body.len()]).collect();
    let big = write(
        dir.path(),
        "big.csv",
        &format!("{header}\n{}\n", lines.join("\n")),
    );
    let predict = |input: &Path, chunk: Option<&str>, out: &str| {
        let mut c = kiln();
        c.args(["predict", "--model"])
            .arg(&ship)
            .arg("--input")
            .arg(input)
            .arg("--output")
            .arg(dir.path().join(out));
        if let Some(n) = chunk {
            c.args(["--chunk-rows", n]);
        }
        // a reader blocked on a full channel once hung here: a hang fails the test
        let o = common::output_within(&mut c, 120);
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).replace(out, "OUT"),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    let whole = predict(&big, Some("100000"), "whole.csv");
    assert_eq!(whole.0, Some(0), "{}", whole.2);
    assert!(whole.1.contains("12000 rows predicted"), "{}", whole.1);
    let want = std::fs::read_to_string(dir.path().join("whole.csv")).unwrap();
    assert_eq!(want.lines().count(), 12_001);
    // the rows are iris' 150 again and again: so are their predictions
    let preds: Vec<&str> = want.lines().skip(1).collect();
    for (i, p) in preds.iter().enumerate().skip(150) {
        assert_eq!(*p, preds[i % 150], "row {i}");
    }
    for chunk in ["7", "1000"] {
        let got = predict(&big, Some(chunk), "chunked.csv");
        assert_eq!(got.0, Some(0), "{}", got.2);
        assert_eq!(
            (&got.1, &got.2),
            (&whole.1, &whole.2),
            "--chunk-rows {chunk}"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("chunked.csv")).unwrap(),
            want,
            "--chunk-rows {chunk}"
        );
    }
    // the same rows from Parquet, in chunks, to Parquet: the same predictions
    let names = [
        "sepal_length",
        "sepal_width",
        "petal_length",
        "petal_width",
        "species",
    ];
    let cells: Vec<Vec<&str>> = lines.iter().map(|l| l.split(',').collect()).collect();
    let columns = names
        .iter()
        .enumerate()
        .map(|(j, n)| {
            let c = if j == 4 {
                kiln_preprocess::table::OutColumn::Text(
                    cells.iter().map(|r| r[j].to_string()).collect(),
                )
            } else {
                kiln_preprocess::table::OutColumn::Number(
                    cells.iter().map(|r| r[j].parse().unwrap()).collect(),
                )
            };
            (n.to_string(), c)
        })
        .collect();
    let pq = dir.path().join("big.parquet");
    kiln_preprocess::table::write_table(&pq, columns).unwrap();
    let got = predict(&pq, Some("333"), "from-parquet.parquet");
    assert_eq!(got.0, Some(0), "{}", got.2);
    assert_eq!((&got.1, &got.2), (&whole.1, &whole.2));
    let labels = ["prediction", "p_setosa", "p_versicolor", "p_virginica"].map(String::from);
    let back = kiln_preprocess::table::read_rows_with_text(
        &dir.path().join("from-parquet.parquet"),
        &labels,
        &labels[..1],
    )
    .unwrap();
    assert_eq!(back.n_rows, 12_000);
    for (i, line) in preds.iter().enumerate() {
        let cells: Vec<&str> = line.split(',').collect();
        assert_eq!(back.text[0].1.get(i), Some(cells[0]), "row {i}");
        for (j, cell) in cells.iter().enumerate().skip(1) {
            assert_eq!(back.values[i * 4 + j], cell.parse::<f32>().unwrap());
        }
    }

    // bad cells, named by the file's row: one among the inferred rows (the column is then
    // read as text) and one long after them (the number reader fails; the cell is found)
    for (row, column, cell) in [(150, 2, "abc"), (11_500, 3, "oops")] {
        let mut broken: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        let mut fields: Vec<&str> = broken[row - 1].split(',').collect();
        fields[column] = cell;
        broken[row - 1] = fields.join(",");
        let bad = write(
            dir.path(),
            "bad.csv",
            &format!("{header}\n{}\n", broken.join("\n")),
        );
        for chunk in ["7", "4096"] {
            let (code, _, err) = predict(&bad, Some(chunk), "x.csv");
            assert_eq!(code, Some(1), "{err}");
            let name = names[column];
            assert!(
                err.contains(&format!(
                    "bad.csv: row {row} column `{name}` holds `{cell}`, not a number"
                )),
                "--chunk-rows {chunk}: {err}"
            );
            assert!(!err.contains("panicked"), "{err}");
            assert!(
                !dir.path().join("x.csv").exists(),
                "nothing written on error"
            );
            assert!(
                !dir.path().join("x.csv.partial").exists(),
                "no partial file left"
            );
        }
    }
}

/// A bundle deployed with `include_preprocessing = true` takes raw values: `kiln predict`
/// sees the `preprocessing = baked` metadata, does not standardize a second time, and gives
/// the same probabilities as the bundle without it.
#[test]
fn predict_feeds_raw_values_to_a_model_with_baked_preprocessing() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let plain = deployed_iris(&runs).canonicalize().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = kiln()
        .arg("run")
        .arg(root.join("pipelines/iris.toml"))
        .args([
            "--set",
            "stages.ship.include_preprocessing=true",
            "--runs-dir",
        ])
        .arg(&runs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let baked = runs.join("iris/latest/ship").canonicalize().unwrap();
    assert_ne!(plain, baked);
    let iris = root.join("fixtures/iris.csv");
    let predict = |ship: &Path, name: &str| -> Vec<Vec<f64>> {
        let preds = dir.path().join(name);
        ok(kiln()
            .args(["predict", "--model"])
            .arg(ship)
            .arg("--input")
            .arg(&iris)
            .arg("--output")
            .arg(&preds));
        std::fs::read_to_string(&preds)
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| l.split(',').skip(1).map(|c| c.parse().unwrap()).collect())
            .collect()
    };
    let (a, b) = (predict(&plain, "plain.csv"), predict(&baked, "baked.csv"));
    assert_eq!((a.len(), b.len()), (150, 150));
    let diff = a
        .iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f64, f64::max);
    assert!(diff <= 1e-5, "{diff}");
    // and the baked graph really is different: it starts with Sub / Div
    let m = kiln_deploy::decode(&std::fs::read(baked.join("model.onnx")).unwrap()).unwrap();
    assert!(kiln_deploy::is_baked(&m));
    assert_eq!(m.graph.unwrap().node[0].op_type(), "Sub");
}

/// A model whose schema imputes and encodes text: `kiln predict` takes rows with `NA` and
/// empty cells in the imputed columns (and the dropped all-empty column), text cells in
/// the one-hot and hashed columns (an unseen category and missing cells included), and
/// names row and column of a missing cell that no step fills.
#[test]
fn predict_fills_missing_cells_the_schema_imputes() {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let messy = root.join("fixtures/messy.csv");
    let pipe = format!(
        r#"version = 1
name = "messy"
[stages.data]
uses = "preprocess"
source = {{ format = "csv", path = "{}", null_values = ["NA", ""] }}
target = "label"
steps = [
  {{ op = "drop", columns = ["notes"] }},
  {{ op = "impute", strategy = "median", columns = ["age", "income"] }},
  {{ op = "log1p", columns = ["income"] }},
  {{ op = "min_max" }},
  {{ op = "one_hot", columns = ["color"], max_categories = 3 }},
  {{ op = "hash_text", columns = ["review"], n_features = 8 }},
]
[stages.train]
uses = "train"
input = "data"
model = {{ hidden = [8] }}
epochs = 5
[stages.ship]
uses = "deploy"
input = "train"
"#,
        messy.display()
    );
    let f = write(dir.path(), "messy.toml", &pipe);
    let runs = dir.path().join("runs");
    ok(kiln().arg("run").arg(&f).arg("--runs-dir").arg(&runs));
    let ship = runs.join("messy/latest/ship");
    let rows = write(
        dir.path(),
        "rows.csv",
        "age,income,score,const,notes,color,review\nNA,12000,1.5,7,,red,Great value!\n40,,0.2,7,,purple,\n33,50000,0.9,7,,,late delivery\n",
    );
    let preds = dir.path().join("preds.csv");
    let predict = |input: &Path| {
        kiln()
            .args(["predict", "--model"])
            .arg(&ship)
            .arg("--input")
            .arg(input)
            .arg("--output")
            .arg(&preds)
            .output()
            .unwrap()
    };
    let out = predict(&rows);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&preds).unwrap();
    assert_eq!(text.lines().count(), 4, "{text}");
    assert!(text.starts_with("prediction,p_no,p_yes\n"), "{text}");
    // Every row against kiln's reference forward pass of the trained model on the
    // features schema.json makes of the raw cells (a missing number is NaN, a missing
    // text cell is none): the same label, probabilities within the parity tolerance.
    let schema: kiln_core::Schema = kiln_core::read_json(&ship.join("schema.json")).unwrap();
    let source = std::fs::read_to_string(&rows).unwrap();
    let header: Vec<&str> = source.lines().next().unwrap().split(',').collect();
    let cells: Vec<Vec<&str>> = source
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    let cell = |r: &Vec<&str>, c: &str| r[header.iter().position(|h| *h == c).unwrap()].to_string();
    let text_columns = schema.text_columns();
    assert_eq!(text_columns, ["color", "review"]);
    let raw: Vec<f32> = cells
        .iter()
        .flat_map(|r| {
            schema.input_columns.iter().map(|c| {
                if text_columns.contains(c) {
                    0.0
                } else {
                    cell(r, c).parse::<f32>().unwrap_or(f32::NAN)
                }
            })
        })
        .collect();
    let text_cells = text_columns
        .iter()
        .map(|c| {
            let values: Vec<String> = cells.iter().map(|r| cell(r, c)).collect();
            let col = kiln_core::TextColumn::from_cells(
                values.iter().map(|v| (!v.is_empty()).then_some(v.as_str())),
            );
            (c.clone(), col)
        })
        .collect();
    let features = schema.apply_with_text(&raw, text_cells).unwrap();
    assert!(features.iter().all(|v| v.is_finite()), "{features:?}");
    let mut model = kiln_core::NativeModel::load(&runs.join("messy/latest/train")).unwrap();
    let want = kiln_core::Predictor::predict(&mut model, &features, 3).unwrap();
    for (i, r) in text.lines().skip(1).enumerate() {
        let got: Vec<&str> = r.split(',').collect();
        assert_eq!(
            got[0],
            schema.class_labels[want.argmax()[i] as usize],
            "row {i}: {r}"
        );
        for (a, b) in got[1..].iter().zip(&want.probabilities[i * 2..i * 2 + 2]) {
            let a: f32 = a.parse().unwrap();
            assert!((a - b).abs() <= 1e-5, "row {i}: {r} vs {b}");
        }
    }
    // The same rows with the schema's fill values written in by hand: the same bytes out.
    let fills: Vec<(String, f32)> = schema
        .transforms
        .iter()
        .find_map(|t| match t {
            kiln_core::Transform::Impute {
                columns, values, ..
            } => Some(
                columns
                    .iter()
                    .cloned()
                    .zip(values.iter().copied())
                    .collect(),
            ),
            _ => None,
        })
        .unwrap();
    assert_eq!(fills.len(), 2, "{fills:?}");
    let (age, income) = (fills[0].1, fills[1].1);
    assert_eq!(
        (fills[0].0.as_str(), fills[1].0.as_str()),
        ("age", "income")
    );
    let filled = write(
        dir.path(),
        "filled.csv",
        &format!(
            "age,income,score,const,notes,color,review\n{age},12000,1.5,7,,red,Great value!\n40,{income},0.2,7,,purple,\n33,50000,0.9,7,,,late delivery\n"
        ),
    );
    let by_hand = dir.path().join("by_hand.csv");
    ok(kiln()
        .args(["predict", "--model"])
        .arg(&ship)
        .arg("--input")
        .arg(&filled)
        .arg("--output")
        .arg(&by_hand));
    assert_eq!(std::fs::read_to_string(&by_hand).unwrap(), text);
    // `score` is not imputed: its missing cell is named
    let bad = write(
        dir.path(),
        "bad.csv",
        "age,income,score,const,notes,color,review\n30,12000,1.5,7,,red,ok\n40,100,NA,7,,blue,ok\n",
    );
    let out = predict(&bad);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("row 2 column `score`"), "{err}");
}

/// metrics.json of a run folder's evaluate stage `eval`, as JSON.
fn eval_metrics(run: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("eval/metrics.json")).unwrap()).unwrap()
}

/// `kiln init` writes a file that validates and runs end to end, as written: on a table
/// with nulls, text and numbers (a classifier; free text hashed, a constant and an empty
/// column dropped), and on a regression table, where the network beats ridge regression.
#[test]
fn init_writes_pipelines_that_run_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");

    let messy = dir.path().join("messy.toml");
    let out = ok(kiln()
        .arg("init")
        .arg(root().join("fixtures/messy.csv"))
        .args(["--target", "label", "--output"])
        .arg(&messy));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("classification of `label` (2 classes) from 60 rows; 5 feature column(s) kept, dropped: const (one value in every row), notes (every cell is empty)"),
        "{said}"
    );
    let text = std::fs::read_to_string(&messy).unwrap();
    for step in [
        r#"{ op = "drop", columns = ["const", "notes"] }"#,
        r#"{ op = "impute", columns = ["age", "income"], strategy = "median" }"#,
        r#"{ op = "piecewise_linear", bins = 16, columns = "numeric" }"#,
        r#"{ op = "one_hot", columns = ["color"] }"#,
        r#"{ op = "hash_text", columns = ["review"], n_features = 64 }"#,
        "# 2 rows have no target",
    ] {
        assert!(text.contains(step), "{step} missing:\n{text}");
    }
    ok(kiln().arg("validate").arg(&messy));
    ok(kiln().arg("run").arg(&messy).arg("--runs-dir").arg(&runs));
    let m = eval_metrics(&runs.join("messy/latest"));
    assert!(
        m["variants"]["train"]["accuracy"].as_f64().unwrap() > 0.5,
        "{m}"
    );
    assert!(m["baselines"]["logistic"]["accuracy"].is_number(), "{m}");

    // The same file without `steps` and `model` runs the same defaults: identical
    // fitted schema, identical weights (the network sized to the training rows).
    let mut auto = String::new();
    let mut in_steps = false;
    for line in text.lines() {
        if line.starts_with("steps = [") {
            in_steps = true;
        }
        if !in_steps && !line.starts_with("model = ") {
            auto.push_str(&line.replace("name = \"messy\"", "name = \"messy-auto\""));
            auto.push('\n');
        }
        if in_steps && line == "]" {
            in_steps = false;
        }
    }
    assert!(
        !auto.contains("steps =") && !auto.contains("model ="),
        "{auto}"
    );
    let auto_file = dir.path().join("messy-auto.toml");
    std::fs::write(&auto_file, &auto).unwrap();
    ok(kiln()
        .arg("run")
        .arg(&auto_file)
        .arg("--runs-dir")
        .arg(&runs));
    for f in [
        "data/schema.json",
        "train/weights.safetensors",
        "train/spec.json",
    ] {
        assert_eq!(
            std::fs::read(runs.join("messy/latest").join(f)).unwrap(),
            std::fs::read(runs.join("messy-auto/latest").join(f)).unwrap(),
            "{f}"
        );
    }
    // a second init onto the same file is refused without --force
    let again = kiln()
        .arg("init")
        .arg(root().join("fixtures/messy.csv"))
        .args(["--target", "label", "--output"])
        .arg(&messy)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));

    let friedman = dir.path().join("friedman.toml");
    ok(kiln()
        .arg("init")
        .arg(root().join("fixtures/friedman1.csv"))
        .args(["--target", "y", "--output"])
        .arg(&friedman));
    let text = std::fs::read_to_string(&friedman).unwrap();
    assert!(text.contains("task = \"regression\""), "{text}");
    ok(kiln()
        .arg("run")
        .arg(&friedman)
        .arg("--runs-dir")
        .arg(&runs));
    let m = eval_metrics(&runs.join("friedman1/latest"));
    let (r2, ridge) = (
        m["variants"]["train"]["r2"].as_f64().unwrap(),
        m["baselines"]["ridge"]["r2"].as_f64().unwrap(),
    );
    // Friedman #1 is nonlinear: on the piecewise-linear features `kiln init` writes,
    // ridge fits the additive part (0.87; 0.73 on standardized numbers) but not the
    // sin(π·x1·x2) interaction, which the network learns (0.93)
    assert!(r2 > 0.9 && r2 > ridge + 0.04, "model {r2}, ridge {ridge}");
    assert!(ridge > 0.8, "ridge {ridge}");
}

/// `kiln init` on a table with a 30-value category: the category is `ordinal` encoded,
/// the file says the train stage embeds it, and the run as written learns a label that
/// depends on the category alone (a one-row-per-city table in spec.json and ONNX `Gather`
/// nodes in the deployed file); `kiln predict` gives an unseen city and a missing cell the
/// same row (the table's row 0), and a file without `steps` and `model` trains the same
/// bytes.
#[test]
fn init_embeds_a_many_valued_category_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let label = |k: usize| {
        if ((k * 2_654_435_761usize) >> 5).is_multiple_of(2) {
            "no"
        } else {
            "yes"
        }
    };
    let mut csv = String::from("size,city,label\n");
    for i in 0..600 {
        let k = (i * 7) % 30;
        csv += &format!("{},c{k},{}\n", (i % 13) as f32 / 13.0, label(k));
    }
    let data = write(dir.path(), "cities.csv", &csv);
    let file = dir.path().join("cities.toml");
    ok(kiln()
        .arg("init")
        .arg(&data)
        .args(["--target", "label", "--output"])
        .arg(&file));
    let text = std::fs::read_to_string(&file).unwrap();
    for want in [
        r#"{ op = "ordinal", columns = ["city"] }"#,
        "# learned embeddings (model.embeddings: every `ordinal` column by default) of `city` (30 values)",
    ] {
        assert!(text.contains(want), "{want} missing:\n{text}");
    }
    ok(kiln().arg("run").arg(&file).arg("--runs-dir").arg(&runs));
    let run = runs.join("cities/latest");
    let m = eval_metrics(&run);
    assert!(
        m["variants"]["train"]["accuracy"].as_f64().unwrap() >= 0.95,
        "{m}"
    );
    let spec: kiln_core::ModelSpec =
        serde_json::from_str(&std::fs::read_to_string(run.join("train/spec.json")).unwrap())
            .unwrap();
    let schema: kiln_core::Schema =
        serde_json::from_str(&std::fs::read_to_string(run.join("data/schema.json")).unwrap())
            .unwrap();
    let city = schema
        .feature_names
        .iter()
        .position(|f| f == "city")
        .unwrap();
    assert_eq!(
        spec.embeddings,
        [kiln_core::EmbeddingSpec {
            feature: city,
            rows: 31,
            dim: kiln_core::EmbeddingSpec::default_dim(31)
        }]
    );
    let onnx = std::fs::read(run.join("ship/model.onnx")).unwrap();
    let g = kiln_deploy::decode(&onnx).unwrap().graph.unwrap();
    assert_eq!(g.node.iter().filter(|n| n.op_type() == "Gather").count(), 3);

    let rows = write(
        dir.path(),
        "rows.csv",
        "size,city\n0.5,c3\n0.5,Atlantis\n0.5,\n0.5,c4\n",
    );
    let preds = dir.path().join("preds.csv");
    ok(kiln()
        .args(["predict", "--model"])
        .arg(run.join("ship"))
        .arg("--input")
        .arg(&rows)
        .arg("--output")
        .arg(&preds));
    let out = std::fs::read_to_string(&preds).unwrap();
    let lines: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert_eq!(
        lines[1], lines[2],
        "an unseen city and a missing one share row 0:\n{out}"
    );
    assert!(
        lines[0].starts_with(label(3)) && lines[3].starts_with(label(4)),
        "{out}"
    );

    // without `steps` and `model`: the same defaults, the same weights
    let auto: String = text
        .lines()
        .filter(|l| !l.starts_with("model = "))
        .scan(false, |in_steps, l| {
            let skip = *in_steps || l.starts_with("steps = [");
            *in_steps = (*in_steps || l.starts_with("steps = [")) && l != "]";
            Some((!skip).then(|| l.replace("name = \"cities\"", "name = \"cities-auto\"")))
        })
        .flatten()
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        !auto.contains("steps =") && !auto.contains("model ="),
        "{auto}"
    );
    let auto_file = write(dir.path(), "cities-auto.toml", &auto);
    ok(kiln()
        .arg("run")
        .arg(&auto_file)
        .arg("--runs-dir")
        .arg(&runs));
    assert_eq!(
        std::fs::read(run.join("train/weights.safetensors")).unwrap(),
        std::fs::read(runs.join("cities-auto/latest/train/weights.safetensors")).unwrap()
    );
}

/// `kiln predict` on image files for a CNN trained on an image folder: a folder of class
/// folders (scored against the folder names), one file, and a folder of images give one
/// row per file with its path, predicted as kiln's reference forward pass predicts the
/// same decoded pixels; a model trained on a table refuses image files.
#[test]
fn predict_takes_image_files_for_an_image_model() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let images = root().join("fixtures/images/digits");
    let pipe = write(dir.path(), "images.toml", &common::image_pipeline(&images));
    ok(kiln().arg("run").arg(&pipe).arg("--runs-dir").arg(&runs));
    let ship = runs.join("images/latest/ship");
    let schema: kiln_core::Schema =
        serde_json::from_str(&std::fs::read_to_string(ship.join("schema.json")).unwrap()).unwrap();
    assert_eq!(
        schema.image,
        Some(kiln_core::ImageShape {
            channels: 1,
            height: 8,
            width: 8
        })
    );
    let mut model = kiln_core::NativeModel::load(&runs.join("images/latest/train")).unwrap();
    let predict = |input: &Path, out: &str| {
        let preds = dir.path().join(out);
        let o = ok(kiln()
            .args(["predict", "--model"])
            .arg(&ship)
            .arg("--input")
            .arg(input)
            .arg("--output")
            .arg(&preds));
        (
            std::fs::read_to_string(&preds).unwrap(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    // the folder of class folders: every file, scored
    let (text, said) = predict(&images, "all.csv");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("file,prediction,p_0"), "{}", lines[0]);
    assert_eq!(lines.len(), 151);
    assert!(
        said.contains("150 rows predicted") && said.contains("accuracy"),
        "{said}"
    );
    // each row as the reference predicts the same decoded pixels
    for line in lines.iter().skip(1).step_by(13) {
        let file = line.split(',').next().unwrap();
        let px = kiln_preprocess::images::read_image(Path::new(file), [8, 8], 1).unwrap();
        let rows = kiln_core::Rows {
            n_rows: 1,
            values: px,
            text: vec![],
        };
        let features = schema.features(&rows).unwrap();
        let want = kiln_core::Predictor::predict(&mut model, &features, 1).unwrap();
        let label = &schema.class_labels[want.argmax()[0] as usize];
        assert_eq!(line.split(',').nth(1).unwrap(), label, "{line}");
    }
    // one file, and a folder of loose images
    let one = images
        .join("3")
        .read_dir()
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let (text, _) = predict(&one, "one.csv");
    assert_eq!(text.lines().count(), 2);
    let loose = dir.path().join("loose");
    std::fs::create_dir(&loose).unwrap();
    std::fs::copy(&one, loose.join("a.png")).unwrap();
    std::fs::copy(&one, loose.join("b.png")).unwrap();
    let (text, _) = predict(&loose, "loose.csv");
    let rows: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        rows[0].split_once(',').unwrap().1,
        rows[1].split_once(',').unwrap().1
    );
    // a model trained on a table refuses image files
    let iris = deployed_iris(&runs);
    let out = kiln()
        .args(["predict", "--model"])
        .arg(&iris)
        .arg("--input")
        .arg(&one)
        .arg("--output")
        .arg(dir.path().join("x.csv"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the model was not trained on images"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The digits pipeline with its splits in shards of 150 rows and `data.load = "stream"`:
/// training, fine-tuning (the structured candidate), scoring, evaluation and parity all
/// read the shards part by part, and the figures they write are those of the model on
/// every test row.
#[test]
fn a_pipeline_streams_its_splits_through_every_stage() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(kiln()
        .arg("run")
        .arg(common::root().join("pipelines/digits-mlp.toml"))
        .args(["--runs-dir", "runs"])
        .args(["--set", "stages.data.shard_rows=150"])
        .args(["--set", "stages.train.data.load=\"stream\""])
        .args(["--set", "stages.train.data.window=2"])
        .args(["--set", "stages.train.epochs=8"])
        .env("RUST_LOG", "kiln_pipeline=info")
        .current_dir(dir.path()));
    let log = String::from_utf8_lossy(&out.stderr);
    // train, compress, eval and ship each stream
    assert_eq!(
        log.matches("streaming the splits from their shards")
            .count(),
        4,
        "{log}"
    );
    let run = dir.path().join("runs/digits-mlp/latest");
    let (schema, [_, _, test]) = kiln_preprocess::read_artifact(&run.join("data")).unwrap();
    let manifest: kiln_core::dataset::shards::Manifest =
        kiln_core::artifact::load(&run.join("data")).unwrap();
    assert!(
        manifest.train.shards.len() >= 7,
        "{}",
        manifest.train.shards.len()
    );
    // history.json says how the train split was read
    let h: kiln_core::artifact::history::History =
        kiln_core::artifact::load(&run.join("train")).unwrap();
    let streamed = h.streamed.unwrap();
    assert_eq!(
        (streamed.shards, streamed.window),
        (manifest.train.shards.len(), 2)
    );
    // the evaluation's accuracy is the trained model's on every test row
    let mut model = kiln_core::NativeModel::load(&run.join("train")).unwrap();
    let p = kiln_core::Predictor::predict(&mut model, &test.features, test.n_rows()).unwrap();
    let right = p
        .argmax()
        .iter()
        .zip(&test.labels)
        .filter(|(a, b)| a == b)
        .count();
    let want = right as f64 / test.n_rows() as f64;
    let metrics: kiln_core::artifact::metrics::Metrics =
        kiln_core::artifact::load(&run.join("eval")).unwrap();
    let got = metrics.get("train", "accuracy").unwrap();
    assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    assert!(got > 0.9, "{got}");
    assert_eq!(schema.class_labels.len(), 10);
    // parity compared every test row of both shipped variants
    let parity: kiln_core::artifact::parity::Parity =
        kiln_core::artifact::load(&run.join("ship")).unwrap();
    assert!(parity.passed);
    for r in parity.variants.values() {
        assert_eq!(r.n_rows, test.n_rows());
    }
    // every candidate was scored, the fine-tuned one included
    let c: kiln_core::artifact::candidates::Candidates =
        kiln_core::artifact::load(&run.join("compress")).unwrap();
    assert_eq!(c.candidates.len(), 6);
    assert!(c.candidates.iter().all(|c| c.valid_accuracy > 0.5), "{c:?}");
}
