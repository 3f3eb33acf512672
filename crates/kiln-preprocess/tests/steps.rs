//! The column steps on small CSV files written by hand: values worked out by hand,
//! `Schema::apply` on the raw rows equal to the stored features bit for bit, and clear
//! errors (file, row, column, what to do) with nothing written.

use kiln_core::Transform;
use kiln_core::dataset::shards::{Split as Part, read_split};
use kiln_preprocess::{Columns, Config, ImputeStrategy, ImputeValue, Source, Split, Step, run};
use std::path::{Path, PathBuf};

fn config(path: &Path, steps: Vec<Step>) -> Config {
    Config {
        source: Source::Csv {
            path: None,
            train: Some(path.to_path_buf()),
            test: Some(path.to_path_buf()),
            delimiter: ',',
            has_header: true,
            null_values: vec!["NA".into()],
        },
        target: "y".into(),
        task: None,
        positive_class: None,
        column_types: Default::default(),
        steps: Some(steps),
        // the file is both train and test source: every row is in train, so the fitted
        // values are the file's
        split: Split {
            valid: 0.0,
            test: None,
            stratify: false,
            row_id: None,
        },
        augment: Default::default(),
        shard_rows: None,
        load: Default::default(),
        memory_mb: 1024,
        seed: 1,
        engine: Default::default(),
        scheduler: None,
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn named(v: &[&str]) -> Columns {
    Columns::Named(v.iter().map(|s| s.to_string()).collect())
}

/// a = [1, 3, NA, 10], b = [0, 1, 2, 100], c constant, d empty in every row.
const CSV: &str = "a,b,c,d,y\n1,0,5,,0\n3,1,5,,1\nNA,2,5,,0\n10,100,5,,1\n";

fn raw_rows(text: &str, columns: &[String]) -> Vec<f32> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    lines
        .flat_map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            columns
                .iter()
                .map(|c| {
                    let j = header.iter().position(|h| h == c).unwrap();
                    cells[j].parse::<f32>().unwrap_or(f32::NAN)
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn impute_clip_min_max_drop_worked_by_hand_and_reproduced_by_apply() {
    let dir = tempfile::tempdir().unwrap();
    let csv = write(dir.path(), "d.csv", CSV);
    let steps = vec![
        Step::Drop {
            columns: vec!["d".into()],
        },
        Step::Impute {
            strategy: ImputeStrategy::Median,
            value: None,
            columns: named(&["a"]),
        },
        Step::Clip {
            min: None,
            max: None,
            lower_quantile: Some(0.25),
            upper_quantile: Some(0.75),
            columns: named(&["b"]),
        },
        Step::MinMax {
            columns: Columns::default(),
        },
    ];
    let out_dir = dir.path().join("out");
    let out = run(&config(&csv, steps), &out_dir).unwrap();
    let s = &out.schema;
    assert_eq!(s.input_columns, ["a", "b", "c", "d"]);
    assert_eq!(s.feature_names, ["a", "b", "c"]);
    // median of [1, 3, NA, 10] = 3
    assert_eq!(
        s.transforms[1],
        Transform::Impute {
            columns: vec!["a".into()],
            strategy: "median".into(),
            values: vec![3.0]
        }
    );
    // b sorted [0, 1, 2, 100]: quantile 0.25 at position 0.75 -> 0.75, 0.75 at 2.25 -> 26.5
    assert_eq!(
        s.transforms[2],
        Transform::Clip {
            columns: vec!["b".into()],
            min: Some(vec![0.75]),
            max: Some(vec![26.5])
        }
    );
    // then a = [1, 3, 3, 10], b = [0.75, 1, 2, 26.5], c = 5 (constant -> 0)
    assert_eq!(
        s.transforms[3],
        Transform::MinMax {
            columns: vec!["a".into(), "b".into(), "c".into()],
            min: vec![1.0, 0.75, 5.0],
            max: vec![10.0, 26.5, 5.0]
        }
    );
    let train = read_split(&out_dir, Part::Train).unwrap();
    assert_eq!(train.n_rows(), 4);
    let want = [
        [0.0, 0.0, 0.0],
        [2.0 / 9.0, 0.25 / 25.75, 0.0],
        [2.0 / 9.0, 1.25 / 25.75, 0.0],
        [1.0, 1.0, 0.0],
    ];
    for (r, w) in want.iter().enumerate() {
        assert_eq!(train.row(r), w, "row {r}");
    }
    // Schema::apply on the raw rows: the stored features, bit for bit.
    let raw = raw_rows(CSV, &s.input_columns);
    let applied = s.apply(&raw).unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&applied), bits(&train.features));
    let profile: serde_json::Value = kiln_core::read_json(&out_dir.join("profile.json")).unwrap();
    assert_eq!(profile["columns"][0]["missing"], 1);
}

#[test]
fn log1p_select_and_constant_impute() {
    let dir = tempfile::tempdir().unwrap();
    let text = "a,b,y\n0,NA,0\n1,4,1\n3,NA,0\n7,2,1\n";
    let csv = write(dir.path(), "d.csv", text);
    let steps = vec![
        Step::Impute {
            strategy: ImputeStrategy::Constant,
            value: Some(ImputeValue::Number(-0.5)),
            columns: Columns::default(),
        },
        Step::Log1p {
            columns: named(&["a"]),
        },
        Step::Select {
            columns: vec!["b".into(), "a".into()],
        },
    ];
    let out_dir = dir.path().join("out");
    let out = run(&config(&csv, steps), &out_dir).unwrap();
    assert_eq!(out.schema.feature_names, ["b", "a"]);
    let train = read_split(&out_dir, Part::Train).unwrap();
    let want: Vec<f32> = vec![
        -0.5,
        0.0,
        4.0,
        2.0f32.ln(),
        -0.5,
        4.0f32.ln(),
        2.0,
        8.0f32.ln(),
    ];
    assert_eq!(train.features, want);
    let raw = raw_rows(text, &out.schema.input_columns);
    assert_eq!(out.schema.apply(&raw).unwrap(), want);
}

fn error(dir: &Path, text: &str, steps: Vec<Step>) -> String {
    let csv = write(dir, "e.csv", text);
    let out = dir.join("e-out");
    let e = run(&config(&csv, steps), &out).unwrap_err().to_string();
    assert!(!out.join("schema.json").exists(), "nothing written: {e}");
    e
}

#[test]
fn clear_errors_and_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // a null before any impute: file, row, column, and the fix
    let e = error(d, "a,b,y\n1,2,0\n3,NA,1\n", vec![]);
    assert!(
        e.contains("e.csv: row 2") && e.contains("`b`") && e.contains("impute"),
        "{e}"
    );
    let e = error(
        d,
        "a,b,y\n1,2,0\n3,NA,1\n",
        vec![Step::Standardize {
            columns: Columns::default(),
        }],
    );
    assert!(e.contains("steps[0]") && e.contains("`b`"), "{e}");
    // a column that is entirely null
    let e = error(d, "a,b,y\n1,,0\n3,,1\n", vec![]);
    assert!(
        e.contains("`b` is empty in every row") && e.contains("drop"),
        "{e}"
    );
    // a text cell in a numeric column, with its row
    let e = error(d, "a,b,y\n1,2,0\n3,4,1\n5,x7,0\n", vec![]);
    assert!(
        e.contains("row 3 column `b` holds `x7`, not a number"),
        "{e}"
    );
    // an unknown column, with the nearest real one
    let e = error(
        d,
        "alpha,b,y\n1,2,0\n3,4,1\n",
        vec![Step::Log1p {
            columns: named(&["alpah"]),
        }],
    );
    assert!(
        e.contains("steps[0] (log1p)") && e.contains("did you mean `alpha`?"),
        "{e}"
    );
    // a dropped column cannot be used afterwards
    let e = error(
        d,
        "alpha,b,y\n1,2,0\n3,4,1\n",
        vec![
            Step::Drop {
                columns: vec!["b".into()],
            },
            Step::MinMax {
                columns: named(&["b"]),
            },
        ],
    );
    assert!(e.contains("steps[1] (min_max): column `b`"), "{e}");
    // rows without a target are dropped and counted
    let csv = write(d, "t.csv", "a,y\n1,0\n2,\n3,1\n4,0\n");
    let out = run(&config(&csv, vec![]), &d.join("t-out")).unwrap();
    assert_eq!(out.dropped.null_target, 2, "once in train, once in test");
    assert_eq!(out.rows, [3, 0, 3]);
}

#[test]
fn drop_nulls_and_dedupe_run_before_the_split_and_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    // rows 1 and 2 are equal; row 3 has a NA in b; row 5 equals row 1 but its target differs
    let text = "a,b,y\n1,2,0\n1,2,0\n3,NA,1\n4,5,1\n1,2,1\n";
    let csv = write(dir.path(), "d.csv", text);
    let steps = vec![
        Step::DropNulls {
            columns: Columns::default(),
        },
        Step::Dedupe {},
    ];
    let out_dir = dir.path().join("out");
    let out = run(&config(&csv, steps), &out_dir).unwrap();
    // the file is train and test source: every count twice
    assert_eq!(out.dropped.null_features, 2);
    assert_eq!(out.dropped.duplicates, 2);
    assert_eq!(out.rows, [3, 0, 3]);
    assert!(
        out.schema.transforms.is_empty(),
        "row steps are not replayed"
    );
    let train = read_split(&out_dir, Part::Train).unwrap();
    assert_eq!(train.features, vec![1.0, 2.0, 4.0, 5.0, 1.0, 2.0]);
    assert_eq!(train.labels, vec![0, 1, 1]);
    let profile: serde_json::Value = kiln_core::read_json(&out_dir.join("profile.json")).unwrap();
    assert_eq!(profile["dropped_rows"]["duplicates"], 2);
}

