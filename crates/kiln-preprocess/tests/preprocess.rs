//! kiln-preprocess on small CSV files: the task follows the target column (float ->
//! regression, anything else -> classification, overridable), regression targets travel
//! as values through the split and the Arrow artifact, and statistics come from train only.

use kiln_core::Task;
use kiln_preprocess::{Config, Source, Split, Step, read_artifact, run};
use std::path::Path;

fn config(path: &Path, target: &str, task: Option<Task>) -> Config {
    Config {
        source: Source::Csv {
            path: Some(path.to_path_buf()),
            train: None,
            test: None,
            delimiter: ',',
            has_header: true,
            null_values: vec![],
        },
        target: target.into(),
        task,
        positive_class: None,
        column_types: Default::default(),
        steps: Some(vec![Step::Standardize {
            columns: Default::default(),
        }]),
        split: Split {
            valid: 0.2,
            test: Some(0.2),
            stratify: true,
            row_id: None,
        },
        augment: Default::default(),
        shard_rows: None,
        load: Default::default(),
        memory_mb: 1024,
        seed: 5,
        engine: Default::default(),
        scheduler: None,
    }
}

/// 50 rows: x in 0..50, c = x % 3 (integer), y = 2x + 0.5 (float), name = text.
fn write_csv(dir: &Path) -> std::path::PathBuf {
    let mut s = String::from("x,c,y,name\n");
    for i in 0..50 {
        s += &format!("{i},{},{}.5,n{}\n", i % 3, 2 * i, i % 2);
    }
    let p = dir.join("d.csv");
    std::fs::write(&p, s).unwrap();
    p
}

#[test]
fn a_float_target_is_regression_and_keeps_its_values() {
    let dir = tempfile::tempdir().unwrap();
    let csv = write_csv(dir.path());
    let text = std::fs::read_to_string(&csv).unwrap();
    // drop the text column: features must be numeric
    let numeric: String = text
        .lines()
        .map(|l| l.rsplit_once(',').unwrap().0.to_string() + "\n")
        .collect();
    std::fs::write(&csv, numeric).unwrap();
    let out_dir = dir.path().join("out");
    let out = run(&config(&csv, "y", None), &out_dir).unwrap();
    assert_eq!(out.schema.task, Task::Regression);
    assert!(out.schema.class_labels.is_empty());
    assert_eq!(out.rows, [30, 10, 10]);
    let (schema, [train, valid, test]) = read_artifact(&out_dir).unwrap();
    assert_eq!(schema, out.schema);
    // the splits handed to the next stages in memory are the files' contents exactly
    assert_eq!(out.splits, [train.clone(), valid.clone(), test.clone()]);
    for d in [&train, &valid, &test] {
        assert!(d.is_regression() && d.labels.is_empty());
    }
    // Every row keeps its own target: y = 2x + 0.5, and x is recoverable from the
    // standardized feature with the train statistics recorded in the schema.
    let kiln_core::Transform::Standardize { columns, mean, std } = &schema.transforms[0] else {
        panic!("{:?}", schema.transforms)
    };
    assert_eq!(columns, &["x", "c"]);
    let mut seen = Vec::new();
    for d in [&train, &valid, &test] {
        for r in 0..d.n_rows() {
            let x = d.row(r)[0] * std[0] + mean[0];
            assert!((d.values[r] - (2.0 * x + 0.5)).abs() < 1e-3, "row {r}");
            seen.push(x.round() as i32);
        }
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..50).collect::<Vec<_>>(),
        "each row in exactly one split"
    );
    // the mean is the train split's, not the whole file's (24.5)
    let train_x: Vec<f32> = (0..train.n_rows())
        .map(|r| train.row(r)[0] * std[0] + mean[0])
        .collect();
    let train_mean = train_x.iter().sum::<f32>() / train_x.len() as f32;
    assert!((mean[0] - train_mean).abs() < 1e-3);
    // each standardized train column has mean 0 and population variance 1 (ddof 0)
    for j in 0..2 {
        let col: Vec<f64> = (0..train.n_rows())
            .map(|r| f64::from(train.row(r)[j]))
            .collect();
        let n = col.len() as f64;
        let m = col.iter().sum::<f64>() / n;
        let var = col.iter().map(|v| (v - m).powi(2)).sum::<f64>() / n;
        assert!(m.abs() < 1e-5, "column {j}: mean {m}");
        assert!((var - 1.0).abs() < 1e-4, "column {j}: variance {var}");
    }
}

/// The fitted statistics worked out by hand: every row in train, x = 0..40 has mean 19.5
/// and population std sqrt((40² - 1) / 12) = 11.5434 (ddof 0); a constant column gets
/// std 1 (its values become 0, not NaN).
#[test]
fn standardize_fits_the_population_std_and_1_for_a_constant_column() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = String::from("x,k,y\n");
    for i in 0..40 {
        s += &format!("{i},5,{}\n", i % 2);
    }
    let csv = dir.path().join("d.csv");
    std::fs::write(&csv, s).unwrap();
    // the file as train and as test source: every row in train
    let mut c = config(&csv, "y", None);
    c.source = Source::Csv {
        path: None,
        train: Some(csv.clone()),
        test: Some(csv.clone()),
        delimiter: ',',
        has_header: true,
        null_values: vec![],
    };
    c.split = Split {
        valid: 0.0,
        test: None,
        stratify: false,
        row_id: None,
    };
    let out = run(&c, &dir.path().join("out")).unwrap();
    assert_eq!(out.rows, [40, 0, 40]);
    let kiln_core::Transform::Standardize { columns, mean, std } = &out.schema.transforms[0] else {
        panic!("{:?}", out.schema.transforms)
    };
    assert_eq!(columns, &["x", "k"]);
    let want_std = (1599.0f64 / 12.0).sqrt();
    assert!((want_std - 11.543_396).abs() < 1e-6);
    assert!((f64::from(mean[0]) - 19.5).abs() < 1e-5, "{mean:?}");
    assert!((f64::from(std[0]) - want_std).abs() < 1e-5, "{std:?}");
    assert_eq!((mean[1], std[1]), (5.0, 1.0));
    let train = &out.splits[0];
    for r in 0..40 {
        let want = (r as f64 - 19.5) / want_std;
        assert!((f64::from(train.row(r)[0]) - want).abs() < 1e-5, "row {r}");
        assert_eq!(train.row(r)[1], 0.0, "row {r}");
    }
}