#[test]
fn parquet_and_arrow_sources_with_nulls() {
    use polars::prelude::*;
    let dir = tempfile::tempdir().unwrap();
    let a: Vec<Option<f32>> = vec![Some(1.0), None, Some(3.0), Some(10.0), Some(2.0), Some(4.0)];
    let y: Vec<i32> = vec![0, 1, 0, 1, 0, 1];
    let mut df = DataFrame::new(
        6,
        vec![Column::new("a".into(), a), Column::new("y".into(), y)],
    )
    .unwrap();
    let pq = dir.path().join("d.parquet");
    ParquetWriter::new(std::fs::File::create(&pq).unwrap())
        .finish(&mut df)
        .unwrap();
    let ipc = dir.path().join("d.arrow");
    IpcWriter::new(std::fs::File::create(&ipc).unwrap())
        .finish(&mut df)
        .unwrap();
    let impute = || {
        vec![Step::Impute {
            strategy: ImputeStrategy::Median,
            value: None,
            columns: Columns::default(),
        }]
    };
    for (k, source) in [
        Source::Parquet {
            path: Some(pq.clone()),
            train: None,
            test: None,
        },
        Source::Arrow {
            path: Some(ipc.clone()),
            train: None,
            test: None,
        },
    ]
    .into_iter()
    .enumerate()
    {
        // the file as train and as test source: every row in train, and the fill is the
        // median of the five present values [1, 3, 10, 2, 4] = 3 (the null not counted),
        // in row 1 only
        let mut c = config(&pq, impute());
        c.source = match &source {
            Source::Parquet { path, .. } => Source::Parquet {
                path: None,
                train: path.clone(),
                test: path.clone(),
            },
            Source::Arrow { path, .. } => Source::Arrow {
                path: None,
                train: path.clone(),
                test: path.clone(),
            },
            s => panic!("{s:?}"),
        };
        let out = run(&c, &dir.path().join(format!("all{k}"))).unwrap();
        assert_eq!(out.rows, [6, 0, 6]);
        let Transform::Impute { values, .. } = &out.schema.transforms[0] else {
            panic!("{:?}", out.schema.transforms)
        };
        assert_eq!(values[0], 3.0);
        let train = read_split(&dir.path().join(format!("all{k}")), Part::Train).unwrap();
        assert_eq!(train.features, vec![1.0, 3.0, 3.0, 10.0, 2.0, 4.0]);
        assert_eq!(train.labels, vec![0, 1, 0, 1, 0, 1]);
        // half the rows held out for test: 3 and 3
        let mut c = config(&pq, impute());
        c.source = source;
        c.split = Split {
            valid: 0.0,
            test: Some(0.5),
            stratify: false,
            row_id: None,
        };
        let out = run(&c, &dir.path().join(format!("out{k}"))).unwrap();
        assert_eq!(out.rows, [3, 0, 3]);
        // without the impute step the null is named with file and row
        let mut c = config(&pq, vec![]);
        c.source = if k == 0 {
            Source::Parquet {
                path: Some(pq.clone()),
                train: None,
                test: None,
            }
        } else {
            Source::Arrow {
                path: Some(ipc.clone()),
                train: None,
                test: None,
            }
        };
        let e = run(&c, &dir.path().join("bad")).unwrap_err().to_string();
        assert!(
            e.contains("row 2") && e.contains("`a`") && e.contains("impute"),
            "{e}"
        );
    }
}