#[test]
fn task_override_and_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let csv = write_csv(dir.path());
    let text = std::fs::read_to_string(&csv).unwrap();
    let numeric: String = text
        .lines()
        .map(|l| l.rsplit_once(',').unwrap().0.to_string() + "\n")
        .collect();
    let num = dir.path().join("num.csv");
    std::fs::write(&num, numeric).unwrap();

    // an integer target is classification unless told otherwise
    let out = run(&config(&num, "c", None), &dir.path().join("a")).unwrap();
    assert_eq!(
        (out.schema.task, out.schema.class_labels.clone()),
        (
            Task::Classification,
            vec!["0".into(), "1".into(), "2".into()]
        )
    );
    let out = run(
        &config(&num, "c", Some(Task::Regression)),
        &dir.path().join("b"),
    )
    .unwrap();
    assert_eq!(out.schema.task, Task::Regression);

    // a text target cannot be regressed
    let e = run(
        &config(&csv, "name", Some(Task::Regression)),
        &dir.path().join("c"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("regression target must be numeric"), "{e}");
    assert!(
        !dir.path().join("c/schema.json").exists(),
        "nothing written"
    );
}

/// A copy of fixtures/iris.csv in `dir`.
fn iris_in(dir: &Path) -> std::path::PathBuf {
    let csv = dir.join("iris.csv");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/iris.csv"),
        &csv,
    )
    .unwrap();
    csv
}

/// `prepare` works in memory and writes nothing; `Output::write` then writes exactly what
/// `run` writes.
#[test]
fn prepare_writes_nothing_and_write_gives_runs_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let csv = iris_in(dir.path());
    let cfg = config(&csv, "species", None);
    let before: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    let out = kiln_preprocess::prepare(&cfg).unwrap();
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), before.len());
    assert_eq!(out.rows.iter().sum::<usize>(), 150);
    out.write(&dir.path().join("written")).unwrap();
    run(&cfg, &dir.path().join("run")).unwrap();
    // manifest.json records every shard's content hash: equal manifests, equal shards
    for f in [
        "manifest.json",
        "train-00000.parquet",
        "schema.json",
        "profile.json",
    ] {
        assert_eq!(
            std::fs::read(dir.path().join("written").join(f)).unwrap(),
            std::fs::read(dir.path().join("run").join(f)).unwrap(),
            "{f}"
        );
    }
}

/// The sharded artifact: a shard size of 7 rows (many shards per split) writes the same
/// splits, schema (the fitted statistics) and profile as one shard per split, and a shard
/// changed afterwards is refused by name when the artifact is read.
#[test]
fn many_small_shards_hold_what_one_shard_holds() {
    let dir = tempfile::tempdir().unwrap();
    let csv = iris_in(dir.path());
    let one = config(&csv, "species", None);
    let mut many = one.clone();
    many.shard_rows = Some(7);
    run(&one, &dir.path().join("one")).unwrap();
    run(&many, &dir.path().join("many")).unwrap();
    let (schema_one, splits_one) = read_artifact(&dir.path().join("one")).unwrap();
    let (schema_many, splits_many) = read_artifact(&dir.path().join("many")).unwrap();
    assert_eq!(schema_many, schema_one);
    assert_eq!(splits_many, splits_one);
    assert_eq!(splits_one[0].n_rows(), 90);
    for f in ["schema.json", "profile.json"] {
        assert_eq!(
            std::fs::read(dir.path().join("one").join(f)).unwrap(),
            std::fs::read(dir.path().join("many").join(f)).unwrap(),
            "{f}"
        );
    }
    let m = kiln_core::dataset::shards::Shards::open(&dir.path().join("many"))
        .unwrap()
        .manifest;
    // 90 / 30 / 30 rows in shards of 7: 13 (the last of 6) and 5 (the last of 2)
    assert_eq!(
        (
            m.train.shards.len(),
            m.valid.shards.len(),
            m.test.shards.len()
        ),
        (13, 5, 5)
    );
    assert_eq!(m.train.shards[12].rows, 6);
    assert_eq!(m.test.shards[4].rows, 2);
    assert_eq!(m.feature_names, schema_one.feature_names);
    // a shard rewritten with other rows (a valid Parquet file) is refused by its hash
    std::fs::copy(
        dir.path().join("many/train-00001.parquet"),
        dir.path().join("many/train-00002.parquet"),
    )
    .unwrap();
    let e = read_artifact(&dir.path().join("many"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("train-00002.parquet"), "{e}");
    assert!(e.contains("the shard changed after it was written"), "{e}");
}
